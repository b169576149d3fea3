"""The five studies of claims C1-C7: grids of small nets, statistics, figures.

`run(config, workdir)` trains every grid of a study (configs/study.py) with
`resjax.sweeps.train_grid`, then writes to `workdir`:

  study.csv   one row per condition (grid, variant, width, depth): means and 95%
              intervals over seeds (t-intervals; Wilson for proportions;
              bootstrap for medians)
  nets.csv    one row per trained net: its final numbers
  study.json  the config, the machine, timings, the rows, paired contrasts and
              the curves behind the figure
  <study>.png the figure

A grid that finished is stored in `workdir/grids/<grid>.npz` and not trained
again; an interrupted grid resumes from `workdir/checkpoints/<grid>` (Orbax).

Studies:
  degradation  final training loss / accuracy vs depth, plain vs residual (C5).
  dead_units   fraction of dead units per layer, init and trained, vs width and
               depth, plain vs residual (C4).
  collapse     accuracy vs the width n of a first layer on 2-D spirals, ReLU vs
               linear vs identity-plus-ReLU, beside the untrained collapse curve
               of `resjax.collapse.sweep` (C1-C3).
  bottleneck   inverted-residual nets, linear vs ReLU6 bottleneck, vs bottleneck
               width (C6).
  convergence  steps to reach a target training loss, plain vs residual (C5).
"""
from __future__ import annotations

import io
import json
import math
import os
import platform
import time
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats

from resjax import errors, files, locking, sweeps
from resjax import stats as rstats

STUDIES = ("degradation", "dead_units", "collapse", "bottleneck", "convergence")
_FAMILIES_OF = {"degradation": ("mlp", "conv"), "dead_units": ("mlp", "conv"),
                "collapse": ("bottleneck",), "bottleneck": ("invres",),
                "convergence": ("mlp", "conv")}
COLORS = {"plain": "#c0392b", "residual": "#1f5fa8", "relu": "#c0392b", "linear": "#2e8b57",
          "relu6": "#d2691e"}
LABELS = {"plain": "plain", "residual": "residual", "relu": "ReLU", "linear": "linear",
          "relu6": "ReLU6"}


# ----------------------------------------------------------------------------
# Statistics.


# The intervals themselves live in resjax.stats; these names are the studies' uses.
wilson = rstats.wilson
median_ci = rstats.median_ci


def _g(x: Any) -> Any:
  """Six significant digits for floats (JSON/CSV friendly; inf/NaN kept)."""
  if isinstance(x, (float, np.floating)):
    x = float(x)
    return x if not math.isfinite(x) else float(f"{x:.6g}")
  return x


def _stat_cols(prefix: str, triple: tuple[float, float, float]) -> dict[str, float]:
  mean, lo, hi = triple
  return {prefix: _g(mean), f"{prefix}_lo": _g(lo), f"{prefix}_hi": _g(hi)}


# ----------------------------------------------------------------------------
# Config -> grids.


def _tuple(value, field: str, kind=int) -> tuple:
  if isinstance(value, (int, str)):
    value = (value,)
  try:
    out = tuple(kind(v) for v in value)
  except (TypeError, ValueError):
    raise errors.ConfigError(f"{field}={value!r} must be a list of {kind.__name__}s") from None
  errors.check(len(out) > 0, f"{field} is empty; give at least one value")
  return out


def validate(config) -> None:
  """ConfigError unless `config` names a known study with well-formed grids."""
  errors.choice("study", config.study, STUDIES)
  errors.check(isinstance(config.seeds, int) and config.seeds >= 1,
               f"seeds={config.seeds!r} must be an integer >= 1")
  errors.check(isinstance(config.seed, int) and config.seed >= 0,
               f"seed={config.seed!r} must be an integer >= 0")
  errors.check(len(config.grids) > 0, f"study {config.study!r} has no grids")
  for name, grid in config.grids.items():
    field = f"grids.{name}"
    errors.choice(f"{field}.model.family", grid.model.family, _FAMILIES_OF[config.study])
    for key in ("widths", "depths"):
      _tuple(grid.model[key], f"{field}.model.{key}")
    for v in _tuple(grid.model.variants, f"{field}.model.variants", str):
      errors.choice(f"{field}.model.variants", v, sweeps.VARIANTS[grid.model.family])
  if config.study == "convergence":
    errors.check(float(config.target_loss) > 0,
                 f"target_loss={config.target_loss!r} must be > 0")


def load_arrays(name: str, *, seed: int = 0, options=None) -> sweeps.Arrays:
  """Loads and normalizes a dataset (per feature / per channel, train statistics)."""
  from resjax import data  # pylint: disable=g-import-not-at-top
  ds = data.load(name, seed=seed, **dict(options or {}))
  mean, std = np.asarray(ds.mean, np.float32), np.maximum(np.asarray(ds.std, np.float32), 1e-6)
  norm = lambda a: ((np.asarray(a, np.float32) - mean) / std).astype(np.float32)  # noqa: E731
  return sweeps.Arrays(norm(ds.train.inputs), ds.train.labels.astype(np.int32),
                       norm(ds.test.inputs), ds.test.labels.astype(np.int32), ds.num_classes)


