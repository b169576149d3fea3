"""The analysis tables, from probed runs alone (the runs of probes.json).

`rows` gives probes.csv, `claim_numbers` the per-run numbers the report states,
`summary_table` the one-line-per-run text, and `condition_rows` /
`condition_table` the per-condition numbers of a grid's nets (conditions.csv).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from resjax import grid, probes, stats


def rows(runs: Sequence[dict]) -> list[dict]:
  """probes.csv rows: one per layer (activation), block and weight layer, per run."""
  out = []
  for run in runs:
    out += probes.table_rows(run, run=run["run"], model=run["model"], step=run["step"])
  return out


def fmt(v: Any, digits: int = 4) -> str:
  """A number as the report writes it: floats to `digits` places, None as n/a."""
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
    ratio = fmt(c.get("grad_ratio"), 3)
    lines.append(
        f"{run['run'][:18]:<18} {run['model'][:18]:<18} {run['step']:>6} {c['accuracy']:>6.3f} "
        f"{c['dead']:>4}/{c['units']:<4}  {c['dormant_pct']:>7.1f}% {c['linear_max']:>7.3f} "
        f"{c['participation_pre']:>6.2f}>{c['participation_post']:<6.2f} "
        f"{c['shortcut_frac']:>8.3f} "
        f"{ratio:>13}")
  return "\n".join(lines)



# Per-net numbers summarized per condition of a grid: (claim_numbers key, kind).
CONDITION_NUMBERS = (("accuracy", "mean"), ("dead_pct", "fraction"),
                     ("dormant_pct", "fraction"), ("linear_max", "mean"),
                     ("retention", "mean"), ("shortcut_frac", "mean"), ("grad_ratio", "geo"))


def _interval(kind: str):
  """(values, member rows) -> (mean, lo, hi) for a kind of CONDITION_NUMBERS."""
  if kind == "fraction":  # Percent of units; seeds as clusters of a net's units.
    return lambda v, members: tuple(100.0 * x for x in stats.cluster_wilson(
        v / 100.0, size=members[0]["units"]))
  if kind == "geo":
    return lambda v, _: stats.geo_mean_ci(v)
  return lambda v, _: stats.mean_ci(v)


def condition_rows(runs: Sequence[dict]) -> list[dict]:
  """For the nets of grid runs: one row per (grid, condition), each number of
  CONDITION_NUMBERS as mean and 95% interval over the seeds (fractions of units:
  seeds as clusters, `stats.cluster_wilson`; ratios: geometric means), through
  the one per-condition summary (`grid.condition_rows`)."""
  nets = [{"grid": r["grid"], "condition": r["condition"], **claim_numbers(r)}
          for r in runs if "condition" in r]
  return grid.condition_rows(
      nets, metrics=[(key, _interval(kind)) for key, kind in CONDITION_NUMBERS],
      group=lambda r: {"grid": r["grid"], "condition": r["condition"]})


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

