"""From training workdirs to probe tables, figures and a report.

`analyze(workdir, compare=...)` restores each run's checkpoint on whatever
devices are present, probes it on the run's own training split (or `split=
'test'`; `resjax.probes.run`) and writes one result set (`files.result_set`:
a reader sees the old set or the new one, never a mix) into `out`, by default
`workdir/analysis/step_<N>/` for checkpoint step N:

  probes.csv            one row per layer and run (kind: activation, block, weights)
  probes.json           the same plus per-unit lists and the run summaries
  units.png             dead / dormant fraction, active-fraction spread and
                        linear-region fraction per layer (C4, C7)
  effective_rank.png    participation ratio and entropy effective rank before
                        and after the activation (C3)
  gradients.png         gradient norm per weight layer with 95% intervals (C4)
  energy.png            shortcut share of the block energy per block (C5)
  conditions.csv        grid runs: per condition, mean and interval over seeds
  report.md             the figures and, in numbers, what they show per claim

Runs compared in one figure share a dataset and a model family (refused
otherwise); their layers are aligned by name, so nets of different depth put
each layer on its own tick (report.md says what was aligned).

`write(out_dir, runs)` redraws everything from the runs' JSON form, so the
figures can be regenerated from probes.json without restoring anything.
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Callable, Sequence

import matplotlib
import numpy as np

from resjax import checkpoints, errors, files, grid, locking, probes, stats, train

FIGURES = {
    "units": "units.png",
    "rank": "effective_rank.png",
    "gradients": "gradients.png",
    "energy": "energy.png",
}


# ----------------------------------------------------------------------------
# Restoring and probing.


def describe(config) -> str:
  """A short model name from a training config: 'resnet-20', 'plain-20', ..."""
  m = config.model
  if m.name == "resnet":
    kind = "plain" if m.get("plain") else ("preact-resnet" if m.get("preact") else "resnet")
    return f"{kind}-{m.get('depth', 20)}"
  if m.name == "mlp":
    kind = "residual-mlp" if m.get("residual") else "mlp"
    return f"{kind}-{m.get('depth', 4)}x{m.get('width', 64)}"
  if m.name == "invres":
    shortcut = "" if m.get("shortcut", True) else ", no shortcut"
    return f"invres ({m.get('bottleneck', 'linear')} bottleneck{shortcut})"
  return str(m.name)


def _check_workdir(path: str) -> str:
  errors.check(bool(path), "--workdir is required: pass --workdir=DIR of a training run")
  full = os.path.abspath(os.path.expanduser(path))
  problem = "is a file" if os.path.isfile(full) else "does not exist"
  errors.check(os.path.isdir(full), f"workdir {full} {problem}; pass the --workdir of "
               "a training run (python -m launch.train ... --workdir=DIR)")
  return full


def _labels(dirs: Sequence[str]) -> list[str]:
  """Run names: the workdirs' base names, made unique."""
  labels = []
  for d in dirs:
    base = os.path.basename(os.path.normpath(d)) or d
    label, k = base, 2
    while label in labels:
      label, k = f"{base}-{k}", k + 1
    labels.append(label)
  return labels


def _dataset_of(config) -> dict:
  """What makes two runs' data the same dataset: the name and generator options
  (not the batch, augmentation, normalization, data seed or location)."""
  return {f"data.{k}": v for k, v in config.data.to_dict().items()
          if k not in ("batch_size", "augment", "pad", "flip", "normalize", "seed", "data_dir")}


def _check_comparable(entries: Sequence[dict]) -> None:
  """Refuses runs of different datasets or model families in one analysis."""
  first = entries[0]
  for entry in entries[1:]:
    for what, of in (("datasets", _dataset_of),
                     ("model families", lambda c: {"model.name": c.model.name})):
      a, b = of(first["config"]), of(entry["config"])
      if a != b:
        show = lambda d: ", ".join(f"{k}={v}" for k, v in sorted(d.items()))  # noqa: E731
        raise errors.ConfigError(
            f"cannot compare runs of different {what}: {first['dir']} has {show(a)}, "
            f"{entry['dir']} has {show(b)}; --compare runs of one dataset and model family")


def _output_dir(out: str | None, workdir: str, step: int) -> str:
  """The analysis folder, created; a ConfigError suggesting --out if it cannot be."""
  path = (files.workdir_path(out) if out
          else os.path.join(workdir, "analysis", f"step_{step}"))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise errors.ConfigError(f"cannot write the analysis to {path} ({e.strerror}); "
                             "pass --out=DIR, a writable directory") from None
  errors.check(os.access(path, os.W_OK | os.X_OK), f"cannot write the analysis to {path} "
               "(not writable); pass --out=DIR, a writable directory")
  return path


def analyze(workdir: str, *, step: int | None = None, compare: Sequence[str] = (),
            split: str = "train", out: str | None = None,
            batch_size: int = 256, dormant_threshold: float = 0.1, grad_batches: int = 8,
            grad_batch_size: int = 64, max_examples: int | None = None,
            command: str | None = None, say: Callable[[str], None] = print) -> dict:
  """Probes the run in `workdir` (and the `compare` runs) on their `split`.

  `step` picks the checkpoint of every run (default: each run's latest). The
  results go to `out` (default: workdir/analysis/step_<N>, N the step of the
  checkpoint of `workdir`), locked while they are written and written as one
  set. Returns {'dir': output folder, 'files': written paths, 'runs': [...]}.
  """
  probes.check_args(split=split, batch_size=batch_size, dormant_threshold=dormant_threshold,
                    grad_batches=grad_batches, grad_batch_size=grad_batch_size,
                    max_examples=max_examples)
  dirs = [_check_workdir(d) for d in (workdir, *compare)]
  errors.check(len(set(dirs)) == len(dirs), "--compare names a workdir twice; "
               "pass each run once")
  entries = _restore(dirs, step)  # fail fast on any bad run
  _check_comparable(entries)
  out_dir = _output_dir(out, dirs[0], int(np.asarray(entries[0]["state"].step)))
  with locking.workdir_lock(out_dir, fix="wait for it to finish or pass another --out",
                            say=say):
    return _probe_and_write(out_dir, entries, split=split, batch_size=batch_size,
                            dormant_threshold=dormant_threshold, grad_batches=grad_batches,
                            grad_batch_size=grad_batch_size, max_examples=max_examples,
                            command=command, say=say)