def _arch(grid, arrays: sweeps.Arrays) -> sweeps.Arch:
  m = grid.model
  return sweeps.Arch(
      family=m.family, num_classes=arrays.num_classes, input_shape=arrays.x_train.shape[1:],
      max_width=max(_tuple(m.widths, "model.widths")), max_depth=max(_tuple(m.depths, "model.depths")),
      activation=m.activation, norm=m.norm, branch_scale=bool(m.branch_scale),
      head_width=int(m.head_width), expansion=int(m.expansion), stem_pool=int(m.stem_pool))


def _optim(grid) -> sweeps.Optim:
  o = grid.opt
  return sweeps.Optim(name=o.name, lr=float(o.lr), momentum=float(o.momentum),
                      weight_decay=float(o.weight_decay), schedule=o.schedule)


def _nets(config, grid) -> list[sweeps.Net]:
  m = grid.model
  return sweeps.grid(range(config.seed, config.seed + config.seeds), _tuple(m.widths, "widths"),
                     _tuple(m.depths, "depths"), _tuple(m.variants, "variants", str))


# ----------------------------------------------------------------------------
# Running, with resume.


class GridRun:
  """A finished grid as stored in `workdir/grids/<name>.npz`."""

  def __init__(self, name: str, nets: list[sweeps.Net], eval_steps, history, probes_init,
               probes_final, timing):
    self.name, self.nets, self.eval_steps = name, nets, np.asarray(eval_steps)
    self.history, self.probes_init, self.probes_final = history, probes_init, probes_final
    self.timing = timing

  def save(self, path: str) -> None:
    arrays = {"eval_steps": self.eval_steps,
              "net_seed": np.asarray([n.seed for n in self.nets]),
              "net_width": np.asarray([n.width for n in self.nets]),
              "net_depth": np.asarray([n.depth for n in self.nets]),
              "net_variant": np.asarray([n.variant for n in self.nets]),
              "timing": np.asarray(json.dumps(self.timing))}
    arrays.update({f"history/{k}": v for k, v in self.history.items()})
    for tag, probes in (("init", self.probes_init), ("final", self.probes_final)):
      if probes is not None:
        arrays.update({f"probes_{tag}/{k}": np.asarray(v) for k, v in probes.items()})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    files.write_bytes(path, buf.getvalue())

  @classmethod
  def load(cls, name: str, path: str) -> "GridRun":
    with np.load(path) as z:
      d = {k: z[k] for k in z.files}
    nets = [sweeps.Net(int(s), int(w), int(dp), str(v)) for s, w, dp, v in
            zip(d["net_seed"], d["net_width"], d["net_depth"], d["net_variant"])]
    pick = lambda p: {k.split("/", 1)[1]: v for k, v in d.items() if k.startswith(p + "/")} or None  # noqa: E731
    return cls(name, nets, d["eval_steps"], pick("history"), pick("probes_init"),
               pick("probes_final"), json.loads(str(d["timing"])))


def _run_grid(config, name: str, grid, workdir: str, devices, log) -> GridRun:
  path = os.path.join(workdir, "grids", f"{name}.npz")
  if os.path.exists(path):
    if log:
      log(f"[{name}] already trained: {path}")
    return GridRun.load(name, path)
  arrays = load_arrays(grid.data.name, seed=grid.data.seed, options=grid.data.options)
  arch, opt, nets = _arch(grid, arrays), _optim(grid), _nets(config, grid)
  t = grid.train
  if log:
    log(f"[{name}] {len(nets)} nets ({arch.family} on {grid.data.name}, widths "
        f"{tuple(grid.model.widths)}, depths {tuple(grid.model.depths)}, variants "
        f"{tuple(grid.model.variants)}, {config.seeds} seeds), {t.steps} steps each")
  result = sweeps.train_grid(
      arch, opt, nets, arrays, steps=int(t.steps), batch_size=int(t.batch_size),
      eval_every=int(t.eval_every), chunk_steps=int(t.chunk_steps), eval_batch=int(t.eval_batch),
      devices=devices, checkpoint_dir=os.path.join(workdir, "checkpoints", name), log=log,
      name=name, probes=bool(grid.probes), fast_compile=bool(t.fast_compile))
  run = GridRun(name, result.nets, result.eval_steps, result.history, result.probes_init,
                result.probes_final, result.timing)
  run.save(path)
  return run


def machine() -> dict[str, Any]:
  """What ran the study (for RESULTS.md)."""
  import jax  # pylint: disable=g-import-not-at-top
  return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
          "cpu_count": os.cpu_count(), "devices": [str(d) for d in jax.devices()],
          "jax": jax.__version__, "python": platform.python_version()}


def run(config, workdir: str, *, devices=None,
        log: Callable[[str], None] | None = print) -> dict[str, Any]:
  """Runs study `config.study` into `workdir`; returns what study.json holds.

  The workdir is locked for the run (`locking.workdir_lock`); study.csv,
  nets.csv, study.json and the figure are written as one set (`files.result_set`).
  """
  validate(config)
  workdir = files.ensure_workdir(workdir)
  with locking.workdir_lock(workdir):
    return _run(config, workdir, devices, log)


