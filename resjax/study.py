"""The studies of claims C1-C7: named sets of grid runs, their analyses and figures.

A study (configs/study.py) is a set of ordinary training configs with
`config.grid` set. `run(config, workdir)` trains each with
`train.train_and_evaluate(grid_config, workdir/<grid>)` (so it resumes after
SIGKILL or SIGTERM exactly as `launch.train` does), reads back each grid's
nets.csv and metrics.jsonl (a history per net through the `net` field), probes
the nets that need it (`checkpoints.load(workdir/<grid>, net=k)` for the
trained net, `train.create_train_state` of net k's config for its exact
initialization, `probes.run` on the training split), and writes to `workdir`:

  study.csv   one row per condition: means and 95% intervals over seeds
              (resjax.stats: t-intervals; geometric means of losses; per-net
              fractions of inputs or units with seed-clustered Wilson intervals;
              Wilson for pooled counts of seeds or units; bootstrap for medians)
  nets.csv    one row per trained net: its final numbers
  study.json  the config, the machine, timings, the rows, paired contrasts (with
              Holm-adjusted p-values over the contrasts read together) and the
              curves behind the figure
  <study>.png the figure (and <study>.pdf)

Studies (REGISTRY: name -> (grids of the config, analysis)):
  degradation  final training loss / accuracy vs depth, plain vs residual, at
               one learning rate and at each net's best rate (C5).
  dead_units   dead units per layer and per unit, init vs trained, vs width and
               depth, plain vs residual (C4, C7 per layer).
  collapse     accuracy vs the width n of a first layer on 2-D spirals, ReLU vs
               linear vs identity-plus-ReLU, beside the untrained collapse curve
               of `resjax.collapse.sweep` (C1-C3).
  bottleneck   inverted-residual nets, linear vs ReLU6 bottleneck, vs bottleneck
               width (C6).
  convergence  steps to reach a target training loss, plain vs residual (C5).
  redundancy   accuracy vs first-layer width n on tasks of intrinsic dimension
               d = 1..6 embedded in 16 dims, ReLU vs linear vs identity-plus-ReLU,
               one grid per d; whether n / d or n puts the damage of the
               different d on one curve (C3; the measure is defined above
               `_redundancy`).
  pilot        the learning-rate pilot: per family, the rate with the lowest
               final training loss among a few (reported, not applied).
"""
from __future__ import annotations

import collections
import json
import math
import os
import platform
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from resjax import checkpoints, errors, files, grid, locking, probes, sharding
from resjax import stats as rstats
from resjax import train

COLORS = {"plain": "#c0392b", "residual": "#1f5fa8", "relu": "#c0392b", "linear": "#2e8b57",
          "relu6": "#d2691e"}
LABELS = {"plain": "plain", "residual": "residual", "relu": "ReLU", "linear": "linear",
          "relu6": "ReLU6"}
# The model family each grid of a study trains.
_FAMILIES = {"degradation": ("mlp", "resnet"), "dead_units": ("mlp",),
             "collapse": ("firstlayer",), "bottleneck": ("invres",), "convergence": ("mlp",),
             "redundancy": ("firstlayer",), "pilot": ("mlp", "resnet", "invres")}

Net = collections.namedtuple("Net", "seed width depth variant lr")


# ----------------------------------------------------------------------------
# Statistics: every interval comes from resjax.stats.


def _g(x: Any) -> Any:
  """Six significant digits for floats (JSON/CSV friendly; inf/NaN kept)."""
  if isinstance(x, (float, np.floating)):
    x = float(x)
    return x if not math.isfinite(x) else float(f"{x:.6g}")
  return x


def _stat_cols(prefix: str, triple) -> dict[str, float]:
  mean, lo, hi = triple
  return {prefix: _g(mean), f"{prefix}_lo": _g(lo), f"{prefix}_hi": _g(hi)}


def ci95_in(values, key: str):
  """Mean and 95% t-interval clipped to the metric's range (losses >= 0, fractions [0, 1])."""
  return rstats.mean_ci(values, bounds=(0.0, math.inf) if "loss" in key else (0.0, 1.0))


def geo_ci95(values):
  """Geometric mean and 95% interval from a t-interval of the logs (floored at 1e-12)."""
  return rstats.geo_mean_ci(values, floor=1e-12)


def _fractions(rows: list[dict], run: "GridRun", metrics: dict[str, np.ndarray],
               size: Callable[[dict], float]) -> None:
  """Replaces the t-intervals of per-net fractions in `rows` by seed-clustered Wilson
  intervals (stats.cluster_wilson: checked coverage near 0 and 1); `size(row)` is
  the number of trials (inputs or units) behind one net's fraction."""
  groups = _groups(run)
  for row in rows:
    idx = groups[(row["variant"], row["width"], row["depth"])]
    for key, values in metrics.items():
      v = np.asarray(values, np.float64)[idx]
      if np.isfinite(v).sum() >= 2:
        row.update(_stat_cols(key, rstats.cluster_wilson(v[np.isfinite(v)], size=size(row))))


def _holm(contrasts: dict[str, dict]) -> dict[str, dict]:
  """Adds Holm-adjusted p-values over `contrasts` (the ones read together)."""
  keys = [k for k, c in contrasts.items() if "p" in c]
  adjusted, reject = rstats.holm([contrasts[k]["p"] for k in keys])
  for k, a, r in zip(keys, adjusted, reject):
    contrasts[k].update(p_holm=_g(a), holm_reject=bool(r), family_size=len(keys))
  return contrasts


# ----------------------------------------------------------------------------
# A trained grid, read back from its workdir.


def _net_of(cfg) -> Net:
  """A grid net's condition in the studies' terms (width, depth, variant)."""
  m = cfg.model
  if m.name == "mlp":
    return Net(int(cfg.seed), int(m.width), int(m.depth),
               "residual" if m.residual else "plain", float(cfg.opt.lr))
  if m.name == "resnet":
    return Net(int(cfg.seed), int(m.widths[0]), int(m.depth),
               "plain" if m.plain else "residual", float(cfg.opt.lr))
  if m.name == "firstlayer":
    return Net(int(cfg.seed), int(m.width), 1, str(m.first), float(cfg.opt.lr))
  stage = tuple(m.stages)[0]
  return Net(int(cfg.seed), int(stage[0]), int(stage[1]), str(m.bottleneck), float(cfg.opt.lr))


class GridRun:
  """A trained grid: its nets, histories [net, eval] and (optional) probes."""

  def __init__(self, name: str, config, workdir: str, nets: list[Net], eval_steps,
               history: dict[str, np.ndarray], timing: dict, index=None):
    self.name, self.config, self.workdir = name, config, workdir
    self.nets, self.eval_steps, self.history = nets, np.asarray(eval_steps), history
    self.timing = timing
    self.index = list(range(len(nets))) if index is None else list(index)  # net k in the grid
    self.probes_init: dict[int, dict] = {}
    self.probes_final: dict[int, dict] = {}

  @classmethod
  def read(cls, name: str, config, workdir: str, timing: dict) -> "GridRun":
    nets = [_net_of(c) for c in grid.nets(config)]
    rows: dict[tuple[int, int], dict] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        row = json.loads(line)
        if "eval/accuracy" in row:
          rows[(int(row.get("net", 0)), int(row["step"]))] = row
    steps = sorted({s for _, s in rows})
    keys = {"train_loss": "eval_train/loss", "train_acc": "eval_train/accuracy",
            "test_loss": "eval/loss", "test_acc": "eval/accuracy"}
    history = {k: np.asarray([[_num(rows.get((i, s), {}).get(v)) for s in steps]
                              for i in range(len(nets))], np.float64)
               for k, v in keys.items()}
    return cls(name, config, workdir, nets, steps, history, timing)

  def subset(self, members: Sequence[int], name: str | None = None) -> "GridRun":
    """The nets `members` (positions in this run) as a run of their own."""
    out = GridRun(name or self.name, self.config, self.workdir,
                  [self.nets[i] for i in members], self.eval_steps,
                  {k: v[list(members)] for k, v in self.history.items()}, self.timing,
                  [self.index[i] for i in members])
    out.probes_init = {j: self.probes_init[i] for j, i in enumerate(members)
                       if i in self.probes_init}
    out.probes_final = {j: self.probes_final[i] for j, i in enumerate(members)
                        if i in self.probes_final}
    return out