def _restore(dirs: Sequence[str], step: int | None) -> list[dict]:
  """One entry per net to probe: a run, or each net of a grid run (its own
  config and state, `checkpoints.load(d, net=k)`), labelled and with its
  condition (the grid's axes but the seed)."""
  entries = []
  for label, d in zip(_labels(dirs), dirs):
    config, state = checkpoints.load(d, step)
    if not grid.is_grid(config):
      entries.append({"label": label, "dir": d, "config": config, "state": state})
      continue
    del state
    for k, net_label in enumerate(grid.labels(config)):
      net_config, net_state = checkpoints.load(d, step, net=k)
      entries.append({"label": f"{label}/net{k}", "dir": d, "config": net_config,
                      "state": net_state, "grid": label,
                      "condition": grid.condition_name(net_label),
                      "seed": int(net_config.seed)})
  return entries


# Per-net numbers summarized per condition of a grid: (claim_numbers key, kind).
CONDITION_NUMBERS = (("accuracy", "mean"), ("dead_pct", "fraction"),
                     ("dormant_pct", "fraction"), ("linear_max", "mean"),
                     ("retention", "mean"), ("shortcut_frac", "mean"), ("grad_ratio", "geo"))


def condition_rows(runs: Sequence[dict]) -> list[dict]:
  """For the nets of grid runs: one row per (grid, condition), each number of
  CONDITION_NUMBERS as mean and 95% interval over the seeds (fractions of units:
  seeds as clusters, `stats.cluster_wilson`; ratios: geometric means)."""
  groups: dict[tuple, list[dict]] = {}
  for run in runs:
    if "condition" in run:
      groups.setdefault((run["grid"], run["condition"]), []).append(run)
  out = []
  for (grid_label, cond), members in groups.items():
    numbers = [claim_numbers(r) for r in members]
    row = {"grid": grid_label, "condition": cond, "seeds": len(members)}
    for key, kind in CONDITION_NUMBERS:
      v = np.asarray([np.nan if c.get(key) is None else c[key] for c in numbers], np.float64)
      if not np.isfinite(v).any():
        continue
      if kind == "fraction":
        m, lo, hi = (100.0 * x for x in stats.cluster_wilson(v / 100.0,
                                                             size=numbers[0]["units"]))
      elif kind == "geo":
        m, lo, hi = stats.geo_mean_ci(v)
      else:
        m, lo, hi = stats.mean_ci(v)
      row.update({key: m, f"{key}_lo": lo, f"{key}_hi": hi})
    out.append(row)
  return out


def condition_table(rows: Sequence[dict]) -> str:
  """The per-condition numbers as text: mean [95% interval] over the seeds."""
  def cell(r, key, fmt):
    if key not in r:
      return "-"
    return f"{format(r[key], fmt)} [{format(r[key + '_lo'], fmt)}, {format(r[key + '_hi'], fmt)}]"
  lines = ["condition | seeds | accuracy | dead % | shortcut energy | grad first/last (geo)"]
  for r in rows:
    lines.append(f"{r['grid']} {r['condition']} | {r['seeds']} | {cell(r, 'accuracy', '.3f')} | "
                 f"{cell(r, 'dead_pct', '.1f')} | {cell(r, 'shortcut_frac', '.3f')} | "
                 f"{cell(r, 'grad_ratio', '.3g')}")
  return "\n".join(lines)


def _probe_and_write(out_dir: str, entries: Sequence[dict], *, split: str, batch_size: int,
                     dormant_threshold: float, grad_batches: int, grad_batch_size: int,
                     max_examples: int | None, command: str | None,
                     say: Callable[[str], None]) -> dict:
  datasets: dict[str, Any] = {}
  runs = []
  for entry in entries:
    label, d, config, state = entry["label"], entry["dir"], entry["config"], entry["state"]
    key = json.dumps({k: v for k, v in config.data.to_dict().items()
                      if k not in ("batch_size", "augment", "pad", "flip")},
                     sort_keys=True, default=str)
    if key not in datasets:  # the run's own data, as its trainer loaded it
      datasets[key] = train.load_data(config)
    ds = datasets[key]
    at = int(np.asarray(state.step))
    part = len(getattr(ds, split))
    n = part if max_examples is None else min(part, max_examples)
    say(f"probing {label}: {describe(config)} at step {at} on {ds.name} "
        f"({n} {split} examples)")
    res = probes.run(state, None, ds, split=split, batch_size=batch_size,
                     dormant_threshold=dormant_threshold, grad_batches=grad_batches,
                     grad_batch_size=grad_batch_size, max_examples=max_examples, progress=say)
    say(res.table())
    runs.append({"run": label, "workdir": d, "step": at, "model": describe(config),
                 "dataset": ds.name, "split": split,
                 **{k: entry[k] for k in ("grid", "condition", "seed") if k in entry},
                 **_jsonable(res.to_dict())})
  # Figures: every run, but only the first seed of each condition of a grid.
  shown = [r for r in runs if "condition" not in r or r["seed"] == min(
      x["seed"] for x in runs if x.get("condition") == r["condition"]
      and x.get("grid") == r["grid"])]
  note = alignment_note(shown)
  if note:
    say(f"the figures align {note}")
  conditions = condition_rows(runs)
  written = write(out_dir, runs, command=command, figure_runs=shown, conditions=conditions)
  say(summary_table(runs))
  if conditions:
    say(condition_table(conditions))
  say(f"analysis written to {out_dir}: {', '.join(os.path.basename(p) for p in written)}")
  return {"dir": out_dir, "files": written, "runs": runs, "conditions": conditions}