def _run(config, workdir: str, devices, log) -> dict[str, Any]:
  cfg = json.loads(json.dumps(config.to_dict(), default=list))
  cfg_path = os.path.join(workdir, "config.json")
  if os.path.exists(cfg_path):
    with open(cfg_path) as f:
      errors.check(json.load(f) == cfg,
                   f"--workdir {workdir} holds a run of a different config; "
                   "use a new --workdir (or the same config to resume)")
  else:
    files.write_json(cfg_path, cfg)
  t0 = time.perf_counter()
  runs = {}
  for i, (name, grid) in enumerate(config.grids.items()):
    if log:
      log(f"study {config.study}: grid {i + 1}/{len(config.grids)} '{name}'")
    runs[name] = _run_grid(config, name, grid, workdir, devices, log)
  out = _ANALYSES[config.study](config, runs, workdir, log)
  fig, rows, net_rows = out.pop("figure"), out["rows"], out.pop("net_rows")
  out.update({"study": config.study, "config": cfg, "machine": machine(),
              "timing": {name: r.timing for name, r in runs.items()},
              "wall_s": time.perf_counter() - t0,  # this invocation (resumed parts excluded)
              "grids_total_s": sum(r.timing.get("total_s", 0.0) for r in runs.values()),
              "figure": f"{config.study}.png"})
  out = _json_safe(out)
  try:
    with files.result_set(workdir) as new:
      files.save_figure(fig, os.path.join(new, f"{config.study}.png"), dpi=200)
      files.write_csv(os.path.join(new, "study.csv"), rows)
      files.write_csv(os.path.join(new, "nets.csv"), net_rows)
      files.write_json(os.path.join(new, "study.json"), out)
  finally:
    _close(fig)
  if log:
    log(f"study {config.study} done: {workdir}/study.csv, study.json, {config.study}.png")
  return out


def _json_safe(x: Any) -> Any:
  """NaN / inf -> None (JSON null), NumPy scalars -> Python, recursively."""
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  if isinstance(x, (np.integer, np.bool_)):
    return x.item()
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.ndarray):
    return _json_safe(x.tolist())
  return x


# ----------------------------------------------------------------------------
# Shared analysis helpers.


def _final(run: GridRun, key: str) -> np.ndarray:
  return run.history[key][:, -1]


def _groups(run: GridRun, keys=("variant", "width", "depth")) -> dict[tuple, np.ndarray]:
  """Condition -> indices of its nets (ordered by seed)."""
  out: dict[tuple, list[int]] = {}
  for i, n in enumerate(run.nets):
    out.setdefault(tuple(getattr(n, k) for k in keys), []).append(i)
  return {k: np.asarray(sorted(v, key=lambda i: run.nets[i].seed)) for k, v in out.items()}


def _net_rows(run: GridRun, extra: dict[str, np.ndarray] | None = None) -> list[dict[str, Any]]:
  rows = []
  for i, n in enumerate(run.nets):
    row = {"grid": run.name, **n._asdict()}
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
      row[key] = _g(run.history[key][i, -1])
    for key, values in (extra or {}).items():
      row[key] = _g(values[i])
    rows.append(row)
  return rows


def _bounds(key: str) -> tuple[float, float]:
  """The range a metric lives in (intervals are clipped to it)."""
  if "loss" in key:
    return 0.0, math.inf
  return 0.0, 1.0  # accuracies and fractions


def ci95_in(values, key: str) -> tuple[float, float, float]:
  """Mean and 95% t-interval clipped to the metric's range."""
  return rstats.mean_ci(values, bounds=_bounds(key))


def geo_ci95(values) -> tuple[float, float, float]:
  """Geometric mean and 95% interval from a t-interval of the logs (values floored at 1e-12)."""
  return rstats.geo_mean_ci(values, floor=1e-12)


def _condition_rows(run: GridRun, metrics: dict[str, np.ndarray]) -> list[dict[str, Any]]:
  rows = []
  for (variant, width, depth), idx in _groups(run).items():
    row = {"grid": run.name, "variant": variant, "width": width, "depth": depth, "n": len(idx)}
    for key, values in metrics.items():
      row.update(_stat_cols(key, ci95_in(values[idx], key)))
      if "loss" in key:
        row.update(_stat_cols(f"{key}_geomean", geo_ci95(values[idx])))
    rows.append(row)
  return rows


def _paired(run: GridRun, metric: np.ndarray, a: tuple, b: tuple) -> dict[str, Any]:
  """Mean of metric[a] - metric[b] over seeds both conditions share, with a 95% t-interval."""
  groups = _groups(run)
  seeds_a = {run.nets[i].seed: i for i in groups[a]}
  seeds_b = {run.nets[i].seed: i for i in groups[b]}
  common = sorted(set(seeds_a) & set(seeds_b))
  c = rstats.paired([metric[seeds_a[s]] for s in common], [metric[seeds_b[s]] for s in common])
  return {**{k: _g(c[k]) for k in ("mean", "lo", "hi", "p")}, "n": len(common),
          "excludes_zero": c["excludes_zero"]}


def _layers(net: sweeps.Net, probes: dict[str, np.ndarray], i: int, key: str) -> np.ndarray:
  """Net i's values of a per-layer probe, in forward order (its own layers only)."""
  return np.asarray(probes[key][i])[np.asarray(probes["valid"][i]) > 0]