def _num(v) -> float:
  return float("nan") if v is None else float(v)


def _probe_one(state, ds, grad: bool) -> dict:
  """What the studies read from `probes.run` on the training split."""
  res = probes.run(state, None, ds, split="train", batch_size=2048,
                   grad_batches=4 if grad else 0, grad_batch_size=64,
                   mesh=sharding.make_mesh(jax.devices()[:1]))
  layers = []
  for row in res.layers:
    frac = np.asarray(res.active_fraction[row["layer"]], np.float64)
    on = frac * row["units"] * row["positions"]
    layers.append({"layer": row["layer"], "units": int(row["units"]),
                   "dead_units": [int(u) for u in row["dead_units"]],
                   "all_on": float(row["linear_frac"]), "all_off": float(np.mean(on < 0.5)),
                   "few_on": float(np.mean(on < 1.5))})
  weights = [{"layer": w["layer"], "grad_norm": float(w["grad_norm"])} for w in res.weights
             if w["layer"] != "classifier"]
  return {"layers": layers, "weights": weights}


def _probe_grid(run: GridRun, log, grad_at_init: Callable[[Net], bool] = lambda n: False,
                which: Callable[[Net], bool] = lambda n: True) -> None:
  """Probes nets of `run` at init and after training (cached in <grid>/study_probes.json)."""
  path = os.path.join(run.workdir, "study_probes.json")
  cached = {}
  if os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
  ds = train.load_data(run.config)
  nets = grid.nets(run.config)
  todo = [i for i, n in enumerate(run.nets) if which(n)]
  tic = time.perf_counter()
  new = [i for i in todo if str(run.index[i]) not in cached]
  inits = dict(zip(new, train.initial_states([nets[run.index[i]] for i in new], ds.input_shape,
                                              ds.num_classes, mean=ds.mean, std=ds.std)))
  for count, i in enumerate(todo):
    key = str(run.index[i])
    if key not in cached:
      k = run.index[i]
      _, final = checkpoints.load(run.workdir, net=k, devices=jax.devices()[:1])
      cached[key] = {"init": _probe_one(inits.pop(i), ds, grad_at_init(run.nets[i])),
                     "final": _probe_one(final, ds, False)}
      if log and (count + 1) % 20 == 0:
        log(f"[{run.name}] probed {count + 1}/{len(todo)} nets "
            f"({time.perf_counter() - tic:.0f} s)")
    run.probes_init[i], run.probes_final[i] = cached[key]["init"], cached[key]["final"]
  files.write_json(path, cached)
  run.timing["probes_s"] = time.perf_counter() - tic


# ----------------------------------------------------------------------------
# Config -> grids, running them.


def grids(config) -> dict[str, Any]:
  """The study's grid configs, with the study's seeds and, for grids of 32 nets
  or more, one compiled call per value of the first model axis (each call
  padded to its own nets only)."""
  out = {}
  for name, g in config.grids.items():
    g = type(g)(g.to_dict())
    g.grid.seeds = tuple(range(int(config.seed), int(config.seed) + int(config.seeds)))
    found = grid.axes(g)
    count = int(np.prod([len(v) for _, v in found]))
    first = found[0]
    if (first[0] in ("model.depth", "model.width", "model.stages") and len(first[1]) > 1
        and count >= 32):
      g.grid.nets_per_call = count // len(first[1])
    out[name] = g
  return out


def validate(config) -> None:
  """ConfigError unless `config` names a known study with well-formed grids."""
  errors.choice("study", config.study, REGISTRY)
  errors.check(isinstance(config.seeds, int) and not isinstance(config.seeds, bool)
               and config.seeds >= 2, f"seeds={config.seeds!r} is not allowed; use an "
               "integer >= 2 (intervals over seeds)")
  errors.check(isinstance(config.seed, int) and config.seed >= 0,
               f"seed={config.seed!r} is not allowed; use an integer >= 0")
  errors.check(len(config.grids) > 0, f"study {config.study!r} has no grids")
  for name, g in grids(config).items():
    errors.choice(f"grids.{name}.model.name", g.model.name, _FAMILIES[config.study])
    try:
      train.validate(g, 1)
    except errors.ConfigError as e:
      raise errors.ConfigError(f"grids.{name}: " + str(e).replace("\n", f"; grids.{name}: ")
                               ) from None
  if config.study == "convergence":
    errors.check(float(config.target_loss) > 0,
                 f"target_loss={config.target_loss!r} is not allowed; use a number > 0")


def machine() -> dict[str, Any]:
  """What ran the study (for RESULTS.md)."""
  return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
          "cpu_count": os.cpu_count(), "devices": [str(d) for d in jax.devices()],
          "jax": jax.__version__, "python": platform.python_version()}


def _train_grid(name: str, g, workdir: str, log, should_stop) -> dict:
  """Trains (or resumes) one grid in workdir/<name>; returns its timing."""
  gdir = os.path.join(workdir, name)
  done = os.path.join(gdir, "study_done.json")
  if os.path.exists(done):
    if log:
      log(f"[{name}] already trained: {gdir}")
    with open(done) as f:
      return json.load(f)
  if log:
    log(f"[{name}] {len(grid.nets(g))} nets of {g.model.name} on {g.data.name} "
        f"({', '.join(f'{f} x{len(v)}' for f, v in grid.axes(g))}), {g.train.steps} steps each")
  tic = time.perf_counter()
  result = train.train_and_evaluate(g, gdir, should_stop=should_stop)
  timing = {"train_s": time.perf_counter() - tic, "nets": len(grid.nets(g))}
  if result.get("stopped"):
    timing["stopped_at"] = int(result["step"])
    return timing
  files.write_json(done, timing)
  return timing


def run(config, workdir: str, *, log: Callable[[str], None] | None = print,
        should_stop: Callable[[int], bool] | None = None) -> dict[str, Any]:
  """Runs study `config.study` into `workdir`; returns what study.json holds.

  `should_stop(step)` is passed to each grid's training (see
  `train.train_and_evaluate`): when it says True the grid saves its state and
  `run` returns {'stopped': True, ...} without analysing; running again resumes.
  The workdir is locked for the run (`locking.workdir_lock`); study.csv,
  nets.csv, study.json and the figure are written as one set (`files.result_set`).
  """
  validate(config)
  workdir = files.ensure_workdir(workdir)
  with locking.workdir_lock(workdir):
    return _run(config, workdir, log, should_stop)


def _run(config, workdir: str, log, should_stop) -> dict[str, Any]:
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
  runs, timing = {}, {}
  todo = grids(config)
  for i, (name, g) in enumerate(todo.items()):
    if log:
      log(f"study {config.study}: grid {i + 1}/{len(todo)} '{name}'")
    timing[name] = _train_grid(name, g, workdir, log, should_stop)
    if "stopped_at" in timing[name]:
      if log:
        log(f"study {config.study} stopped in grid '{name}' at step "
            f"{timing[name]['stopped_at']}; run the same command to resume")
      return {"stopped": True, "grid": name, "step": timing[name]["stopped_at"]}
    runs[name] = GridRun.read(name, g, os.path.join(workdir, name), timing[name])
  _, analysis = REGISTRY[config.study]
  out = analysis(config, runs, workdir, log)
  fig, rows, net_rows = out.pop("figure"), out["rows"], out.pop("net_rows")
  out.update({"study": config.study, "config": cfg, "machine": machine(), "timing": timing,
              "wall_s": time.perf_counter() - t0,  # this invocation (resumed parts excluded)
              "figure": f"{config.study}.png", "stopped": False})
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
  """Condition -> positions of its nets (ordered by seed)."""
  out: dict[tuple, list[int]] = {}
  for i, n in enumerate(run.nets):
    out.setdefault(tuple(getattr(n, k) for k in keys), []).append(i)
  return {k: np.asarray(sorted(v, key=lambda i: run.nets[i].seed)) for k, v in out.items()}