def _jsonable(obj: Any) -> Any:
  """Floats that JSON can hold (NaN -> None), NumPy scalars to Python."""
  if isinstance(obj, dict):
    return {k: _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, (np.floating, float)):
    return None if not math.isfinite(float(obj)) else float(obj)
  if isinstance(obj, np.integer):
    return int(obj)
  if isinstance(obj, np.bool_):
    return bool(obj)
  return obj


# ----------------------------------------------------------------------------
# Tables.

def rows(runs: Sequence[dict]) -> list[dict]:
  """probes.csv rows: one per layer (activation), block and weight layer, per run."""
  out = []
  for run in runs:
    out += probes.table_rows(run, run=run["run"], model=run["model"], step=run["step"])
  return out


def _fmt(v: Any, digits: int = 4) -> str:
  if v is None:
    return "n/a"
  if isinstance(v, float):
    return f"{v:.{digits}f}"
  return str(v)


def claim_numbers(run: dict) -> dict:
  """The per-run aggregates the report states (all derived from the CSV columns)."""
  layers, blocks, weights = run["layers"], run["blocks"], run["weights"]
  units = sum(r["units"] for r in layers)
  dead = sum(r["dead"] for r in layers)
  dormant = sum(r["dormant"] for r in layers)
  linear = [r["linear_frac"] or 0.0 for r in layers]
  out = {
      "accuracy": run["summary"]["accuracy"],
      "layers": len(layers),
      "units": units,
      "dead": dead,
      "dead_pct": 100.0 * dead / max(units, 1),
      "dormant": dormant,
      "dormant_pct": 100.0 * dormant / max(units, 1),
      "worst_layer": max(layers, key=lambda r: r["dead_frac"])["layer"] if layers else None,
      "worst_dead_frac": max((r["dead_frac"] for r in layers), default=0.0),
      "active_mean": float(np.mean([r["active_mean"] for r in layers])),
      "active_std": float(np.mean([r["active_std"] for r in layers])),
      "linear_layers": sum(v > 0 for v in linear),
      "linear_max": max(linear, default=0.0),
      "linear_max_layer": layers[int(np.argmax(linear))]["layer"] if layers else None,
      "linear_position_mean": float(np.mean([r["linear_frac_position"] for r in layers])),
      "participation_pre": float(np.mean([r["participation_pre"] for r in layers])),
      "participation_post": float(np.mean([r["participation_post"] for r in layers])),
      "entropy_rank_pre": float(np.mean([r["entropy_rank_pre"] for r in layers])),
      "entropy_rank_post": float(np.mean([r["entropy_rank_post"] for r in layers])),
  }
  # Redundancy and retention from the participation ratio (the entropy rank: *_entropy).
  for suffix, key in (("", "participation"), ("_entropy", "entropy_rank")):
    kept = [r for r in layers if r[f"{key}_pre"] > 0]
    redundancy = [r["units"] / r[f"{key}_pre"] for r in kept]
    retention = [r[f"{key}_post"] / r[f"{key}_pre"] for r in kept]
    out[f"retention{suffix}"] = float(np.mean(retention)) if retention else None
    out[f"rank_corr{suffix}"] = _spearman(redundancy, retention)
  with_shortcut = [b for b in blocks if b["has_shortcut"]]
  out["blocks"] = len(blocks)
  out["shortcut_blocks"] = len(with_shortcut)
  out["shortcut_frac"] = (float(np.mean([b["shortcut_frac"] for b in with_shortcut]))
                          if with_shortcut else 0.0)
  if weights:
    g = [w["grad_norm"] for w in weights]
    out["grad_first"], out["grad_last"] = g[0], g[-1]
    out["grad_ratio"] = g[0] / g[-1] if g[-1] > 0 else None
    out["grad_min"], out["grad_max"] = min(g), max(g)
    out["grad_spread"] = math.log10(max(g) / min(g)) if min(g) > 0 else None
  return out


def _spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
  if len(a) < 3:
    return None
  ra = np.argsort(np.argsort(a)).astype(float)
  rb = np.argsort(np.argsort(b)).astype(float)
  if ra.std() == 0 or rb.std() == 0:
    return None
  return float(np.corrcoef(ra, rb)[0, 1])


def summary_table(runs: Sequence[dict]) -> str:
  """One line per run: the numbers behind each claim."""
  head = (f"{'run':<18} {'model':<18} {'step':>6} {'acc':>6} {'dead':>11} {'dormant':>8} "
          f"{'linear':>7} {'PR pre>post':>13} {'shortcut':>8} {'grad 1st/last':>13}")
  lines = [head, "-" * len(head)]
  for run in runs:
    c = claim_numbers(run)
    ratio = _fmt(c.get("grad_ratio"), 3)
    lines.append(
        f"{run['run'][:18]:<18} {run['model'][:18]:<18} {run['step']:>6} {c['accuracy']:>6.3f} "
        f"{c['dead']:>4}/{c['units']:<4}  {c['dormant_pct']:>7.1f}% {c['linear_max']:>7.3f} "
        f"{c['participation_pre']:>6.2f}>{c['participation_post']:<6.2f} "
        f"{c['shortcut_frac']:>8.3f} "
        f"{ratio:>13}")
  return "\n".join(lines)


# ----------------------------------------------------------------------------
# Figures.


# Paper-sized text and a light grid; applied while each figure is built.
RC = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "xtick.labelsize": 7, "ytick.labelsize": 8, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linewidth": 0.5, "lines.linewidth": 1.5, "lines.markersize": 4,
}