def _dead_layers(probes: dict[str, np.ndarray], i: int) -> tuple[np.ndarray, float]:
  """Per-layer dead fraction of net i, and the fraction over all its units."""
  unit = probes["unit"][i] > 0
  valid = probes["valid"][i] > 0
  dead = unit & ~probes["ever_on"][i]
  per_layer = dead.sum(-1)[valid] / np.maximum(unit.sum(-1)[valid], 1)
  return per_layer, float(dead[valid].sum() / max(unit[valid].sum(), 1))


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  plt.rcParams.update({
      "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
      "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False,
      "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25,
      "lines.linewidth": 1.6, "lines.markersize": 4.5, "figure.dpi": 100})
  return plt


def _close(fig) -> None:
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  plt.close(fig)


def _errline(ax, x, triples, *, color, label, ls="-", marker="o", alpha=0.18, band=True):
  """A mean line with its 95% interval as a band (or error bars)."""
  x = np.asarray(x, np.float64)
  mean = np.asarray([t[0] for t in triples], np.float64)
  lo = np.asarray([t[1] for t in triples], np.float64)
  hi = np.asarray([t[2] for t in triples], np.float64)
  ax.plot(x, mean, ls=ls, marker=marker, color=color, label=label)
  ok = np.isfinite(lo) & np.isfinite(hi)
  if band:
    ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=alpha, lw=0)
  else:
    ax.errorbar(x[ok], mean[ok], yerr=[mean[ok] - lo[ok], hi[ok] - mean[ok]], fmt="none",
                ecolor=color, capsize=2.5, lw=1)


def _log2_axis(ax, ticks) -> None:
  ax.set_xscale("log", base=2)
  ax.set_xticks(list(ticks))
  ax.set_xticklabels([str(t) for t in ticks])
  ax.minorticks_off()


def _footer(fig, config, runs: dict[str, GridRun], log_note: bool = False) -> None:
  parts = [f"{config.seeds} seeds per point; bands and bars: 95% intervals over seeds "
           "(t-intervals"]
  if log_note:
    parts[-1] += "; on log axes, geometric means with t-intervals of the logs"
  parts[-1] += ")"
  fig.text(0.5, -0.01, "; ".join(parts), ha="center", va="top", fontsize=7.5, color="0.35")


# ----------------------------------------------------------------------------
# 1. Degradation (C5, He et al. 2016 Fig. 6).


def _degradation(config, runs, workdir, log):
  plt = _plt()
  rows, net_rows, contrasts, curves = [], [], {}, {}
  fig, axes = plt.subplots(len(runs), 3, figsize=(13, 3.6 * len(runs)), squeeze=False)
  order = sorted(runs, key=lambda n: ("mlp", "conv").index(config.grids[n].model.family))
  for r, (name, run) in enumerate((n, runs[n]) for n in order):
    g = config.grids[name]
    metrics = {k: _final(run, k) for k in ("train_loss", "train_acc", "test_acc")}
    rows += _condition_rows(run, metrics)
    net_rows += _net_rows(run)
    groups = _groups(run)
    depths = sorted({n.depth for n in run.nets})
    widths = sorted({n.width for n in run.nets})
    variants = list(dict.fromkeys(n.variant for n in run.nets))
    w = widths[-1]
    for v in variants:
      if len(depths) > 1:
        contrasts[f"{name}/{v}: train_loss(depth {depths[-1]}) - train_loss(depth {depths[0]})"] = \
            _paired(run, metrics["train_loss"], (v, w, depths[-1]), (v, w, depths[0]))
    if {"plain", "residual"} <= set(variants):
      for d in depths:
        contrasts[f"{name}/depth {d}: train_loss(plain) - train_loss(residual)"] = \
            _paired(run, metrics["train_loss"], ("plain", w, d), ("residual", w, d))
    short = _short_title(g)
    for c, key in enumerate(("train_loss", "train_acc")):
      ax = axes[r, c]
      for v in variants:
        ci = geo_ci95 if key == "train_loss" else (lambda x: ci95_in(x, "acc"))
        triples = [ci(metrics[key][groups[(v, w, d)]]) for d in depths]
        _errline(ax, depths, triples, color=COLORS[v], label=LABELS[v])
        curves[f"{name}/{v}/{key}"] = {"depth": depths, "mean": [_g(t[0]) for t in triples],
                                       "lo": [_g(t[1]) for t in triples],
                                       "hi": [_g(t[2]) for t in triples]}
      _log2_axis(ax, depths)
      ax.set_xlabel("depth (activation layers)")
      if key == "train_loss":
        ax.set_yscale("log")
        ax.set_ylabel("final training loss (geo. mean)")
        ax.set_title(f"{short}: training loss after {g.train.steps} steps")
      else:
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("final training accuracy")
        ax.set_title(f"{short}: training accuracy")
      ax.legend(frameon=False)
    ax = axes[r, 2]
    if run.probes_init is not None:
      d = depths[-1]
      for v in variants:
        norms = np.stack([run.probes_init["grad_norm"][i][:d] for i in groups[(v, w, d)]])
        triples = [geo_ci95(norms[:, l]) for l in range(d)]
        _errline(ax, np.arange(1, d + 1), triples, color=COLORS[v], label=LABELS[v], marker=None)
        curves[f"{name}/{v}/grad_norm_init_depth{d}"] = [_g(t[0]) for t in triples]
      ax.set_yscale("log")
      ax.set_xlabel("layer (input side = 1)")
      ax.set_ylabel(r"$\|\partial L / \partial W_l\|$ at initialization")
      ax.set_title(f"{short}: gradient norm per layer, depth {d}")
      ax.xaxis.set_major_locator(_int_locator())
      ax.legend(frameon=False)
    else:
      ax.axis("off")
  fig.suptitle("Degradation with depth: plain vs residual, same parameters and budget "
               "(He et al. 2016, Fig. 6)", fontsize=11, y=1.0)
  fig.tight_layout()
  _footer(fig, config, runs, log_note=True)
  return {"rows": rows, "net_rows": net_rows, "contrasts": contrasts, "curves": curves,
          "figure": fig}


