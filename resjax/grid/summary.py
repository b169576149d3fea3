"""The per-condition summary of a grid: nets grouped by their axes but the seed.

`condition_rows` is the one implementation: given per-net rows (each with its
label fields, e.g. 'model.depth' and 'seed', and metric columns), it returns
one row per condition with the mean and 95% t-interval over seeds of each
metric asked for.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from resjax import stats
from resjax.grid import spec

# Metrics summarized per condition: (key, range the interval is clipped to).
CONDITION_METRICS = (("eval/error", (0.0, 1.0)), ("eval/loss", (0.0, np.inf)),
                     ("train/loss", (0.0, np.inf)))


def condition_rows(net_rows: Sequence[Mapping[str, Any]],
                   published: Mapping[str, float] | None = None,
                   metrics: Sequence[tuple[str, tuple[float, float]]] = CONDITION_METRICS
                   ) -> list[dict]:
  """One row per condition (the axes but the seed): seeds, and for each of
  `metrics` the mean and 95% t-interval over the seeds (diverged nets
  count as NaN and are left out of the interval); `published` values beside."""
  groups: dict[str, list] = {}
  for row in net_rows:
    label = {k: v for k, v in row.items() if k == "seed" or "." in k}
    groups.setdefault(spec.condition_name(label), []).append(row)
  out = []
  for key, members in groups.items():
    row = {"condition": key, "seeds": len(members)}
    for metric, bounds in metrics:
      values = np.asarray([m.get(metric, np.nan) for m in members], np.float64)
      if np.isnan(values).all():
        continue
      mean, lo, hi = stats.mean_ci(values, bounds=bounds)
      row.update({metric: mean, f"{metric}_lo": lo, f"{metric}_hi": hi})
    if published and key in published:
      row["published"] = published[key]
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