def _figure(figsize, rows=1):
  """A pyplot-free figure (no GUI backend, nothing to close) and its axes."""
  from matplotlib.figure import Figure
  fig = Figure(figsize=figsize)
  return fig, fig.subplots(rows, 1, sharex=rows > 1)


def _colors(n: int) -> list:
  palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf",
             "#7f7f7f"]
  return [palette[i % len(palette)] for i in range(n)]


def _label(run: dict) -> str:
  return run["run"] if run["run"] == run["model"] else f"{run['run']} ({run['model']})"


def display_name(name: str) -> str:
  """A layer name as every figure writes it: the probes' 'stage1/block0/...' form.

  Weight layers are module paths ('stage1_block0/conv1'); their block part is
  rewritten to the probe names' 'stage1/block0'.
  """
  return re.sub(r"\b(stage\d+)_(block\d+)\b", r"\1/\2", name)


def _layer_ticks(ax, names: Sequence[str]) -> None:
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels([display_name(n) for n in names], rotation=90)
  ax.set_xlim(-0.5, len(names) - 0.5)


def _merged(lists: Sequence[Sequence[str]]) -> list[str]:
  """One forward order holding every name: each list's names in its own order,
  a name absent so far placed after the last name the list shares."""
  order: list[str] = []
  for names in lists:
    at = 0
    for name in names:
      if name in order:
        at = order.index(name) + 1
      else:
        order.insert(at, name)
        at += 1
  return order


def _aligned(runs: Sequence[dict], group: str, key: str) -> tuple[list[str], list[np.ndarray]]:
  """The merged names of `group` and, per run, the tick of each of its entries."""
  lists = [[r[key] for r in run[group]] for run in runs]
  names = _merged(lists)
  where = {n: i for i, n in enumerate(names)}
  return names, [np.asarray([where[n] for n in l], np.float64) for l in lists]


def alignment_note(runs: Sequence[dict]) -> str | None:
  """What the figures aligned by name, when the runs' layers differ (else None)."""
  if len(runs) < 2:
    return None
  parts = []
  for group, key, what in (("layers", "layer", "activation layers"),
                           ("blocks", "block", "blocks"), ("weights", "layer", "weight layers")):
    lists = [[r[key] for r in run[group]] for run in runs]
    if all(l == lists[0] for l in lists):
      continue
    shared = set.intersection(*map(set, lists))
    only = [f"{run['run']} {len(set(l) - shared)}" for run, l in zip(runs, lists)
            if set(l) - shared]
    parts.append(f"{what} by name ({len(shared)} in every run; only in {', '.join(only)})")
  return "; ".join(parts) or None


def split_of(run: dict) -> str:
  """The split a run was probed on (probes.json of earlier releases: the test split)."""
  return run.get("split") or run["summary"].get("split") or "test"


def _title(runs: Sequence[dict]) -> str:
  steps = sorted({r["step"] for r in runs})
  data = sorted({r["dataset"] for r in runs})
  splits = sorted({split_of(r) for r in runs})
  at = f"step {steps[0]}" if len(steps) == 1 else "steps " + ", ".join(map(str, steps))
  return (f"{' vs '.join(r['model'] for r in runs)} on {', '.join(data)} "
          f"{'/'.join(splits)} set ({at})")


def _style_legend(ax, styles: Sequence[tuple[str, str, str]], extra: Sequence = (),
                  **kwargs) -> None:
  """A legend of line styles (in black), independent of the run colours.

  By default it sits above the axes at the right, beside the left-aligned
  title, where it cannot cover the data.
  """
  from matplotlib.lines import Line2D
  handles = [Line2D([], [], color="0.2", linestyle=ls, marker=mk,
                    markerfacecolor="0.2" if ls == "-" else "none", label=label)
             for label, ls, mk in styles]
  kwargs = {"loc": "lower right", "bbox_to_anchor": (1.0, 0.98), "ncol": len(styles)
            + len(extra), "borderaxespad": 0.0, "fontsize": 7.5, **kwargs}
  ax.add_artist(ax.legend(handles=handles + list(extra), frameon=False, **kwargs))


def _run_handles(runs: Sequence[dict], colors: Sequence) -> list:
  from matplotlib.lines import Line2D
  return [Line2D([], [], color=c, linewidth=2.5, label=_label(r)) for r, c in zip(runs, colors)]


def _run_legend(fig, runs: Sequence[dict], colors: Sequence, y: float = 0.965) -> None:
  """One legend for the whole figure: which colour is which run."""
  fig.legend(handles=_run_handles(runs, colors), loc="upper center",
             ncol=min(len(runs), 4), frameon=False, bbox_to_anchor=(0.5, y))