def _short_title(g) -> str:
  return {"mlp": f"MLP w{max(g.model.widths)}, {g.data.name}",
          "conv": f"conv {max(g.model.widths)} ch., {g.data.name}",
          "invres": f"inv. residual, {g.data.name}",
          "bottleneck": f"width-n layer, {g.data.name}"}[g.model.family]


def _int_locator():
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  return ticker.MaxNLocator(integer=True)


def _family_title(g) -> str:
  return {"mlp": f"MLP (width {max(g.model.widths)}) on {g.data.name}",
          "conv": f"conv net ({max(g.model.widths)} ch.) on {g.data.name}",
          "invres": f"inverted residual on {g.data.name}",
          "bottleneck": f"first layer of width n on {g.data.name}"}[g.model.family]


# ----------------------------------------------------------------------------
# 2. Dead units vs width and depth (C4).


def _dead_units(config, runs, workdir, log):
  plt = _plt()
  rows, net_rows, contrasts, curves = [], [], {}, {}
  name, run = next(iter(runs.items()))
  g = config.grids[name]
  k = len(run.nets)
  dead0 = np.zeros(k)
  dead1 = np.zeros(k)
  off0, off1 = np.zeros(k), np.zeros(k)
  lin0, lin1 = np.zeros(k), np.zeros(k)
  per_layer = {}
  for i in range(k):
    per_layer[i] = (_dead_layers(run.probes_init, i)[0], _dead_layers(run.probes_final, i)[0])
    dead0[i] = _dead_layers(run.probes_init, i)[1]
    dead1[i] = _dead_layers(run.probes_final, i)[1]
    off0[i] = _layers(run.nets[i], run.probes_init, i, "all_off").mean()
    off1[i] = _layers(run.nets[i], run.probes_final, i, "all_off").mean()
    lin0[i] = _layers(run.nets[i], run.probes_init, i, "all_on").mean()
    lin1[i] = _layers(run.nets[i], run.probes_final, i, "all_on").mean()
  metrics = {"dead_init": dead0, "dead_trained": dead1, "silent_layer_inputs_init": off0,
             "silent_layer_inputs_trained": off1, "linear_layer_inputs_init": lin0,
             "linear_layer_inputs_trained": lin1, "train_acc": _final(run, "train_acc"),
             "test_acc": _final(run, "test_acc")}
  rows += _condition_rows(run, metrics)
  net_rows += _net_rows(run, {"dead_init": dead0, "dead_trained": dead1})
  groups = _groups(run)
  widths = sorted({n.width for n in run.nets})
  depths = sorted({n.depth for n in run.nets})
  variants = list(dict.fromkeys(n.variant for n in run.nets))
  for d in depths:
    for w in widths:
      if {"plain", "residual"} <= set(variants):
        contrasts[f"depth {d}, width {w}: dead_trained(plain) - dead_trained(residual)"] = \
            _paired(run, dead1, ("plain", w, d), ("residual", w, d))
  for (v, w, d), idx in groups.items():
    layers = np.stack([per_layer[i][1] for i in idx])
    curves[f"{v}/width{w}/depth{d}/dead_per_layer_trained"] = [_g(x) for x in layers.mean(0)]
    layers0 = np.stack([per_layer[i][0] for i in idx])
    curves[f"{v}/width{w}/depth{d}/dead_per_layer_init"] = [_g(x) for x in layers0.mean(0)]
  fig, axes = plt.subplots(2, len(depths), figsize=(3.7 * len(depths), 6.4), squeeze=False)
  for c, d in enumerate(depths):
    ax = axes[0, c]
    for v in variants:
      for values, ls, tag in ((dead0, ":", "init"), (dead1, "-", "trained")):
        triples = [ci95_in(values[groups[(v, w, d)]], "frac") for w in widths]
        _errline(ax, widths, triples, color=COLORS[v], ls=ls, label=f"{LABELS[v]}, {tag}",
                 marker="o" if tag == "trained" else "s")
    _log2_axis(ax, widths)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("width (units per layer)")
    ax.set_ylabel("dead units (fraction of all units)")
    ax.set_title(f"depth {d}: dead units vs width")
    if c == 0:
      ax.legend(frameon=False)
    ax = axes[1, c]
    shown = widths[: min(3, len(widths))]
    shades = {w: 0.45 + 0.55 * j / max(1, len(shown) - 1) for j, w in enumerate(shown)}
    for v in variants:
      for w in shown:
        layers = np.stack([per_layer[i][1] for i in groups[(v, w, d)]])
        triples = [ci95_in(layers[:, l], "frac") for l in range(layers.shape[1])]
        _errline(ax, np.arange(1, d + 1), triples, color=COLORS[v], alpha=0.08 * shades[w],
                 ls="-" if v in ("plain", variants[0]) else "--",
                 label=f"{LABELS[v]}, width {w}", marker=None)
        ax.lines[-1].set_alpha(shades[w])
    ax.set_ylim(-0.02, 1.02)
    ax.xaxis.set_major_locator(_int_locator())
    ax.set_xlabel("layer (input side = 1)")
    ax.set_ylabel("dead units after training")
    ax.set_title(f"depth {d}: dead units per layer (trained)")
    if c == 0:
      ax.legend(frameon=False, ncol=2, fontsize=7)
  fig.suptitle(f"Dead units (never on duty on the training set): {_family_title(g)}, "
               f"norm={g.model.norm}, {g.train.steps} steps", fontsize=11, y=1.0)
  fig.tight_layout()
  _footer(fig, config, runs)
  return {"rows": rows, "net_rows": net_rows, "contrasts": contrasts, "curves": curves,
          "figure": fig}