def _net_rows(run: GridRun, extra: dict[str, np.ndarray] | None = None) -> list[dict[str, Any]]:
  rows = []
  for i, n in enumerate(run.nets):
    row = {"grid": run.name, "net": run.index[i], **n._asdict()}
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
      row[key] = _g(run.history[key][i, -1])
    for key, values in (extra or {}).items():
      row[key] = _g(values[i])
    rows.append(row)
  return rows


def _condition_rows(run: GridRun, metrics: dict[str, np.ndarray],
                    head: dict | None = None) -> list[dict[str, Any]]:
  rows = []
  for (variant, width, depth), idx in _groups(run).items():
    row = {"grid": run.name, **(head or {}), "variant": variant, "width": width,
           "depth": depth, "lr": run.nets[idx[0]].lr, "n": len(idx)}
    for key, values in metrics.items():
      row.update(_stat_cols(key, ci95_in(values[idx], key)))
      if "loss" in key:
        row.update(_stat_cols(f"{key}_geomean", geo_ci95(values[idx])))
    rows.append(row)
  return rows


def _paired(run: GridRun, metric: np.ndarray, a: tuple, b: tuple) -> dict[str, Any]:
  """Mean of metric[a] - metric[b] over the seeds both conditions share, 95% t-interval."""
  groups = _groups(run)
  seeds_a = {run.nets[i].seed: i for i in groups[a]}
  seeds_b = {run.nets[i].seed: i for i in groups[b]}
  common = sorted(set(seeds_a) & set(seeds_b))
  c = rstats.paired([metric[seeds_a[s]] for s in common], [metric[seeds_b[s]] for s in common])
  return {**{k: _g(c[k]) for k in ("mean", "lo", "hi", "p")}, "n": len(common),
          "excludes_zero": c["excludes_zero"]}


def _dead(p: dict) -> tuple[np.ndarray, float]:
  """Per-layer dead fraction and the fraction over all units of one probe result."""
  units = np.asarray([l["units"] for l in p["layers"]], np.float64)
  dead = np.asarray([len(l["dead_units"]) for l in p["layers"]], np.float64)
  return dead / np.maximum(units, 1), float(dead.sum() / max(units.sum(), 1))


def _recovery(p0: dict, p1: dict) -> tuple[int, int, int, int]:
  """(dead at init, of them alive at the end, alive at init, of them dead at the end)."""
  d0 = d0_alive = a0 = a0_dead = 0
  for l0, l1 in zip(p0["layers"], p1["layers"]):
    dead0, dead1 = set(l0["dead_units"]), set(l1["dead_units"])
    d0 += len(dead0)
    d0_alive += len(dead0 - dead1)
    a0 += l0["units"] - len(dead0)
    a0_dead += len(dead1 - dead0)
  return d0, d0_alive, a0, a0_dead


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


def _int_locator():
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  return ticker.MaxNLocator(integer=True)


def _footer(fig, config, log_note: bool = False, extra: str = "") -> None:
  text = (f"{config.seeds} seeds per point; bands and bars: 95% intervals over seeds "
          "(t-intervals" + ("; on log axes, geometric means with t-intervals of the logs"
                            if log_note else "") + ")" + extra)
  fig.text(0.5, -0.01, text, ha="center", va="top", fontsize=7.5, color="0.35")


def _title(run: GridRun) -> str:
  g, widths = run.config, sorted({n.width for n in run.nets})
  w = str(widths[0]) if len(widths) == 1 else "n"
  return {"mlp": f"MLP w{w}" if len(widths) == 1 else "MLP",
          "resnet": f"ResNet {w} ch.", "invres": "inv. residual",
          "firstlayer": "width-n first layer"}[g.model.name] + f", {g.data.name}"


# ----------------------------------------------------------------------------
# 1. Degradation (C5, He et al. 2016 Fig. 6).


def _best_rate(run: GridRun) -> tuple[GridRun, dict[str, float]]:
  """Per (variant, depth), the nets of the rate with the lowest geometric-mean final
  training loss over seeds (chosen on the same nets: an optimistic view)."""
  by = _groups(run, ("variant", "width", "depth", "lr"))
  best: dict[tuple, tuple[float, float]] = {}
  loss = _final(run, "train_loss")
  for (v, w, d, lr), idx in by.items():
    score = geo_ci95(loss[idx])[0]
    score = score if math.isfinite(score) else math.inf
    if (v, w, d) not in best or score < best[(v, w, d)][0]:
      best[(v, w, d)] = (score, lr)
  members = sorted(i for (v, w, d, lr), idx in by.items() if best[(v, w, d)][1] == lr
                   for i in idx)
  return (run.subset(members, f"{run.name}/best_lr"),
          {f"{v} depth {d}": lr for (v, w, d), (_, lr) in best.items()})


def _degradation(config, runs, workdir, log):
  plt = _plt()
  views = []  # (label, run)
  rates = {}
  for name in sorted(runs, key=lambda n: n != "mlp"):
    run = runs[name]
    # Gradient norms at init: the deepest nets at the config's rate (the initial
    # weights do not depend on the rate).
    deepest, base = max(m.depth for m in run.nets), float(config.grids[name].opt.lr)
    _probe_grid(run, log, grad_at_init=lambda n: True,
                which=lambda n, d=deepest, b=base: n.depth == d and n.lr == b)
    lrs = sorted({n.lr for n in run.nets})
    if len(lrs) > 1:
      base = float(config.grids[name].opt.lr)
      same = [i for i, n in enumerate(run.nets) if n.lr == base]
      views.append((f"{name}, lr {base:g}", run.subset(same, f"{name}/lr{base:g}")))
      best, rates[name] = _best_rate(run)
      views.append((f"{name}, best lr per net", best))
    else:
      views.append((name, run))
  rows, net_rows, contrasts, curves = [], [], {}, {}
  for name in sorted(runs, key=lambda n: n != "mlp"):
    net_rows += _net_rows(runs[name])
  fig, axes = plt.subplots(len(views), 3, figsize=(13, 3.4 * len(views)), squeeze=False)
  for r, (label, run) in enumerate(views):
    g = run.config
    metrics = {k: _final(run, k) for k in ("train_loss", "train_acc", "test_acc")}
    rows += _condition_rows(run, metrics, {"view": label})
    groups = _groups(run)
    depths = sorted({n.depth for n in run.nets})
    variants = [v for v in ("plain", "residual") if any(n.variant == v for n in run.nets)]
    w = run.nets[0].width
    for v in variants:
      contrasts[f"{label}/{v}: train_loss(depth {depths[-1]}) - train_loss(depth {depths[0]})"] = \
          _paired(run, metrics["train_loss"], (v, w, depths[-1]), (v, w, depths[0]))
    for d in depths:
      contrasts[f"{label}/depth {d}: train_loss(plain) - train_loss(residual)"] = \
          _paired(run, metrics["train_loss"], ("plain", w, d), ("residual", w, d))
    for c, key in enumerate(("train_loss", "train_acc")):
      ax = axes[r, c]
      for v in variants:
        ci = geo_ci95 if key == "train_loss" else (lambda x: ci95_in(x, "acc"))
        triples = [ci(metrics[key][groups[(v, w, d)]]) for d in depths]
        _errline(ax, depths, triples, color=COLORS[v], label=LABELS[v])
        curves[f"{label}/{v}/{key}"] = {"depth": depths, "mean": [_g(t[0]) for t in triples],
                                        "lo": [_g(t[1]) for t in triples],
                                        "hi": [_g(t[2]) for t in triples]}
      _log2_axis(ax, depths)
      ax.set_xlabel("depth")
      if key == "train_loss":
        ax.set_yscale("log")
        ax.set_ylabel("final training loss (geo. mean)")
        ax.set_title(f"{_title(run)} ({label.split(', ', 1)[-1] if ', ' in label else 'one lr'})",
                     fontsize=9)
      else:
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("final training accuracy")
        ax.set_title(f"training accuracy after {g.train.steps} steps")
      ax.legend(frameon=False)
    ax = axes[r, 2]
    d = depths[-1]
    have = {v: [i for i in groups[(v, w, d)] if i in run.probes_init] for v in variants}
    if all(have.values()) and run.probes_init[have[variants[0]][0]]["weights"]:
      for v in variants:
        norms = np.stack([[x["grad_norm"] for x in run.probes_init[i]["weights"]]
                          for i in have[v]])
        triples = [geo_ci95(norms[:, l]) for l in range(norms.shape[1])]
        _errline(ax, np.arange(1, norms.shape[1] + 1), triples, color=COLORS[v],
                 label=LABELS[v], marker=None)
        curves[f"{label}/{v}/grad_norm_init_depth{d}"] = [_g(t[0]) for t in triples]
      ax.set_yscale("log")
      ax.set_xlabel("weight layer (input side = 1)")
      ax.set_ylabel(r"$\|\partial L / \partial W_l\|$ at initialization")
      ax.set_title(f"gradient norm per layer at init, depth {d}")
      ax.xaxis.set_major_locator(_int_locator())
      ax.legend(frameon=False)
    else:
      ax.axis("off")
  fig.suptitle("Degradation with depth: plain vs residual, same parameters and budget "
               "(He et al. 2016, Fig. 6)", fontsize=11, y=1.0)
  fig.tight_layout()
  _footer(fig, config, log_note=True)
  return {"rows": rows, "net_rows": net_rows, "contrasts": _holm(contrasts), "curves": curves,
          "best_lr": rates, "figure": fig}