def _side_legend(ax, handles) -> None:
  """A legend right of the axes, where it cannot cover the data."""
  ax.legend(handles=handles, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _has_linear_region(runs: Sequence[dict]) -> bool:
  """Whether any layer of any run passes every unit for some input or position."""
  return any((r["linear_frac"] or 0.0) > 0 or (r["linear_frac_position"] or 0.0) > 0
             for run in runs for r in run["layers"])


def _has_positions(runs: Sequence[dict]) -> bool:
  """Whether any layer has spatial positions (convolutions); MLP layers have one."""
  return any(r.get("positions", 1) > 1 for run in runs for r in run["layers"])


def _has_dense(runs: Sequence[dict]) -> bool:
  return any(r.get("positions", 1) <= 1 for run in runs for r in run["layers"])


def plot_units(runs: Sequence[dict]):
  """Dead/dormant fraction, active-fraction spread and linear-region fraction per layer.

  Panel (c), the linear-region fraction, is per input for dense layers (o) and
  per (input, position) for conv layers (^: all channels on duty at a
  position); it is drawn only where some layer has a linear region, otherwise
  a line under the figure says that it is 0 everywhere.
  """
  from matplotlib.patches import Patch
  linear = _has_linear_region(runs)
  names, xs = _aligned(runs, "layers", "layer")
  with matplotlib.rc_context(RC):
    fig, axes = _figure((7.5, 8.6 if linear else 6.4), rows=3 if linear else 2)
    colors = _colors(len(runs))
    threshold = runs[0]["summary"]["dormant_threshold"]
    for run, color, x in zip(runs, colors, xs):
      layers = run["layers"]
      axes[0].plot(x, [r["dead_frac"] for r in layers], "o-", color=color)
      axes[0].plot(x, [r["dormant_frac"] for r in layers], "s--", color=color,
                   markerfacecolor="none")
      axes[1].fill_between(x, [r["active_p025"] for r in layers],
                           [r["active_p975"] for r in layers], color=color, alpha=0.18,
                           linewidth=0)
      axes[1].plot(x, [r["active_mean"] for r in layers], "o-", color=color)
      axes[1].plot(x, [r["active_min"] for r in layers], ":", color=color, linewidth=1)
      axes[1].plot(x, [r["active_max"] for r in layers], ":", color=color, linewidth=1)
      if linear:
        y = np.asarray([r["linear_frac"] or 0.0 for r in layers])
        conv = np.asarray([r.get("positions", 1) > 1 for r in layers])
        axes[2].plot(x, y, "-", color=color)
        for mask, marker in ((~conv, "o"), (conv, "^")):
          if mask.any():
            axes[2].plot(x[mask], y[mask], marker, color=color, linestyle="none")
    axes[0].set_ylabel("fraction of units")
    axes[0].set_title("(a) dead units (never on duty) and dormant units", loc="left")
    top = max([r["dead_frac"] for run in runs for r in run["layers"]]
              + [r["dormant_frac"] for run in runs for r in run["layers"]] + [0.0])
    axes[0].set_ylim(-0.02 * max(top, 0.05), 1.1 * max(top, 0.05))
    _style_legend(axes[0], [("dead", "-", "o"),
                            (f"dormant (ReDo score $\\leq$ {threshold:g})", "--", "s")])
    axes[1].set_ylabel("active fraction per input")
    axes[1].set_title("(b) share of a layer's neurons on duty per input", loc="left")
    axes[1].axhline(0.5, color="0.5", linewidth=0.8, linestyle="--")
    axes[1].set_ylim(0, 1)
    _style_legend(axes[1], [("mean", "-", "o"), ("min / max", ":", "")],
                  extra=[Patch(facecolor="0.2", alpha=0.18, label="2.5-97.5%")])
    if linear:
      axes[2].set_ylabel("linear-region fraction")
      axes[2].set_title("(c) every unit on duty: the layer acts linearly (C7)", loc="left")
      top = max(r["linear_frac"] or 0.0 for run in runs for r in run["layers"])
      top = min(1.0, max(top, 0.05))
      axes[2].set_ylim(-0.02 * top, 1.1 * top)
      styles = []
      if _has_dense(runs):
        styles.append(("per input", "-", "o"))
      if _has_positions(runs):
        styles.append(("per (input, position)", "-", "^"))
      _style_legend(axes[2], styles)
    _layer_ticks(axes[-1], names)
    axes[-1].set_xlabel("activation layer (forward order)")
    fig.suptitle(_title(runs), fontsize=10, y=0.995)
    _run_legend(fig, runs, colors, y=0.965 if linear else 0.955)
    fig.tight_layout(rect=(0, 0.03 if not linear else 0, 1, 0.95 if linear else 0.935))
    if not linear:
      where = "input or position" if _has_positions(runs) else "input"
      fig.text(0.01, 0.005, "(c) linear-region fraction (C7) not drawn: 0 in every layer; "
               f"no {where} puts every unit of a layer on duty.", fontsize=8,
               color="0.3", ha="left", va="bottom")
  return fig


def plot_rank(runs: Sequence[dict]):
  """Participation ratio (a) and entropy effective rank (b) of the features
  before and after the activation, per layer, beside the layer width."""
  import matplotlib.ticker as mticker
  from matplotlib.lines import Line2D
  names, xs = _aligned(runs, "layers", "layer")
  width = {}
  for run in runs:
    for r in run["layers"]:
      width.setdefault(r["layer"], r["units"])
  with matplotlib.rc_context(RC):
    fig, axes = _figure((9.5, 6.8), rows=2)
    colors = _colors(len(runs))
    panels = (("participation", "(a) participation ratio $(\\sum\\lambda)^2 / \\sum\\lambda^2$"),
              ("entropy_rank", "(b) entropy effective rank $\\exp(-\\sum p \\log p)$, "
               "$p = \\lambda / \\sum\\lambda$ (Roy & Vetterli)"))
    for ax, (key, title) in zip(axes, panels):
      for run, color, x in zip(runs, colors, xs):
        layers = run["layers"]
        ax.plot(x, [r[f"{key}_pre"] for r in layers], "o-", color=color)
        ax.plot(x, [r[f"{key}_post"] for r in layers], "s--", color=color,
                markerfacecolor="none")
      ax.step(np.arange(len(names)), [width[n] for n in names], where="mid", color="0.55",
              linewidth=1)
      ax.set_yscale("log", base=2)
      ax.yaxis.set_major_locator(mticker.LogLocator(base=2))
      ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
      ax.set_ylabel("rank")
      ax.set_title(title, loc="left")
    values = [r[f"{k}_{w}"] for run in runs for r in run["layers"]
              for k in ("participation", "entropy_rank") for w in ("pre", "post")]
    values = [v for v in values if v and v > 0] + list(width.values())
    for ax in axes:  # one scale for both measures
      ax.set_ylim(min(values) / 1.15, max(values) * 1.15)
    axes[-1].set_xlabel("activation layer (forward order)")
    _layer_ticks(axes[-1], names)
    handles = _run_handles(runs, colors)
    handles += [Line2D([], [], color="0.55", linewidth=1, label="layer width"),
                Line2D([], [], color="0.2", marker="o", label="before the activation"),
                Line2D([], [], color="0.2", linestyle="--", marker="s",
                       markerfacecolor="none", label="after the activation")]
    _side_legend(axes[0], handles)
    fig.suptitle(f"Effective rank of the channel covariance, eigenvalues $\\lambda$ (C3)\n"
                 f"{_title(runs)}", fontsize=10)
    fig.tight_layout()
  return fig


def plot_gradients(runs: Sequence[dict]):
  """Loss-gradient norm per weight layer (geometric mean, 95% interval)."""
  names, xs = _aligned(runs, "weights", "layer")
  with matplotlib.rc_context(RC):
    fig, ax = _figure((9.5, 4.0))
    n_batches = 0
    drawn = []
    for run, color, x in zip(runs, _colors(len(runs)), xs):
      w = run["weights"]
      if not w:
        continue
      n_batches = max(n_batches, w[0]["grad_batches"])
      bound = lambda key: np.asarray([np.nan if r[key] is None else r[key] for r in w],  # noqa: E731
                                     np.float64)  # None: one batch, no interval
      ax.fill_between(x, bound("grad_norm_lo"), bound("grad_norm_hi"),
                      color=color, alpha=0.18, linewidth=0)
      ax.plot(x, [r["grad_norm"] for r in w], "o-", color=color)
      drawn.append((run, color))
    ax.set_yscale("log")
    ax.set_ylabel(r"$\|\partial L / \partial W\|$")
    ax.set_xlabel("weight layer (forward order)")
    _layer_ticks(ax, names)
    _side_legend(ax, _run_handles([r for r, _ in drawn], [c for _, c in drawn]))
    bn = ("BatchNorm on each batch's statistics, as in training\n"
          if any(r["summary"].get("batch_norm") for r, _ in drawn) else "")
    ax.set_title(f"Gradient norm per layer (geometric mean over {n_batches} batches; "
                 f"band: 95% interval)\n{bn}{_title(runs)}")
    fig.tight_layout()
  return fig


def plot_energy(runs: Sequence[dict]):
  """Share of the block-output energy carried by the shortcut, per block.

  Runs without shortcuts are named in the legend (their branch carries 100%);
  when no run has shortcuts, their blocks are drawn as branch-only bars.
  """
  from matplotlib.patches import Patch
  names, xs = _aligned(runs, "blocks", "block")
  with matplotlib.rc_context(RC):
    fig, ax = _figure((9.5, 3.8))
    colors = _colors(len(runs))
    residual = [i for i, r in enumerate(runs) if any(b["has_shortcut"] for b in r["blocks"])]
    plain = [i for i, r in enumerate(runs) if r["blocks"] and i not in residual]
    shown = residual or plain
    width = 0.8 / max(len(shown), 1)
    for k, i in enumerate(shown):
      blocks = runs[i]["blocks"]
      x = xs[i] + (k - (len(shown) - 1) / 2) * width
      if residual:
        ax.bar(x, [b["shortcut_frac"] or 0.0 for b in blocks], width=width * 0.92,
               color=colors[i], alpha=0.85)
      else:  # no shortcut anywhere: the branch carries everything
        ax.bar(x, np.ones(len(blocks)), width=width * 0.92, facecolor="white",
               edgecolor=colors[i], hatch="///", linewidth=0.6)
    ax.axhline(0.5, color="0.5", linewidth=0.8, linestyle="--")
    ax.set_ylim(0, 1.0)
    ax.set_ylabel(r"shortcut share $\|s\|^2 / (\|s\|^2 + \|b\|^2)$")
    ax.set_xlabel("block (forward order)")
    _layer_ticks(ax, names)
    handles = _run_handles([runs[i] for i in shown], [colors[i] for i in shown])
    if not residual:
      handles.append(Patch(facecolor="white", edgecolor="0.35", hatch="///",
                           label="no shortcuts (branch: 100%)"))
    handles += [Patch(facecolor="none", edgecolor="none",
                      label=f"{_label(runs[i])}: no shortcuts (branch: 100%)")
                for i in plain if residual]
    _side_legend(ax, handles)
    ax.set_title(f"Block output s + b: energy in the shortcut s vs the branch b (C5)\n"
                 f"{_title(runs)}")
    fig.tight_layout()
  return fig


# ----------------------------------------------------------------------------
# The report.


def _compare_sentence(runs: Sequence[dict], numbers: dict, key: str, what: str,
                      digits: int = 1, unit: str = "") -> str:
  parts = [f"{r['run']} {_fmt(numbers[r['run']].get(key), digits)}{unit}" for r in runs]
  return f"{what}: " + ", ".join(parts) + "."


def _batch_norm_sentence(runs: Sequence[dict]) -> str:
  """Which BatchNorm statistics each probe used, from the runs' summaries."""
  with_bn = [r["run"] for r in runs if r["summary"].get("batch_norm")]
  if not any("batch_norm" in r["summary"] for r in runs):
    return "BatchNorm mode: not recorded (probes.json of an earlier release)."
  if not with_bn:
    return "No run has BatchNorm layers."
  sizes = sorted({r["summary"].get("grad_batch_size") for r in runs
                  if r["summary"].get("grad_batch_size")})
  grad = (f"the gradient norms run it in training mode, on the statistics of each gradient "
          f"batch of {'/'.join(map(str, sizes))} examples, as the optimizer saw it"
          if sizes else "no gradient norms were taken")
  which = "" if len(with_bn) == len(runs) else f" ({', '.join(with_bn)})"
  return ("BatchNorm" + which + ": every activation statistic (dead, dormant, active and "
          "linear-region fractions, ranks, block energy) runs the net in eval mode, on its "
          "running averages, so each input is probed on its own as the trained net "
          f"classifies it; {grad}.")


def report_markdown(runs: Sequence[dict], command: str | None = None) -> str:
  """report.md: the figures and what they show about C4, C5, C7 and C3, in numbers."""
  num = {r["run"]: claim_numbers(r) for r in runs}
  residual = [r for r in runs if num[r["run"]]["shortcut_blocks"] > 0]
  plain = [r for r in runs if num[r["run"]]["shortcut_blocks"] == 0]
  threshold = runs[0]["summary"]["dormant_threshold"]
  md = [f"# Probes: {_title(runs)}", ""]
  if command:
    md += ["Regenerate with:", "", "```bash", command, "```", ""]
  split = "/".join(sorted({split_of(r) for r in runs}))
  md += [f"| run | model | workdir | step | {split} examples | accuracy | loss |",
         "|---|---|---|---|---|---|---|"]
  for r in runs:
    s = r["summary"]
    md.append(f"| {r['run']} | {r['model']} | `{r['workdir']}` | {r['step']} | "
              f"{s['examples']} | {_fmt(s['accuracy'])} | {_fmt(s['loss'])} |")
  md += ["", f"All numbers below are computed over the whole {split} split, without "
         "augmentation, and appear in `probes.csv` (one row per layer and run).", ""]
  md += [_batch_norm_sentence(runs), ""]
  note = alignment_note(runs)
  if note:
    md += [f"The figures align {note}: each layer sits on its own tick.", ""]

  md += ["## C4: dead units stop learning; gradients vanish in plain nets", ""]
  for r in runs:
    c = num[r["run"]]
    worst = (f"the worst layer is `{c['worst_layer']}` with dead fraction "
             f"{c['worst_dead_frac']:.4f}" if c["dead"] else "no layer has a dead unit")
    line = (f"- **{r['run']}** ({r['model']}): {c['dead']} of {c['units']} units dead "
            f"({c['dead_pct']:.2f}%) across {c['layers']} activation layers; {worst}. "
            f"Dormant (ReDo score <= {threshold:g}): {c['dormant']} units "
            f"({c['dormant_pct']:.2f}%).")
    if "grad_ratio" in c:
      line += (f" Gradient norm: first weight layer {c['grad_first']:.4g}, last "
               f"{c['grad_last']:.4g} (ratio {_fmt(c['grad_ratio'], 4)}); across layers it "
               f"spans {_fmt(c['grad_spread'], 2)} orders of magnitude.")
    md.append(line)
  if plain and residual:
    p, q = plain[0]["run"], residual[0]["run"]
    dp, dq = num[p]["dead"], num[q]["dead"]
    if dp > dq:
      verdict = f"{p} has more dead units than {q} ({dp} vs {dq}), as C4/C5 predict"
    elif dp == dq:
      verdict = f"{p} and {q} have the same number of dead units ({dp}); no separation here"
    else:
      verdict = f"{p} has fewer dead units than {q} ({dp} vs {dq}), against the C4/C5 prediction"
    md.append(f"- Plain vs residual: {verdict}.")
    rp, rq = num[p].get("grad_ratio"), num[q].get("grad_ratio")
    if rp is not None and rq is not None:
      smaller = "smaller" if rp < rq else "not smaller"
      md.append(f"- Gradient reaching the first layer relative to the last (first/last norm "
                f"ratio): {rp:.4f} in {p} vs {rq:.4f} in {q}, {smaller} in the plain net; "
                f"vanishing gradients in plain nets (C4) predict smaller.")
  md += ["", f"![units]({FIGURES['units']})", ""]
  if any(r["weights"] for r in runs):
    md += [f"![gradients]({FIGURES['gradients']})", ""]

  md += ["## C5: the shortcut carries the signal linearly", ""]
  for r in runs:
    c = num[r["run"]]
    if c["shortcut_blocks"]:
      md.append(f"- **{r['run']}**: in {c['shortcut_blocks']} of {c['blocks']} blocks the "
                f"shortcut carries on average {100 * c['shortcut_frac']:.1f}% of the block "
                f"energy (branch {100 * (1 - c['shortcut_frac']):.1f}%).")
    else:
      md.append(f"- **{r['run']}**: no shortcuts; the branch carries 100% of every block's "
                f"output ({c['blocks']} blocks).")
  if len(runs) > 1:
    md.append("- " + _compare_sentence(runs, num, "accuracy",
                                       f"Accuracy on the {split} split", 4))
    md.append("- " + _compare_sentence(runs, num, "dead_pct", "Dead units", 2, "%"))
    if all("grad_ratio" in num[r["run"]] for r in runs):
      md.append("- " + _compare_sentence(runs, num, "grad_ratio",
                                         "First/last layer gradient-norm ratio", 4))
  md.append("")
  if any(r["blocks"] for r in runs):
    md += [f"![energy]({FIGURES['energy']})", ""]

  md += ["## C7: a layer that lets everything through acts linearly", ""]
  for r in runs:
    c = num[r["run"]]
    conv = any(l.get("positions", 1) > 1 for l in r["layers"])
    unit = "(input, position) pairs" if conv else "inputs"
    if c["linear_layers"]:
      best = (f"{c['linear_layers']} of {c['layers']} layers pass every unit for some "
              f"{unit}; the highest linear-region fraction is {c['linear_max']:.4f} "
              f"(`{c['linear_max_layer']}`)")
    else:
      best = (f"none of the {c['layers']} layers passes every unit for any of its {unit} "
              f"(linear-region fraction 0)")
    line = f"- **{r['run']}**: {best}."
    if conv:
      whole = max((l.get("linear_frac_input") or 0.0) for l in r["layers"])
      line += (f" For conv layers the fraction is per (input, position), all channels on "
               f"duty at a position ({100 * c['linear_position_mean']:.2f}% of the pairs on "
               f"average over layers); every unit at every position at once is ~0 by "
               f"construction (highest over layers {whole:.4f}).")
    line += (f" A typical input turns on {100 * c['active_mean']:.1f}% of a layer's neurons "
             f"(spread across inputs: mean std {c['active_std']:.4f}).")
    md.append(line)
  md += ["", "See panel (c) of the units figure above.", ""]

  md += ["## C3: redundancy decides what the activation destroys", ""]
  for r in runs:
    c = num[r["run"]]
    corr = lambda v: "n/a (fewer than 3 layers)" if v is None else f"{v:.3f}"  # noqa: E731
    md.append(f"- **{r['run']}**: mean participation ratio {c['participation_pre']:.2f} "
              f"before and {c['participation_post']:.2f} after the activation (mean "
              f"retention, after / before, {_fmt(c['retention'], 3)}); mean entropy effective "
              f"rank {c['entropy_rank_pre']:.2f} before and {c['entropy_rank_post']:.2f} "
              f"after (retention {_fmt(c['retention_entropy'], 3)}). Spearman correlation "
              f"across layers between redundancy (units / rank before) and retention: "
              f"{corr(c['rank_corr'])} (participation ratio), "
              f"{corr(c['rank_corr_entropy'])} (entropy rank); C3 predicts it positive.")
  md += ["", f"![effective rank]({FIGURES['rank']})", ""]

  md += ["## Per-layer numbers", ""]
  for r in runs:
    md += [f"### {r['run']} ({r['model']})", "",
           "| layer | units | dead | dead frac | dormant frac | active mean | active 2.5% | "
           "active 97.5% | linear frac | PR pre | PR post | erank pre | erank post |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for l in r["layers"]:
      md.append(f"| {l['layer']} | {l['units']} | {l['dead']} | {_fmt(l['dead_frac'])} | "
                f"{_fmt(l['dormant_frac'])} | {_fmt(l['active_mean'])} | "
                f"{_fmt(l['active_p025'])} | {_fmt(l['active_p975'])} | "
                f"{_fmt(l['linear_frac'])} | {_fmt(l['participation_pre'])} | "
                f"{_fmt(l['participation_post'])} | {_fmt(l['entropy_rank_pre'])} | "
                f"{_fmt(l['entropy_rank_post'])} |")
    if r["blocks"]:
      md += ["", "| block | shortcut frac | cosine(s, b) |", "|---|---|---|"]
      for b in r["blocks"]:
        md.append(f"| {b['block']} | {_fmt(b['shortcut_frac'])} | {_fmt(b['cosine'])} |")
    if r["weights"]:
      md += ["", "| weight layer | grad norm | 95% low | 95% high | param norm |",
             "|---|---|---|---|---|"]
      for w in r["weights"]:
        g = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731  (None: one batch)
        md.append(f"| {w['layer']} | {g(w['grad_norm'])} | {g(w['grad_norm_lo'])} | "
                  f"{g(w['grad_norm_hi'])} | {g(w['param_norm'])} |")
    md.append("")
  md += ["## Definitions", "",
         "- *dead*: a unit (a channel for convolutions) whose pre-activation is outside "
         "the activation's invertible region (for ReLU: <= 0) for every input and every "
         "spatial position.",
         f"- *dormant* (ReDo): mean |activation| of a unit / mean over the layer's units "
         f"<= {threshold:g}.",
         "- *active fraction*: per input, the share of the layer's neurons (positions x "
         "channels) that are on duty. *Linear-region fraction*: the share of samples on "
         "which all of them are, a sample being an input for dense layers and an (input, "
         "position) pair, all channels on duty, for conv layers (`linear_frac`; per input "
         "for every layer: `linear_frac_input`, per pair: `linear_frac_position`).",
         "- *PR* (participation ratio): (sum of eigenvalues)^2 / sum of squared eigenvalues "
         "of the channel covariance, spatial positions pooled as samples; *erank* (entropy "
         "effective rank, Roy & Vetterli 2007): exp of the Shannon entropy of the "
         "eigenvalues divided by their sum. Both are k for k equal eigenvalues; PR <= erank.",
         f"- *shortcut share*: sum ||s||^2 / (sum ||s||^2 + sum ||b||^2) over the {split} "
         "inputs, for block output s + b.",
         "- *gradient norm*: ||dL/dW|| of each conv/dense kernel for the mean cross-entropy "
         "of a batch from the start of the split, BatchNorm (if any) in training mode; "
         "geometric mean and 95% t-interval over batches.", ""]
  return "\n".join(md)


def write(out_dir: str, runs: Sequence[dict], command: str | None = None,
          figure_runs: Sequence[dict] | None = None,
          conditions: Sequence[dict] = ()) -> list[str]:
  """Writes probes.csv, probes.json, the figures, conditions.csv (grid runs) and
  report.md into `out_dir` as one result set (`files.result_set`).

  The figures draw `figure_runs` (default: every run). Returns the paths of
  the files as readers see them, `out_dir/<name>`.
  """
  out_dir = files.ensure_workdir(out_dir)
  runs = _jsonable(list(runs))
  figure_runs = runs if figure_runs is None else _jsonable(list(figure_runs))
  names: list[str] = []
  with files.result_set(out_dir) as tmp:

    def path(name):
      names.append(name)
      return os.path.join(tmp, name)

    files.write_csv(path("probes.csv"), rows(runs))
    files.write_json(path("probes.json"), {"command": command, "runs": runs})
    for key, plot in (("units", plot_units), ("rank", plot_rank),
                      ("gradients", plot_gradients), ("energy", plot_energy)):
      if key == "energy" and not any(r["blocks"] for r in figure_runs):
        continue
      if key == "gradients" and not any(r["weights"] for r in figure_runs):
        continue
      written = files.save_figure(plot(figure_runs), os.path.join(tmp, FIGURES[key]), dpi=200)
      names.extend(os.path.basename(p) for p in written)
    if conditions:
      files.write_csv(path("conditions.csv"), list(conditions))
    files.write_text(path("report.md"), report_markdown(runs, command))
  return [os.path.join(out_dir, n) for n in names]