# ----------------------------------------------------------------------------
# 3. Collapse inside training (C1-C3).


def _collapse_curve(config, widths: Sequence[int], workdir: str, log) -> dict[str, Any]:
  """The untrained collapse curve at the study's widths (cached in workdir/grids)."""
  path = os.path.join(workdir, "grids", "collapse_sweep.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  from resjax import collapse  # pylint: disable=g-import-not-at-top
  c = config.collapse
  cfg = {"activations": tuple(c.activations), "dims": tuple(int(w) for w in widths),
         "seeds": int(c.seeds), "seed": int(c.seed), "chunk": int(c.chunk),
         "manifold": dict(c.manifold)}
  if log:
    log(f"untrained collapse curve: resjax.collapse.sweep over n = {cfg['dims']}")
  res = collapse.sweep(cfg)
  out = {"dims": [int(n) for n in res["dims"]], "activations": list(res["activations"]),
         "seeds": int(res["seeds"])}
  for key in ("collapsed_frac", "dead_frac", "pinv_error", "collapsed_frac_theory",
              "dead_frac_theory"):
    arr = np.asarray(res[key])[0, 0]  # d = first manifold dim, first activation
    out[key] = arr.tolist()
  files.write_json(path, out)
  return out


def _collapse(config, runs, workdir, log):
  plt = _plt()
  name, run = next(iter(runs.items()))
  g = config.grids[name]
  k = len(run.nets)
  few0 = np.asarray([_layers(n, run.probes_init, i, "few_on")[0] for i, n in enumerate(run.nets)])
  few1 = np.asarray([_layers(n, run.probes_final, i, "few_on")[0] for i, n in enumerate(run.nets)])
  off1 = np.asarray([_layers(n, run.probes_final, i, "all_off")[0] for i, n in enumerate(run.nets)])
  dead1 = np.asarray([_dead_layers(run.probes_final, i)[1] for i in range(k)])
  is_relu = np.asarray([n.variant == "relu" for n in run.nets])
  # Duty statistics concern the ReLU of the first layer: the 'relu' variant only.
  nan = lambda a: np.where(is_relu, a, np.nan)  # noqa: E731
  metrics = {"test_acc": _final(run, "test_acc"), "train_acc": _final(run, "train_acc"),
             "train_loss": _final(run, "train_loss"), "under2_on_init": nan(few0),
             "under2_on_trained": nan(few1), "none_on_trained": nan(off1),
             "dead_trained": nan(dead1)}
  rows = _condition_rows(run, metrics)
  net_rows = _net_rows(run, {"under2_on_init": nan(few0), "under2_on_trained": nan(few1)})
  groups = _groups(run)
  widths = sorted({n.width for n in run.nets})
  variants = list(dict.fromkeys(n.variant for n in run.nets))
  depth = run.nets[0].depth
  contrasts = {}
  for w in widths:
    for other in ("linear", "residual"):
      if {"relu", other} <= set(variants):
        contrasts[f"n={w}: test_acc({other}) - test_acc(relu)"] = _paired(
            run, metrics["test_acc"], (other, w, depth), ("relu", w, depth))
  curve = _collapse_curve(config, widths, workdir, log)
  curves = {"untrained": curve}
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  ax = axes[0]
  for v in variants:
    triples = [ci95_in(metrics["test_acc"][groups[(v, w, depth)]], "frac") for w in widths]
    label = {"relu": "ReLU(z)", "linear": "z (linear)", "residual": "z + ReLU(Uz + c)"}[v]
    _errline(ax, widths, triples, color=COLORS[v], label=label)
    curves[f"{v}/test_acc"] = [_g(t[0]) for t in triples]
  _log2_axis(ax, widths)
  ax.set_xlabel("width n of the first layer (z = Wx + b)")
  ax.set_ylabel(f"test accuracy after {g.train.steps} steps")
  ax.set_title("trained: 2-D spirals through a width-n first layer")
  ax.legend(frameon=False, title="first-layer output", title_fontsize=8)
  ax = axes[1]
  seeds_u = np.asarray(curve["collapsed_frac"])  # [N, S]
  triples = [ci95_in(seeds_u[j], "frac") for j in range(len(curve["dims"]))]
  _errline(ax, curve["dims"], triples, color="0.25", label="random T, measured (untrained)")
  ax.plot(curve["dims"], curve["collapsed_frac_theory"], color="0.25", ls=":", marker=None,
          label=r"theory $P(\mathrm{Bin}(n, \frac{1}{2}) < 2)$")
  if "relu" in variants:
    for values, ls, tag in ((few0, "--", "at init"), (few1, "-", "after training")):
      triples = [ci95_in(values[groups[("relu", w, depth)]], "frac") for w in widths]
      _errline(ax, widths, triples, color=COLORS["relu"], ls=ls, label=f"ReLU first layer, {tag}",
               marker="o" if tag == "after training" else "s")
      curves[f"relu/under2_on/{tag}"] = [_g(t[0]) for t in triples]
  _log2_axis(ax, widths)
  ax.set_yscale("symlog", linthresh=1e-3)
  ax.set_ylim(0, 1.05)
  ax.set_xlabel("width n")
  ax.set_ylabel("inputs with < 2 units on duty")
  ax.set_title("collapse: fewer units on duty than the manifold's dimension")
  ax.legend(frameon=False, fontsize=7)
  fig.suptitle("ReLU collapse inside training (MobileNetV2 Fig. 1 and Appendix A)",
               fontsize=11, y=1.0)
  fig.tight_layout()
  _footer(fig, config, runs)
  return {"rows": rows, "net_rows": net_rows, "contrasts": contrasts, "curves": curves,
          "figure": fig}


# ----------------------------------------------------------------------------
# 4. Linear bottleneck ablation (C6).


def _bottleneck(config, runs, workdir, log):
  plt = _plt()
  name, run = next(iter(runs.items()))
  g = config.grids[name]
  metrics = {k: _final(run, k) for k in ("test_acc", "train_acc", "train_loss", "test_loss")}
  rows = _condition_rows(run, metrics)
  net_rows = _net_rows(run)
  groups = _groups(run)
  widths = sorted({n.width for n in run.nets})
  variants = list(dict.fromkeys(n.variant for n in run.nets))
  depth = run.nets[0].depth
  contrasts, curves = {}, {}
  gaps = []
  for w in widths:
    for key in ("test_acc", "train_loss"):
      if {"linear", "relu6"} <= set(variants):
        c = _paired(run, metrics[key], ("linear", w, depth), ("relu6", w, depth))
        contrasts[f"width {w}: {key}(linear) - {key}(relu6)"] = c
        if key == "test_acc":
          gaps.append((c["mean"], c["lo"], c["hi"]))
  fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.8))
  for c, key in zip((0, 2), ("test_acc", "train_loss")):
    ax = axes[c]
    for v in variants:
      ci = geo_ci95 if key == "train_loss" else (lambda x: ci95_in(x, "acc"))
      triples = [ci(metrics[key][groups[(v, w, depth)]]) for w in widths]
      _errline(ax, widths, triples, color=COLORS[v], label=f"{LABELS[v]} bottleneck")
      curves[f"{v}/{key}"] = [_g(t[0]) for t in triples]
    _log2_axis(ax, widths)
    ax.set_xlabel("bottleneck width (channels)")
    if key == "train_loss":
      ax.set_yscale("log")
      ax.set_ylabel("final training loss (geo. mean)")
      ax.set_title(f"training loss after {g.train.steps} steps")
    else:
      ax.set_ylabel("test accuracy")
      ax.set_title("test accuracy vs bottleneck width")
    ax.legend(frameon=False)
  ax = axes[1]
  if gaps:
    _errline(ax, widths, gaps, color="k", label="linear - ReLU6, paired by seed", band=False)
    curves["test_acc_gap_linear_minus_relu6"] = [_g(t[0]) for t in gaps]
  ax.axhline(0, color="0.5", lw=0.8)
  _log2_axis(ax, widths)
  ax.set_xlabel("bottleneck width (channels)")
  ax.set_ylabel("difference in test accuracy")
  ax.set_title("gap: linear minus ReLU6 bottleneck")
  ax.legend(frameon=False)
  fig.suptitle(f"Linear vs ReLU6 bottleneck (MobileNetV2 Fig. 6a): {depth} inverted-residual "
               f"blocks, t={g.model.expansion}, on {g.data.name}", fontsize=11, y=1.0)
  fig.tight_layout()
  _footer(fig, config, runs, log_note=True)
  return {"rows": rows, "net_rows": net_rows, "contrasts": contrasts, "curves": curves,
          "figure": fig}