# ----------------------------------------------------------------------------
# 2. Dead units vs width and depth (C4; C7 per layer).


def _dead_units(config, runs, workdir, log):
  plt = _plt()
  name, run = next(iter(runs.items()))
  g = run.config
  _probe_grid(run, log)
  k = len(run.nets)
  dead0, dead1 = np.zeros(k), np.zeros(k)
  rec = np.zeros((k, 4))
  per_layer, lin = {}, {}
  for i in range(k):
    p0, p1 = run.probes_init[i], run.probes_final[i]
    per_layer[i] = (_dead(p0)[0], _dead(p1)[0])
    dead0[i], dead1[i] = _dead(p0)[1], _dead(p1)[1]
    rec[i] = _recovery(p0, p1)
    lin[i] = ([l["all_on"] for l in p0["layers"]], [l["all_on"] for l in p1["layers"]])
  metrics = {"dead_init": dead0, "dead_trained": dead1,
             "train_acc": _final(run, "train_acc"), "test_acc": _final(run, "test_acc")}
  rows = _condition_rows(run, metrics)
  _fractions(rows, run, {"dead_init": dead0, "dead_trained": dead1},
             lambda r: r["width"] * r["depth"])
  groups = _groups(run)
  points = len(train.load_data(g).train.labels)
  for row in rows:  # Per unit: recoveries and new deaths, pooled over seeds (Wilson).
    idx = groups[(row["variant"], row["width"], row["depth"])]
    d0, d0a, a0, a0d = rec[idx].sum(0)
    row.update({"units_dead_init": int(d0), "units_recovered": int(d0a),
                "units_alive_init": int(a0), "units_died": int(a0d)})
    row.update(_stat_cols("recovered_frac", rstats.wilson(d0a, d0)))
    row.update(_stat_cols("died_frac", rstats.wilson(a0d, a0)))
    for l in (0, 1):  # C7 per layer: inputs on which layer l is fully on, vs 2^-width.
      if l < row["depth"]:
        for tag, which in (("init", 0), ("trained", 1)):
          row.update(_stat_cols(f"linear_inputs_layer{l + 1}_{tag}", rstats.cluster_wilson(
              [lin[i][which][l] for i in idx], size=points)))
    row["linear_inputs_theory"] = _g(2.0 ** -row["width"])
  net_rows = _net_rows(run, {"dead_init": dead0, "dead_trained": dead1,
                             "units_dead_init": rec[:, 0], "units_recovered": rec[:, 1],
                             "units_alive_init": rec[:, 2], "units_died": rec[:, 3]})
  widths = sorted({n.width for n in run.nets})
  depths = sorted({n.depth for n in run.nets})
  variants = [v for v in ("plain", "residual") if any(n.variant == v for n in run.nets)]
  contrasts = {}
  for d in depths:
    for w in widths:
      contrasts[f"depth {d}, width {w}: dead_trained(plain) - dead_trained(residual)"] = \
          _paired(run, dead1, ("plain", w, d), ("residual", w, d))
  curves = {}
  for (v, w, d), idx in groups.items():
    curves[f"{v}/width{w}/depth{d}/dead_per_layer_trained"] = [
        _g(x) for x in np.stack([per_layer[i][1] for i in idx]).mean(0)]
    curves[f"{v}/width{w}/depth{d}/dead_per_layer_init"] = [
        _g(x) for x in np.stack([per_layer[i][0] for i in idx]).mean(0)]
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
        _errline(ax, np.arange(1, layers.shape[1] + 1), triples, color=COLORS[v],
                 alpha=0.08 * shades[w], ls="-" if v == "plain" else "--",
                 label=f"{LABELS[v]}, width {w}", marker=None)
        ax.lines[-1].set_alpha(shades[w])
    ax.set_ylim(-0.02, 1.02)
    ax.xaxis.set_major_locator(_int_locator())
    ax.set_xlabel("layer (input side = 1)")
    ax.set_ylabel("dead units after training")
    ax.set_title(f"depth {d}: dead units per layer (trained)")
    if c == 0:
      ax.legend(frameon=False, ncol=2, fontsize=7)
  fig.suptitle(f"Dead units (never on duty on the training set): {_title(run)}, "
               f"norm={g.model.norm}, {g.train.steps} steps", fontsize=11, y=1.0)
  fig.tight_layout()
  _footer(fig, config)
  return {"rows": rows, "net_rows": net_rows, "contrasts": _holm(contrasts), "curves": curves,
          "figure": fig}


# ----------------------------------------------------------------------------
# 3. Collapse inside training (C1-C3).


def _collapse_curve(config, widths: Sequence[int], workdir: str, log) -> dict[str, Any]:
  """The untrained collapse curve at the study's widths (cached in the workdir)."""
  path = os.path.join(workdir, "collapse_sweep.json")
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
  for key in ("collapsed_frac", "dead_frac", "collapsed_frac_theory", "dead_frac_theory"):
    out[key] = np.asarray(res[key])[0, 0].tolist()  # d = first manifold dim, first activation
  files.write_json(path, out)
  return out


