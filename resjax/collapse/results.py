"""The sweep's tables: one summary row per (d, activation, n), and a short text table."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from resjax import stats
from resjax.collapse import spec as spec_lib


def _g(v) -> float:
  return float(f"{float(v):.6g}")


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
  """One row per (d, activation, n): means, 95% intervals and medians over seeds, theory.

  Errors and `active_frac` get t-intervals over seeds; the fractions of points
  (`collapsed_frac`, `dead_frac`, `linear_frac`), which sit near 0 in the
  tails, get `stats.cluster_wilson` with the seeds as clusters of `points`.
  """
  # Every interval at once over [K, A, N, S] (in the rows' column order); then one row per cell.
  cols: dict[str, np.ndarray] = {}
  for e in spec_lib.ERRORS:
    v = results[f"{e}_error"]
    cols[f"{e}_error_mean"], cols[f"{e}_error_lo"], cols[f"{e}_error_hi"] = (
        np.asarray(a) for a in stats.mean_ci(v, bounds=(0.0, math.inf)))
    cols[f"{e}_error_median"] = np.median(v, axis=-1)
  cols["span_error_theory"] = np.asarray(results["span_error_theory"])
  for m in ("collapsed_frac", "dead_frac", "active_frac", "linear_frac"):
    v = results[m]
    cols[m], cols[f"{m}_lo"], cols[f"{m}_hi"] = (
        np.asarray(a) for a in (stats.mean_ci(v, bounds=(0.0, 1.0)) if m == "active_frac"
                                else stats.cluster_wilson(v, results["points"])))
    if m != "active_frac":
      cols[f"{m}_theory"] = np.mean(np.asarray(results[f"{m}_theory"]), axis=tuple(
          range(3, np.ndim(results[f"{m}_theory"]))))
  rows = []
  for k, d in enumerate(results["d"]):
    for a, name in enumerate(results["activations"]):
      for i, n in enumerate(results["dims"]):
        row = {"activation": name, "d": int(d), "dim": int(n), "seeds": results["seeds"]}
        row.update({c: _g(v[k, a, i]) for c, v in cols.items()})
        rows.append(row)
  return rows


def table(rows: Sequence[dict[str, Any]], activation: str = "relu",
          dims: Sequence[int] = (1, 2, 3, 5, 15, 30, 64)) -> str:
  """A short text table of one activation at a few embedding dims (theory in brackets)."""
  lines = [f"{activation}: relative errors (mean over seeds; pinv: median) and fractions "
           "of points [theory]",
           f"{'d':>2} {'n':>4} {'pinv(med)':>9} {'refit':>6} {'span':>8} {'[theory]':>9} "
           f"{'constr.':>8} {'collapsed':>9} {'[theory]':>8} {'dead':>6} {'[theory]':>8} "
           f"{'linear':>6}"]
  for r in rows:
    if r["activation"] == activation and r["dim"] in dims:
      lines.append(
          f"{r['d']:>2} {r['dim']:>4} {r['pinv_error_median']:>9.3g} {r['refit_error_mean']:>6.3f}"
          f" {r['span_error_mean']:>8.2g} {r['span_error_theory']:>9.2g}"
          f" {r['constrained_error_mean']:>8.2g}"
          f" {r['collapsed_frac']:>9.4f} {r['collapsed_frac_theory']:>8.4f}"
          f" {r['dead_frac']:>6.4f} {r['dead_frac_theory']:>8.2g} {r['linear_frac']:>6.3f}")
  return "\n".join(lines)