# ----------------------------------------------------------------------------
# 5. Convergence speed (C5).


def steps_to_target(run: GridRun, target: float) -> np.ndarray:
  """First evaluation step with full training loss <= target; inf if never."""
  loss = run.history["train_loss"]
  hit = loss <= target
  first = np.argmax(hit, axis=1)
  return np.where(hit.any(1), run.eval_steps[first].astype(np.float64), np.inf)


def _convergence(config, runs, workdir, log):
  plt = _plt()
  name, run = next(iter(runs.items()))
  g = config.grids[name]
  target = float(config.target_loss)
  steps = steps_to_target(run, target)
  groups = _groups(run)
  depths = sorted({n.depth for n in run.nets})
  widths = sorted({n.width for n in run.nets})
  variants = list(dict.fromkeys(n.variant for n in run.nets))
  w = widths[-1]
  rows = []
  for (v, wd, d), idx in groups.items():
    s = steps[idx]
    row = {"grid": name, "variant": v, "width": wd, "depth": d, "n": len(idx),
           "target_loss": target}
    row.update(_stat_cols("steps_to_target_median", median_ci(s, seed=config.seed)))
    row.update(_stat_cols("reached_fraction", wilson(int(np.isfinite(s).sum()), len(s))))
    for key in ("train_loss", "train_acc"):
      row.update(_stat_cols(f"final_{key}", ci95_in(_final(run, key)[idx], key)))
    rows.append(row)
  net_rows = _net_rows(run, {"steps_to_target": steps})
  contrasts = {}
  for d in depths:
    if {"plain", "residual"} <= set(variants):
      a, b = groups[("plain", w, d)], groups[("residual", w, d)]
      contrasts[f"depth {d}: reached target (plain, residual)"] = {
          "plain": int(np.isfinite(steps[a]).sum()), "residual": int(np.isfinite(steps[b]).sum()),
          "of": len(a)}
      # Area under the log-loss curve: a censoring-free speed measure, paired by seed.
      auc = np.log(run.history["train_loss"]).mean(1)
      contrasts[f"depth {d}: mean log train loss over training (plain - residual)"] = _paired(
          run, auc, ("plain", w, d), ("residual", w, d))
  curves = {}
  fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.9))
  ax = axes[0]
  shades = {d: 0.35 + 0.65 * j / max(1, len(depths) - 1) for j, d in enumerate(depths)}
  for v in variants:
    for d in depths:
      idx = groups[(v, w, d)]
      loss = run.history["train_loss"][idx]
      logl = np.log(loss)
      mean = np.exp(logl.mean(0))
      tcrit = stats.t.ppf(0.975, max(1, len(idx) - 1))
      half = tcrit * logl.std(0, ddof=1) / math.sqrt(len(idx)) if len(idx) > 1 else 0 * mean
      color = COLORS[v]
      ax.plot(run.eval_steps, mean, color=color, alpha=shades[d],
              ls="-" if v == "residual" else "--", label=f"{LABELS[v]}, depth {d}")
      ax.fill_between(run.eval_steps, mean / np.exp(half), mean * np.exp(half), color=color,
                      alpha=0.10 * shades[d], lw=0)
      curves[f"{v}/depth{d}/train_loss_geomean"] = [_g(x) for x in mean]
  curves["eval_steps"] = [int(s) for s in run.eval_steps]
  ax.axhline(target, color="k", lw=0.8, ls=":")
  ax.text(run.eval_steps[-1], target, f" target {target:g}", va="bottom", ha="right", fontsize=7)
  ax.set_yscale("log")
  ax.set_xlabel("training step")
  ax.set_ylabel("full training loss (geometric mean)")
  ax.set_title(f"{_family_title(g)}: training curves")
  ax.legend(frameon=False, ncol=2, fontsize=7)
  ax = axes[1]
  budget = int(g.train.steps)
  for v in variants:
    triples = [median_ci(steps[groups[(v, w, d)]], seed=config.seed) for d in depths]
    shown = [tuple(min(x, budget * 1.08) if not math.isnan(x) else x for x in t) for t in triples]
    _errline(ax, depths, shown, color=COLORS[v], label=LABELS[v], band=False)
    for d, t in zip(depths, triples):
      if not math.isfinite(t[0]):
        idx = groups[(v, w, d)]
        ax.annotate(f"not reached\n({int(np.isfinite(steps[idx]).sum())}/{len(idx)} seeds)",
                    (d, budget * 1.08), textcoords="offset points", xytext=(-12, -44),
                    ha="right", fontsize=7, color=COLORS[v],
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.9))
    curves[f"{v}/steps_to_target_median"] = [_g(t[0]) for t in triples]
  ax.axhline(budget, color="0.4", lw=0.8, ls="--")
  ax.text(depths[0], budget, " budget (above: not reached)", va="bottom", fontsize=7, color="0.3")
  _log2_axis(ax, depths)
  ax.set_ylim(0, budget * 1.15)
  ax.set_xlabel("depth (activation layers)")
  ax.set_ylabel(f"steps to training loss <= {target:g} (median)")
  ax.set_title("steps to target (95% bootstrap interval)")
  ax.legend(frameon=False)
  fig.suptitle("Convergence speed with the same budget: plain vs residual", fontsize=11, y=1.0)
  fig.tight_layout()
  _footer(fig, config, runs, log_note=True)
  return {"rows": rows, "net_rows": net_rows, "contrasts": contrasts, "curves": curves,
          "figure": fig}


_ANALYSES = {"degradation": _degradation, "dead_units": _dead_units, "collapse": _collapse,
             "bottleneck": _bottleneck, "convergence": _convergence}