def _collapse(config, runs, workdir, log):
  plt = _plt()
  name, run = next(iter(runs.items()))
  g = run.config
  _probe_grid(run, log, which=lambda n: n.variant == "relu")
  k = len(run.nets)
  nan = np.full(k, np.nan)
  few0, few1, off1, dead1 = nan.copy(), nan.copy(), nan.copy(), nan.copy()
  for i in run.probes_final:  # The ReLU of the first layer ('relu' nets only).
    few0[i] = run.probes_init[i]["layers"][0]["few_on"]
    few1[i] = run.probes_final[i]["layers"][0]["few_on"]
    off1[i] = run.probes_final[i]["layers"][0]["all_off"]
    first = run.probes_final[i]["layers"][0]
    dead1[i] = len(first["dead_units"]) / first["units"]
  metrics = {"test_acc": _final(run, "test_acc"), "train_acc": _final(run, "train_acc"),
             "train_loss": _final(run, "train_loss"), "under2_on_init": few0,
             "under2_on_trained": few1, "none_on_trained": off1, "dead_first_trained": dead1}
  rows = _condition_rows(run, metrics)
  points = len(train.load_data(g).train.labels)
  _fractions(rows, run, {k: metrics[k] for k in ("under2_on_init", "under2_on_trained",
                                                  "none_on_trained")}, lambda r: points)
  _fractions(rows, run, {"dead_first_trained": dead1}, lambda r: r["width"])
  net_rows = _net_rows(run, {"under2_on_init": few0, "under2_on_trained": few1})
  groups = _groups(run)
  widths = sorted({n.width for n in run.nets})
  variants = [v for v in ("relu", "linear", "residual") if any(n.variant == v for n in run.nets)]
  contrasts = {}
  for w in widths:
    for other in ("linear", "residual"):
      if {"relu", other} <= set(variants):
        contrasts[f"n={w}: test_acc({other}) - test_acc(relu)"] = _paired(
            run, metrics["test_acc"], (other, w, 1), ("relu", w, 1))
  curve = _collapse_curve(config, widths, workdir, log)
  seeds_u = np.asarray(curve["collapsed_frac"])  # [n, draws]
  for row in rows:
    j = curve["dims"].index(row["width"])
    row.update(_stat_cols("untrained_collapsed", rstats.cluster_wilson(
        seeds_u[j], size=int(config.collapse.manifold.points))))
    row["untrained_collapsed_theory"] = _g(curve["collapsed_frac_theory"][j])
  curves = {"untrained": curve}
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  ax = axes[0]
  for v in variants:
    triples = [ci95_in(metrics["test_acc"][groups[(v, w, 1)]], "frac") for w in widths]
    label = {"relu": "ReLU(z)", "linear": "z (linear)", "residual": "z + ReLU(Uz + c)"}[v]
    _errline(ax, widths, triples, color=COLORS[v], label=label)
    curves[f"{v}/test_acc"] = [_g(t[0]) for t in triples]
  _log2_axis(ax, widths)
  ax.set_xlabel("width n of the first layer (z = Wx + b)")
  ax.set_ylabel(f"test accuracy after {g.train.steps} steps")
  ax.set_title("trained: 2-D spirals through a width-n first layer")
  ax.legend(frameon=False, title="first-layer output", title_fontsize=8)
  ax = axes[1]
  triples = [rstats.cluster_wilson(seeds_u[j], size=int(config.collapse.manifold.points))
             for j in range(len(curve["dims"]))]
  _errline(ax, curve["dims"], triples, color="0.25",
           label=f"random T, measured (untrained, {curve['seeds']} draws)")
  ax.plot(curve["dims"], curve["collapsed_frac_theory"], color="0.25", ls=":", marker=None,
          label=r"theory $P(\mathrm{Bin}(n, \frac{1}{2}) < 2)$")
  if "relu" in variants:
    for values, ls, tag in ((few0, "--", "at init"), (few1, "-", "after training")):
      triples = [rstats.cluster_wilson(values[groups[("relu", w, 1)]]) for w in widths]
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
  _footer(fig, config, extra="; right: seed-clustered Wilson intervals")
  return {"rows": rows, "net_rows": net_rows, "contrasts": _holm(contrasts), "curves": curves,
          "figure": fig}


# ----------------------------------------------------------------------------
# 4. Linear bottleneck ablation (C6).


def _bottleneck(config, runs, workdir, log):
  plt = _plt()
  name, run = next(iter(runs.items()))
  g = run.config
  metrics = {k: _final(run, k) for k in ("test_acc", "train_acc", "train_loss", "test_loss")}
  rows = _condition_rows(run, metrics)
  net_rows = _net_rows(run)
  groups = _groups(run)
  widths = sorted({n.width for n in run.nets})
  variants = [v for v in ("linear", "relu6") if any(n.variant == v for n in run.nets)]
  depth = run.nets[0].depth
  contrasts, curves, gaps = {}, {}, []
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
               f"blocks, t={g.model.expansion}, stem fixed, on {g.data.name}",
               fontsize=11, y=1.0)
  fig.tight_layout()
  _footer(fig, config, log_note=True)
  return {"rows": rows, "net_rows": net_rows, "contrasts": _holm(contrasts), "curves": curves,
          "figure": fig}


# ----------------------------------------------------------------------------
# 5. Convergence speed (C5).


def steps_to_target(run: GridRun, target: float) -> np.ndarray:
  """First evaluation step with full training loss <= target; inf if never."""
  hit = run.history["train_loss"] <= target
  first = np.argmax(hit, axis=1)
  return np.where(hit.any(1), run.eval_steps[first].astype(np.float64), np.inf)


def _convergence(config, runs, workdir, log):
  plt = _plt()
  name, run = next(iter(runs.items()))
  g = run.config
  target = float(config.target_loss)
  steps = steps_to_target(run, target)
  groups = _groups(run)
  depths = sorted({n.depth for n in run.nets})
  variants = [v for v in ("plain", "residual") if any(n.variant == v for n in run.nets)]
  w = run.nets[0].width
  rows = []
  for (v, wd, d), idx in groups.items():
    s = steps[idx]
    row = {"grid": name, "variant": v, "width": wd, "depth": d, "lr": run.nets[idx[0]].lr,
           "n": len(idx), "target_loss": target}
    row.update(_stat_cols("steps_to_target_median", rstats.median_ci(s, seed=config.seed)))
    row.update(_stat_cols("reached_fraction", rstats.wilson(int(np.isfinite(s).sum()), len(s))))
    for key in ("train_loss", "train_acc"):
      row.update(_stat_cols(f"final_{key}", ci95_in(_final(run, key)[idx], key)))
    rows.append(row)
  net_rows = _net_rows(run, {"steps_to_target": steps})
  contrasts = {}
  auc = np.log(np.maximum(run.history["train_loss"], 1e-12)).mean(1)
  for d in depths:
    contrasts[f"depth {d}: mean log train loss over training (plain - residual)"] = _paired(
        run, auc, ("plain", w, d), ("residual", w, d))
  curves = {"eval_steps": [int(s) for s in run.eval_steps]}
  fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.9))
  ax = axes[0]
  shades = {d: 0.35 + 0.65 * j / max(1, len(depths) - 1) for j, d in enumerate(depths)}
  for v in variants:
    for d in depths:
      loss = run.history["train_loss"][groups[(v, w, d)]]
      trip = [geo_ci95(loss[:, t]) for t in range(loss.shape[1])]
      mean = np.asarray([t[0] for t in trip])
      ax.plot(run.eval_steps, mean, color=COLORS[v], alpha=shades[d],
              ls="-" if v == "residual" else "--", label=f"{LABELS[v]}, depth {d}")
      ax.fill_between(run.eval_steps, [t[1] for t in trip], [t[2] for t in trip],
                      color=COLORS[v], alpha=0.10 * shades[d], lw=0)
      curves[f"{v}/depth{d}/train_loss_geomean"] = [_g(x) for x in mean]
  ax.axhline(target, color="k", lw=0.8, ls=":")
  ax.text(run.eval_steps[-1], target, f" target {target:g}", va="bottom", ha="right", fontsize=7)
  ax.set_yscale("log")
  ax.set_xlabel("training step")
  ax.set_ylabel("full training loss (geometric mean)")
  ax.set_title(f"{_title(run)}: training curves")
  ax.legend(frameon=False, ncol=2, fontsize=7)
  ax = axes[1]
  budget = int(g.train.steps)
  for v in variants:
    triples = [rstats.median_ci(steps[groups[(v, w, d)]], seed=config.seed) for d in depths]
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
  ax.set_xlabel("depth (hidden layers)")
  ax.set_ylabel(f"steps to training loss <= {target:g} (median)")
  ax.set_title("steps to target (95% bootstrap interval)")
  ax.legend(frameon=False)
  fig.suptitle("Convergence speed with the same budget: plain vs residual", fontsize=11, y=1.0)
  fig.tight_layout()
  _footer(fig, config, log_note=True)
  return {"rows": rows, "net_rows": net_rows, "contrasts": _holm(contrasts), "curves": curves,
          "figure": fig}


