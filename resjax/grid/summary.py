"""The per-condition summary of a grid: nets grouped by their axes but the seed.

`condition_rows` is the one implementation: given per-net rows (each with its
label fields, e.g. 'model.depth' and 'seed', and metric columns), it returns
one row per condition with the mean and 95% t-interval over seeds of each
metric asked for.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from resjax import stats
from resjax.grid import spec

# Metrics summarized per condition: (key, range the interval is clipped to).
CONDITION_METRICS = (("eval/error", (0.0, 1.0)), ("eval/loss", (0.0, np.inf)),
                     ("train/loss", (0.0, np.inf)))


def _condition_of(row: Mapping[str, Any]) -> dict[str, Any]:
  label = {k: v for k, v in row.items() if k == "seed" or "." in k}
  return {"condition": spec.condition_name(label)}


def condition_rows(net_rows: Sequence[Mapping[str, Any]],
                   published: Mapping[str, float] | None = None,
                   metrics: Sequence[tuple[str, Any]] = CONDITION_METRICS,
                   group: Callable[[Mapping[str, Any]], dict[str, Any]] = _condition_of,
                   count: str = "seeds", keep_empty: bool = False) -> list[dict]:
  """One row per condition (the axes but the seed): seeds, and for each of
  `metrics` the mean and 95% interval over the seeds (diverged nets
  count as NaN and are left out of the interval); `published` values beside.

  `metrics` holds (key, interval): a (low, high) range for a t-interval clipped
  to it (`stats.mean_ci`), or a function (values, member rows) -> (mean, lo,
  hi) (e.g. a geometric mean, or seeds as clusters of a condition's units).
  A metric with no finite value in a condition is left out of its row, unless
  `keep_empty`. The number of nets goes in column `count`.
  `group(row)` gives a net's leading columns, which name its condition
  (default: {'condition': its label but the seed}).
  """
  groups: dict[tuple, list] = {}
  heads: dict[tuple, dict] = {}
  for row in net_rows:
    head = group(row)
    key = tuple(head.items())
    heads.setdefault(key, head)
    groups.setdefault(key, []).append(row)
  out = []
  for key, members in groups.items():
    row = {**heads[key], count: len(members)}
    for metric, interval in metrics:
      values = np.asarray([np.nan if m.get(metric) is None else m[metric] for m in members],
                          np.float64)
      if not keep_empty and not np.isfinite(values).any():
        continue
      mean, lo, hi = (interval(values, members) if callable(interval)
                      else stats.mean_ci(values, bounds=interval))
      row.update({metric: mean, f"{metric}_lo": lo, f"{metric}_hi": hi})
    name = row.get("condition")
    if published and name in published:
      row["published"] = published[name]
    out.append(row)
  return out


def condition_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The per-condition test error as text: mean [95% interval] and the published value."""
  lines = ["condition | seeds | test error % [95% interval] | published %"]
  for r in rows:
    err = (f"{100 * r['eval/error']:.2f} [{100 * r['eval/error_lo']:.2f}, "
           f"{100 * r['eval/error_hi']:.2f}]" if "eval/error" in r else "-")
    pub = f"{100 * r['published']:.2f}" if "published" in r else "-"
    lines.append(f"{r['condition']} | {r['seeds']} | {err} | {pub}")
  return "\n".join(lines)