# ----------------------------------------------------------------------------
# 6. Redundancy: does n / d decide the damage? (C3)
#
# The measure, fixed before the study ran. Damage of a cell (d, n) = test
# accuracy of the linear first layer minus the ReLU one, mean over the seeds
# (paired by seed). A coordinate x (n / d, or n) "collapses" the damage curves
# of the different d onto one curve as far as one non-increasing function of x
# fits all cells: the isotonic (non-increasing) least-squares fit of the cell
# means on x, and its R^2 over the cells (unweighted). The isotonic fit depends
# only on the order of x, so no scale of x is chosen. Uncertainty: a bootstrap
# of the seeds (the same resampled seeds in every cell, as the seeds pair
# across the grid), 95% percentile intervals of each R^2 and of
# R^2(n / d) - R^2(n). Verdict: the interval of the difference above 0 says n / d
# predicts better, below 0 n, otherwise the two are not told apart; a
# coordinate "predicts" the damage when the lower end of its R^2 interval is
# above 0.5, and "neither" is said when neither does. The noise ceiling is the
# R^2 a perfect curve would reach given the seed noise of the cell means,
# 1 - sum(var of cell means) / total sum of squares.


def _binom_below(n: int, d: int) -> float:
  """P(Bin(n, 1/2) < d): a random sign-symmetric layer with zero bias leaves fewer than
  d of n units on duty (exact in expectation at initialization)."""
  return sum(math.comb(n, k) for k in range(min(d, n + 1))) / 2.0 ** n


def isotonic_decreasing(x: Sequence[float], y: Sequence[float]) -> np.ndarray:
  """Least-squares non-increasing fit of y on x (pool adjacent violators; equal x pooled)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  order = np.argsort(x, kind="stable")
  xs, ys = x[order], y[order]
  blocks: list[list[float]] = []  # [sum, count, first index, last index]
  i = 0
  while i < len(xs):
    j = i
    while j + 1 < len(xs) and xs[j + 1] == xs[i]:
      j += 1
    blocks.append([ys[i:j + 1].sum(), j - i + 1.0, i, j])
    while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
      s, c, _, last = blocks.pop()
      blocks[-1][0] += s
      blocks[-1][1] += c
      blocks[-1][3] = last
    i = j + 1
  fit_sorted = np.empty(len(xs))
  for s, c, a, b in blocks:
    fit_sorted[int(a):int(b) + 1] = s / c
  out = np.empty(len(xs))
  out[order] = fit_sorted
  return out


def one_curve_r2(x: Sequence[float], y: Sequence[float]) -> float:
  """R^2 of the non-increasing fit of y on x (1 = one curve through every cell)."""
  y = np.asarray(y, np.float64)
  tss = float(((y - y.mean()) ** 2).sum())
  rss = float(((y - isotonic_decreasing(x, y)) ** 2).sum())
  return 1.0 - rss / tss if tss > 0 else float("nan")


def _one_curve(cells: list[tuple[int, int]], diffs_CxS: np.ndarray, draws: int,
               seed: int) -> dict[str, Any]:
  """R^2 of the one-curve fits in n / d and in n, their bootstrap intervals, the ceiling."""
  ratio = [n / d for d, n in cells]
  width = [float(n) for _, n in cells]
  mean = diffs_CxS.mean(1)
  out = {"cells": len(cells), "seeds": int(diffs_CxS.shape[1]), "draws": int(draws)}
  point = {"ratio": one_curve_r2(ratio, mean), "n": one_curve_r2(width, mean)}
  rng = np.random.default_rng([seed, 6])
  boot = {"ratio": [], "n": [], "diff": []}
  for _ in range(draws):
    m = diffs_CxS[:, rng.integers(0, diffs_CxS.shape[1], diffs_CxS.shape[1])].mean(1)
    a, b = one_curve_r2(ratio, m), one_curve_r2(width, m)
    boot["ratio"].append(a)
    boot["n"].append(b)
    boot["diff"].append(a - b)
  for key, value in (("ratio", point["ratio"]), ("n", point["n"]),
                     ("diff", point["ratio"] - point["n"])):
    lo, hi = np.nanpercentile(boot[key], [2.5, 97.5])
    out[f"r2_{key}"] = _g(value)
    out[f"r2_{key}_lo"], out[f"r2_{key}_hi"] = _g(lo), _g(hi)
  var_mean = diffs_CxS.var(1, ddof=1) / diffs_CxS.shape[1]
  tss = float(((mean - mean.mean()) ** 2).sum())
  out["r2_ceiling"] = _g(1.0 - var_mean.sum() / tss) if tss > 0 else None
  if out["r2_diff_lo"] > 0:
    better = "n/d"
  elif out["r2_diff_hi"] < 0:
    better = "n"
  else:
    better = "not told apart"
  predicts = [k for k, name in (("ratio", "n/d"), ("n", "n")) if out[f"r2_{k}_lo"] > 0.5]
  out["better"] = better
  out["predicts"] = [{"ratio": "n/d", "n": "n"}[k] for k in predicts] or ["neither"]
  return out


def _first_layer_duty(run: GridRun) -> tuple[dict[int, np.ndarray], int]:
  """Units on duty (z > 0) of each trained ReLU first layer on every training input,
  computed from the checkpoint's parameters (no probe compile): position -> bool [N, n]."""
  cfg, state = checkpoints.load(run.workdir, devices=jax.devices()[:1])
  ds = train.load_data(cfg)
  x_NxA = ((ds.train.inputs.reshape(len(ds.train), -1).astype(np.float32)
            - np.ravel(ds.mean)) / np.ravel(ds.std)).astype(np.float32)
  out = {}
  for i, n in enumerate(run.nets):
    if n.variant == "relu":
      p = jax.device_get(state.net_arrays(cfg, run.index[i]))["params"]["first_dense"]
      w_AxN = np.asarray(p["kernel"], np.float32)[:, :n.width]
      b_N = np.asarray(p["bias"], np.float32)[:n.width]
      out[i] = (x_NxA @ w_AxN + b_N) > 0
  return out, len(x_NxA)


_VARIANT_LABELS = {"relu": "ReLU(z)", "linear": "z (linear)", "residual": "z + ReLU(Uz + c)"}


def _redundancy(config, runs, workdir, log):
  plt = _plt()
  rows, net_rows, contrasts, curves = [], [], {}, {}
  dims, per_d = [], {}
  for name, run in runs.items():
    d = int(run.config.data.d)
    dims.append(d)
    duty, points = _first_layer_duty(run)
    k = len(run.nets)
    collapsed, none_on, dead = np.full(k, np.nan), np.full(k, np.nan), np.full(k, np.nan)
    for i, on in duty.items():
      count = on.sum(1)
      collapsed[i], none_on[i] = np.mean(count < d), np.mean(count == 0)
      dead[i] = np.mean(~on.any(0))
    metrics = {"test_acc": _final(run, "test_acc"), "train_acc": _final(run, "train_acc"),
               "train_loss": _final(run, "train_loss"), "collapsed_trained": collapsed,
               "none_on_trained": none_on, "dead_first_trained": dead}
    grid_rows = _condition_rows(run, metrics, {"d": d})
    _fractions(grid_rows, run, {"collapsed_trained": collapsed, "none_on_trained": none_on},
               lambda r: points)
    _fractions(grid_rows, run, {"dead_first_trained": dead}, lambda r: r["width"])
    for row in grid_rows:
      row["ratio"] = _g(row["width"] / d)
      row["collapsed_theory_init"] = _g(_binom_below(row["width"], d))
    rows += grid_rows
    net_rows += [{**r, "d": d} for r in _net_rows(run, {"collapsed_trained": collapsed,
                                                         "dead_first_trained": dead})]
    groups = _groups(run)
    widths = sorted({n.width for n in run.nets})
    per_d[d] = {"widths": widths, "run": run, "metrics": metrics, "groups": groups}
    for w in widths:
      for other in ("linear", "residual"):
        if ("relu", w, 1) in groups and (other, w, 1) in groups:
          contrasts[f"d={d}, n={w}: test_acc({other}) - test_acc(relu)"] = _paired(
              run, metrics["test_acc"], (other, w, 1), ("relu", w, 1))
  _holm(contrasts)
  # Per-seed damage of each cell (linear - ReLU), seeds aligned across the cells.
  cells, diffs = [], []
  for d in dims:
    info = per_d[d]
    for w in info["widths"]:
      g = info["groups"]
      if ("relu", w, 1) in g and ("linear", w, 1) in g:
        acc = info["metrics"]["test_acc"]
        lin = {info["run"].nets[i].seed: acc[i] for i in g[("linear", w, 1)]}
        rel = {info["run"].nets[i].seed: acc[i] for i in g[("relu", w, 1)]}
        seeds = sorted(set(lin) & set(rel))
        cells.append((d, w))
        diffs.append([lin[s] - rel[s] for s in seeds])
  seeds_common = min(len(v) for v in diffs) if diffs else 0
  diffs_CxS = np.asarray([v[:seeds_common] for v in diffs], np.float64)
  fit = _one_curve(cells, diffs_CxS, int(config.get("bootstrap", 2000)), int(config.seed))
  curves["one_curve"] = fit
  curves["cells"] = [{"d": d, "n": n, "ratio": _g(n / d), "damage": _g(m)}
                     for (d, n), m in zip(cells, diffs_CxS.mean(1))]
  # The figure.
  cmap = plt.get_cmap("viridis")
  color = {d: cmap(0.05 + 0.8 * j / max(1, len(dims) - 1)) for j, d in enumerate(dims)}
  fig, axes = plt.subplots(2, 3, figsize=(14, 7.6))
  ratio_ticks = [r for r in (1, 1.5, 2, 3, 4, 6, 8) if any(abs(n / d - r) < 1e-9 for d, n in cells)]
  ratio_ticks = ratio_ticks or sorted({_g(n / d) for d, n in cells})
  all_n = sorted({n for _, n in cells})

  def damage_panel(ax, xs_of, ticks, xlabel, key):
    for d in dims:
      own = [(d2, n) for d2, n in cells if d2 == d]
      triples = [tuple(contrasts[f"d={d}, n={n}: test_acc(linear) - test_acc(relu)"][k] * 100
                       for k in ("mean", "lo", "hi")) for _, n in own]
      xs = [xs_of(d, n) for _, n in own]
      _errline(ax, xs, triples, color=color[d], label=f"d = {d}", band=False)
    xs = np.asarray([xs_of(d, n) for d, n in cells])
    fitted = isotonic_decreasing(xs, diffs_CxS.mean(1)) * 100
    order = np.argsort(xs, kind="stable")
    ax.step(xs[order], fitted[order], where="post", color="0.2", lw=1.0, ls="--",
            label="one non-increasing curve")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("linear minus ReLU test accuracy (points)")
    r2, lo, hi = fit[f"r2_{key}"], fit[f"r2_{key}_lo"], fit[f"r2_{key}_hi"]
    ax.set_title(f"damage vs {xlabel.split(' (')[0]}: one-curve $R^2$ = {r2:.2f} "
                 f"[{lo:.2f}, {hi:.2f}]", fontsize=9)

  damage_panel(axes[0, 0], lambda d, n: n / d, ratio_ticks, "n / d (units per latent dimension)",
               "ratio")
  axes[0, 0].legend(frameon=False, fontsize=7, title="intrinsic dim.", title_fontsize=7)
  damage_panel(axes[0, 1], lambda d, n: float(n), [n for n in all_n if n in (1, 2, 3, 4, 6, 8, 12,
                                                                              16, 24, 32, 48)]
               or all_n, "n (first-layer width)", "n")
  ax = axes[0, 2]
  labels = ["n / d", "n"]
  vals = [fit["r2_ratio"], fit["r2_n"]]
  errs = [[fit["r2_ratio"] - fit["r2_ratio_lo"], fit["r2_n"] - fit["r2_n_lo"]],
          [fit["r2_ratio_hi"] - fit["r2_ratio"], fit["r2_n_hi"] - fit["r2_n"]]]
  ax.bar([0, 1], vals, yerr=errs, color=["#2e8b57", "#8a8a8a"], width=0.55, capsize=4)
  if fit["r2_ceiling"] is not None and 0 < fit["r2_ceiling"] <= 1:
    ax.axhline(fit["r2_ceiling"], color="k", ls=":", lw=1,
               label=f"noise ceiling {fit['r2_ceiling']:.2f}")
  ax.axhline(0.5, color="0.6", ls="--", lw=0.8, label="0.5 (predicts above)")
  ax.set_xticks([0, 1])
  ax.set_xticklabels(labels)
  ax.set_ylim(min(0.0, min(fit["r2_ratio_lo"], fit["r2_n_lo"]) - 0.05), 1.05)
  ax.set_ylabel("$R^2$ of one non-increasing curve")
  ax.set_title(f"which coordinate collapses the curves: $\\Delta R^2$ = {fit['r2_diff']:.2f} "
               f"[{fit['r2_diff_lo']:.2f}, {fit['r2_diff_hi']:.2f}]", fontsize=9)
  ax.legend(frameon=False, fontsize=7, loc="lower right")
  ax = axes[1, 0]
  for d in dims:
    info = per_d[d]
    for v, ls in (("linear", "--"), ("relu", "-")):
      triples = [ci95_in(info["metrics"]["test_acc"][info["groups"][(v, w, 1)]], "acc")
                 for w in info["widths"]]
      triples = [tuple(100 * x for x in t) for t in triples]
      _errline(ax, [w / d for w in info["widths"]], triples, color=color[d], ls=ls,
               label=f"d = {d}, {_VARIANT_LABELS[v]}" if d == dims[0] else None,
               marker="o" if v == "relu" else None, alpha=0.08)
      curves[f"d{d}/{v}/test_acc"] = [_g(t[0] / 100) for t in triples]
    if all(("residual", w, 1) in info["groups"] for w in info["widths"]):
      curves[f"d{d}/residual/test_acc"] = [
          _g(ci95_in(info["metrics"]["test_acc"][info["groups"][("residual", w, 1)]], "acc")[0])
          for w in info["widths"]]
  _log2_axis(ax, ratio_ticks)
  ax.set_xticklabels([f"{t:g}" for t in ratio_ticks])
  ax.set_xlabel("n / d")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title("test accuracy: ReLU (solid) and linear (dashed) first layer", fontsize=9)
  ax.legend(frameon=False, fontsize=7)
  ax = axes[1, 1]
  for d in dims:
    own = [n for d2, n in cells if d2 == d
           and f"d={d}, n={n}: test_acc(residual) - test_acc(relu)" in contrasts]
    if not own:
      continue
    triples = [tuple(contrasts[f"d={d}, n={n}: test_acc(residual) - test_acc(relu)"][k] * 100
                     for k in ("mean", "lo", "hi")) for n in own]
    _errline(ax, [n / d for n in own], triples, color=color[d], label=f"d = {d}", band=False)
  ax.axhline(0, color="0.5", lw=0.8)
  _log2_axis(ax, ratio_ticks)
  ax.set_xticklabels([f"{t:g}" for t in ratio_ticks])
  ax.set_xlabel("n / d")
  ax.set_ylabel("identity+ReLU minus ReLU (points)")
  ax.set_title("a linear path beside the ReLU: z + ReLU(Uz + c) minus ReLU(z)", fontsize=9)
  ax = axes[1, 2]
  for d in dims:
    info = per_d[d]
    idx = [info["groups"][("relu", w, 1)] for w in info["widths"]]
    triples = [rstats.cluster_wilson(info["metrics"]["collapsed_trained"][i]) for i in idx]
    xs = [w / d for w in info["widths"]]
    _errline(ax, xs, [tuple(100 * x for x in t) for t in triples], color=color[d],
             label=f"d = {d}" if d == dims[0] else None, band=True, alpha=0.12)
    ax.plot(xs, [100 * _binom_below(w, d) for w in info["widths"]], color=color[d], ls=":",
            marker=None)
    curves[f"d{d}/relu/collapsed_trained"] = [_g(t[0]) for t in triples]
    curves[f"d{d}/collapsed_theory_init"] = [_g(_binom_below(w, d)) for w in info["widths"]]
  ax.plot([], [], color="0.3", ls="-", marker="o", label="trained ReLU layer")
  ax.plot([], [], color="0.3", ls=":", label=r"random layer: $P(\mathrm{Bin}(n, \frac{1}{2}) < d)$")
  _log2_axis(ax, ratio_ticks)
  ax.set_xticklabels([f"{t:g}" for t in ratio_ticks])
  ax.set_yscale("symlog", linthresh=1.0)
  ax.set_ylim(0, 105)
  ax.set_xlabel("n / d")
  ax.set_ylabel("training inputs with < d units on duty (%)")
  ax.set_title("collapse: fewer units on duty than latent dimensions", fontsize=9)
  handles, labels_ = ax.get_legend_handles_labels()
  keep = [j for j, l in enumerate(labels_) if not l.startswith("d = ")]
  ax.legend([handles[j] for j in keep], [labels_[j] for j in keep], frameon=False, fontsize=7)
  g0 = next(iter(runs.values())).config
  fig.suptitle(f"Does redundancy n/d decide the ReLU damage after training? d-dim task embedded in "
               f"{g0.data.ambient} dims, width-n first layer, head {g0.model.head_depth} x "
               f"{g0.model.head_width}, {g0.train.steps} steps", fontsize=11, y=1.0)
  fig.tight_layout()
  _footer(fig, config, extra="; damage: paired by seed; $R^2$: seed bootstrap; collapse: "
          "seed-clustered Wilson")
  return {"rows": rows, "net_rows": net_rows, "contrasts": contrasts, "curves": curves,
          "one_curve": fit, "figure": fig}


# ----------------------------------------------------------------------------
# The learning-rate pilot: the rate per family with the lowest final training loss.


def _pilot(config, runs, workdir, log):
  plt = _plt()
  rows, net_rows, chosen = [], [], {}
  fig, axes = plt.subplots(1, len(runs), figsize=(4.4 * len(runs), 3.8), squeeze=False)
  for c, (name, run) in enumerate(runs.items()):
    loss = _final(run, "train_loss")
    net_rows += _net_rows(run)
    by = _groups(run, ("variant", "width", "depth", "lr"))
    lrs = sorted({n.lr for n in run.nets})
    variants = sorted({n.variant for n in run.nets})
    for (v, w, d, lr), idx in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][3])):
      row = {"grid": name, "variant": v, "width": w, "depth": d, "lr": lr, "n": len(idx)}
      row.update(_stat_cols("train_loss_geomean", geo_ci95(loss[idx])))
      for key in ("train_acc", "test_acc"):
        row.update(_stat_cols(key, ci95_in(_final(run, key)[idx], key)))
      rows.append(row)
    score = {lr: geo_ci95(loss[[i for i, n in enumerate(run.nets) if n.lr == lr]])[0]
             for lr in lrs}
    score = {lr: s if math.isfinite(s) else math.inf for lr, s in score.items()}
    best = min(lrs, key=lambda lr: score[lr])
    per_variant = {}
    for v in variants:
      s = {lr: geo_ci95(loss[by[next(k for k in by if k[0] == v and k[3] == lr)]])[0]
           for lr in lrs}
      per_variant[v] = min(lrs, key=lambda lr, s=s: s[lr] if math.isfinite(s[lr]) else math.inf)
    study_rate = float(config.study_rates[name]) if name in config.get("study_rates", {}) else None
    chosen[name] = {"model": run.config.model.name, "data": run.config.data.name,
                    "chosen_lr": best, "chosen_lr_per_variant": per_variant,
                    "study_lr": study_rate,
                    "agrees": None if study_rate is None else bool(math.isclose(best, study_rate)),
                    "train_loss_geomean_per_lr": {f"{lr:g}": _g(score[lr]) for lr in lrs}}
    for row in rows:
      if row["grid"] == name:
        row["chosen"] = bool(math.isclose(row["lr"], best))
    if log:
      used = f"; the studies use {study_rate:g}" if study_rate is not None else ""
      log(f"pilot [{name}] {run.config.model.name} on {run.config.data.name}: lowest final "
          f"training loss at lr {best:g} (per variant: "
          f"{', '.join(f'{v} {r:g}' for v, r in per_variant.items())}){used}")
    ax = axes[0, c]
    for j, v in enumerate(variants):
      col = COLORS.get(v, f"C{j}")
      cells = [by[next(k for k in by if k[0] == v and k[3] == lr)] for lr in lrs]
      ax.plot(lrs, [geo_ci95(loss[i])[0] for i in cells], color=col, marker=None,
              label=LABELS.get(v, v))
      for lr, i in zip(lrs, cells):
        ax.scatter(np.full(len(i), lr) * (1.0 + 0.04 * (j - 0.5)), loss[i], color=col, s=12,
                   zorder=3)
    ax.plot(lrs, [score[lr] for lr in lrs], color="k", ls="--", marker=None, lw=1,
            label="both variants (geo. mean)")
    ax.axvline(best, color="k", lw=0.8, ls=":")
    ax.text(best, score[best], f" lowest: {best:g}", fontsize=7, va="bottom")
    if study_rate is not None:
      ax.axvline(study_rate, color="#d2691e", lw=2, alpha=0.3,
                 label=f"studies' rate {study_rate:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(lrs)
    ax.set_xticklabels([f"{lr:g}" for lr in lrs])
    ax.minorticks_off()
    ax.set_xlabel("Adam learning rate (constant)")
    ax.set_ylabel("final training loss (geo. mean)")
    ax.set_title(f"{_title(run)}, {run.config.train.steps} steps", fontsize=9)
    ax.legend(frameon=False, fontsize=7)
  fig.suptitle("Learning-rate pilot: lowest final training loss per family", fontsize=11, y=1.0)
  fig.tight_layout()
  fig.text(0.5, -0.01, f"dots: single nets ({config.seeds} seeds per variant and rate); lines: "
           "geometric means; dotted: the lowest rate, shaded: the rate the studies use",
           ha="center", va="top", fontsize=7.5, color="0.35")
  return {"rows": rows, "net_rows": net_rows, "contrasts": {}, "curves": {}, "chosen": chosen,
          "figure": fig}


# name -> (the grids of a config, the analysis).
REGISTRY = {"degradation": (grids, _degradation), "dead_units": (grids, _dead_units),
            "collapse": (grids, _collapse), "bottleneck": (grids, _bottleneck),
            "convergence": (grids, _convergence), "redundancy": (grids, _redundancy),
            "pilot": (grids, _pilot)}
STUDIES = tuple(REGISTRY)
