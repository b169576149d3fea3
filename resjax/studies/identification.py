"""Identification (C3): which coordinate, n/d, n - d, P(Bin(n, 1/2) < d) or n,
carries the ReLU damage of a width-n first layer on a d-dim task?

The redundancy study's nets and task (configs/study.py `identification`) in
cells where the coordinates disagree: d = 8 and 12 at n/d = 1.5, 2, 3 (equal
n/d, unequal n - d and P), and n - d = 2 for d = 1-8 (equal n - d, n/d falling
and P rising with d). Every cell is trained on 3 draws of the embedding Q
(`data.seed`) and on two label functions: `data.shift` = 0 (labels even in
every latent coordinate) and 0.25 (neither even nor odd); ReLU and linear
first layers share each seed's initialization and batches.

The measure, fixed in this code before the full run. A replicate is one
(draw of Q, seed) pair; its damage in a cell is test accuracy (linear) minus
test accuracy (ReLU) of that pair. Per label function, the cell damage is the
mean over the replicates, and each coordinate x is scored by
`redundancy.coordinate_fits`: the leave-one-d-out R^2 of one non-increasing
(isotonic) curve of the cell damage in x (each d's cells predicted from a fit
to the other d's; damage is fitted decreasing in -P). Uncertainty: a bootstrap
of the replicates (the same resampled replicates in every cell), 95% percentile
intervals of each R^2 and of the 6 pairwise differences per label function,
two-sided bootstrap p-values, Holm over the 12 differences (both label
functions read together). A coordinate is "identified" for a label function
when its differences from all three others are detected (Holm p < 0.05 and the
interval excludes 0); otherwise the best point estimate is named with the
coordinates it is not told apart from. Two direct contrasts (t-intervals over
the replicates, Holm over their 4): the OLS slope of damage on d along
n - d = 2 (n - d predicts 0, n/d and P > 0, n < 0), and damage at d = 12 minus
d = 8 at equal n/d, mean over the three ratios (n/d predicts 0, n and n - d
< 0; P is higher at d = 12 at n/d = 1.5 and 2 and lower at 3). Per cell, linear minus ReLU over the replicates (Holm over all
cells of both label functions).
"""
from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from resjax import stats as rstats
from resjax.plotting import style
from resjax.studies import figures, redundancy, revival, runs, tables
from resjax.studies.tables import g6

FAMILIES = ("firstlayer",)
RULES = {**redundancy.RULES, "power": revival.RULES["power"]}
COORDS = ("n/d", "n - d", "P(Bin(n, 1/2) < d)", "n")
TASKS = {0.0: "even labels", 0.25: "shifted labels"}


def tiny(config) -> None:
  """d = 1 and 2 on one draw of Q, both label functions, 200 bootstrap draws."""
  for name in list(config.grids.keys()):
    if not (name.startswith(("d1_", "d2_")) and "_q0_" in name):
      del config.grids[name]
  config.bootstrap = 200


def task_name(shift: float) -> str:
  """'even labels' (shift 0) or 'labels shifted by <shift>'."""
  return "even labels" if shift == 0 else f"labels shifted by {shift:g}"


def coordinates(d: int, n: int) -> dict[str, float]:
  """The four candidate coordinates of cell (d, n)."""
  return {"n/d": n / d, "n - d": float(n - d),
          "P(Bin(n, 1/2) < d)": redundancy.binom_below(n, d),
          "n": float(n)}


def damage(trained: dict[str, runs.GridRun]) -> dict[float, dict[str, Any]]:
  """Per label shift: the cells (d, n), the replicates (draw, seed) and the damage
  linear - ReLU [cell, replicate] (paired by seed inside each grid)."""
  found: dict[float, dict[tuple, dict[tuple, float]]] = {}
  for run in trained.values():
    cfg = run.config
    shift, d, draw = float(cfg.data.shift), int(cfg.data.d), int(cfg.data.seed)
    acc, by = tables.final(run, "test_acc"), tables.groups(run)
    for w in sorted({n.width for n in run.nets}):
      lin = {run.nets[i].seed: acc[i] for i in by.get(("linear", w, 1), [])}
      rel = {run.nets[i].seed: acc[i] for i in by.get(("relu", w, 1), [])}
      cell = found.setdefault(shift, {}).setdefault((d, w), {})
      cell.update({(draw, s): lin[s] - rel[s] for s in sorted(set(lin) & set(rel))})
  out = {}
  for shift, cells in sorted(found.items()):
    keys = sorted(cells)
    reps = sorted(set.intersection(*(set(cells[k]) for k in keys)))
    out[shift] = {"cells": keys, "replicates": reps,
                  "diffs": np.asarray([[cells[k][r] for r in reps] for k in keys], np.float64)}
  return out


def _loo(cells, means) -> dict[str, float]:
  fits = redundancy.coordinate_fits([c[0] for c in cells], [c[1] for c in cells], means)
  return {k: fits[k]["r2_leave_one_d_out"] for k in COORDS}


def _boot_p(values: np.ndarray) -> float:
  """Two-sided bootstrap p-value of 0 for the resampled `values`."""
  v = values[np.isfinite(values)]
  if not v.size:
    return float("nan")
  tail = min((v <= 0).sum(), (v >= 0).sum())
  return float(min(1.0, 2 * (tail + 1) / (v.size + 1)))


def fits(task: str, part: dict[str, Any], draws: int, seed: int,
         power: float) -> tuple[dict, dict]:
  """Coordinate fits of one label function with bootstrap intervals, and its
  pairwise R^2 differences (contrasts, Holm added by the caller)."""
  cells, diffs = part["cells"], part["diffs"]
  means = diffs.mean(1)
  full = redundancy.coordinate_fits([c[0] for c in cells], [c[1] for c in cells], means)
  point = {k: full[k]["r2_leave_one_d_out"] for k in COORDS}
  rng = np.random.default_rng([seed, 22])
  reps = diffs.shape[1]
  boot = np.asarray([list(_loo(cells, diffs[:, rng.integers(0, reps, reps)].mean(1)).values())
                     for _ in range(draws)], np.float64)
  out = {"cells": len(cells), "replicates": reps, "draws": draws, "coords": {}}
  for j, k in enumerate(COORDS):
    lo, hi = np.nanpercentile(boot[:, j], [2.5, 97.5])
    out["coords"][k] = {"r2_loo": g6(point[k]), "r2_loo_lo": g6(lo), "r2_loo_hi": g6(hi),
                        "r2_all": full[k]["r2"]}
  contrasts = {}
  for (a, ka), (b, kb) in itertools.combinations(enumerate(COORDS), 2):
    diff = boot[:, a] - boot[:, b]
    lo, hi = np.nanpercentile(diff, [2.5, 97.5])
    sd = float(np.nanstd(diff, ddof=1))
    contrasts[f"{task}: R2_loo({ka}) - R2_loo({kb})"] = {
        "family": "R^2 differences", "task": task, "a": ka, "b": kb,
        "mean": g6(point[ka] - point[kb]), "lo": g6(lo), "hi": g6(hi), "p": g6(_boot_p(diff)),
        "excludes_zero": bool(lo > 0 or hi < 0), "boot_sd": g6(sd),
        "detectable": g6(rstats.detectable(sd * math.sqrt(reps), reps, power))}
  return out, contrasts


def _verdicts(family: dict[str, dict], power: float) -> None:
  """'detected' where the interval excludes 0 and Holm over the family rejects."""
  for c in family.values():
    c["verdict"] = tables.verdict(c, power)


def winner(fit: dict, contrasts: dict[str, dict]) -> dict[str, Any]:
  """The coordinate with the highest leave-one-d-out R^2 and those it is not told apart from."""
  best = max(COORDS, key=lambda k: -math.inf if fit["coords"][k]["r2_loo"] is None
             or not math.isfinite(fit["coords"][k]["r2_loo"]) else fit["coords"][k]["r2_loo"])
  tied = [c["b"] if c["a"] == best else c["a"] for c in contrasts.values()
          if best in (c["a"], c["b"]) and not tables.verdict(c).startswith("detected")]
  return {"best": best, "not_told_apart_from": tied, "identified": not tied}


def _replicate_contrast(values: np.ndarray, family: str, power: float) -> dict[str, Any]:
  """Mean of per-replicate `values` against 0: t-interval, p, detectable effect."""
  c = rstats.paired(values, np.zeros_like(values))
  sd = c["sd"]
  return {"family": family, **{k: g6(c[k]) for k in ("mean", "lo", "hi", "p")}, "n": c["n"],
          "excludes_zero": c["excludes_zero"], "sd": g6(sd),
          "detectable": g6(rstats.detectable(sd, c["n"], power))}


def slices(task: str, part: dict[str, Any], power: float) -> dict[str, dict]:
  """The slope of damage on d along n - d = 2 and d = 12 minus d = 8 at equal n/d."""
  cells, diffs, out = part["cells"], part["diffs"], {}
  along = [i for i, (d, n) in enumerate(cells) if n - d == 2]
  if len({cells[i][0] for i in along}) >= 2:
    x = np.asarray([cells[i][0] for i in along], np.float64)
    slope = np.polyfit(x, diffs[along], 1)[0]  # One slope per replicate.
    out[f"{task}: slope of damage on d along n - d = 2 (per unit d)"] = _replicate_contrast(
        slope, "direct contrasts", power)
  index = {c: i for i, c in enumerate(cells)}
  pairs = [(index[(12, int(round(12 * r)))], index[(8, int(round(8 * r)))])
           for r in (1.5, 2, 3) if (12, int(round(12 * r))) in index
           and (8, int(round(8 * r))) in index]
  if pairs:
    gap = np.mean([diffs[a] - diffs[b] for a, b in pairs], axis=0)
    out[f"{task}: d = 12 minus d = 8 at equal n/d (mean over {len(pairs)} ratios)"] = \
        _replicate_contrast(gap, "direct contrasts", power)
  return out


def analyze(config, trained: dict[str, runs.GridRun], workdir: str, log) -> dict[str, Any]:
  """Rows per grid and condition; per label function the coordinate fits, the R^2
  differences, the direct contrasts and the per-cell damage."""
  del workdir, log
  power, draws, seed = float(config.power), int(config.get("bootstrap", 2000)), int(config.seed)
  rows, net_rows = [], []
  for run in trained.values():
    cfg = run.config
    head = {"d": int(cfg.data.d), "draw": int(cfg.data.seed), "shift": float(cfg.data.shift)}
    metrics = {k: tables.final(run, k) for k in ("test_acc", "train_acc", "train_loss")}
    rows += tables.condition_rows(run, metrics, head)
    net_rows += [{**r, **head} for r in tables.net_rows(run)]
  parts = damage(trained)
  result, diffs_family, direct, per_cell, cells_out = {}, {}, {}, {}, []
  for shift, part in parts.items():
    task = task_name(shift)
    result[task], contrasts = fits(task, part, draws, seed, power)
    diffs_family.update(contrasts)
    direct.update(slices(task, part, power))
    for (d, n), row in zip(part["cells"], part["diffs"]):
      key = f"{task}: d={d}, n={n}: test_acc(linear) - test_acc(relu)"
      per_cell[key] = _replicate_contrast(row, "per cell", power)
      cells_out.append({"task": task, **{k: g6(v) for k, v in coordinates(d, n).items()},
                        "d": d, "n": n, **{f"damage{s}": g6(v) for s, v in zip(
                            ("", "_lo", "_hi"), rstats.mean_ci(row))}})
  for family in (diffs_family, direct, per_cell):
    tables.holm(family)
    _verdicts(family, power)
  for task in result:
    result[task]["winner"] = winner(result[task], {k: c for k, c in diffs_family.items()
                                                   if c["task"] == task})
  g0 = next(iter(trained.values())).config
  title = (f"Identification: which coordinate carries the ReLU damage? d-dim task in "
           f"{g0.data.ambient} dims, width-n first layer, head {g0.model.head_depth} x "
           f"{g0.model.head_width}, {g0.train.steps} steps, {len(parts[next(iter(parts))]['replicates'])}"
           " replicates (draw of Q x seed) per cell")
  return {"rows": rows, "net_rows": net_rows,
          "contrasts": {**diffs_family, **direct, **per_cell},
          "identification": result, "cells": cells_out,
          "families": {"R^2 differences": len(diffs_family), "direct contrasts": len(direct),
                       "per cell": len(per_cell)},
          "figure_data": {"title": title, "tasks": list(result)}}


def headline(result: dict) -> dict[str, str]:
  """{'C3': one sentence}: each label function's winner, its leave-one-d-out R^2s and
  the direct contrasts (points)."""
  parts = []
  for task, fit in result["identification"].items():
    w = fit["winner"]
    r2 = ", ".join(f"{k} {c['r2_loo']:.2f} [{c['r2_loo_lo']:.2f}, {c['r2_loo_hi']:.2f}]"
                   for k, c in fit["coords"].items())
    said = (f"{w['best']} identified" if w["identified"] else
            f"{w['best']} best, not told apart from {', '.join(w['not_told_apart_from'])}")
    parts.append(f"{task}: {said} (leave-one-d-out R^2 {r2})")
  direct = [f"{k} {100 * c['mean']:+.1f} {tables.bounds_text(c, 100, 1, '+')} "
            f"({tables.verdict(c).split(' (')[0]})" for k, c in result["contrasts"].items()
            if c.get("family") == "direct contrasts"]
  return {"C3": "; ".join(parts + direct) + "."}


def _coordinate_panel(ax, cells: list[dict], key: str, colors, fit: dict) -> None:
  for c in cells:
    ax.errorbar([c[key]], [100 * c["damage"]], yerr=[[100 * (c["damage"] - c["damage_lo"])],
                [100 * (c["damage_hi"] - c["damage"])]], fmt="o", ms=4, color=colors[c["d"]],
                capsize=2, lw=1)
  sign = -1.0 if key.startswith("P(") else 1.0
  x = np.asarray([c[key] for c in cells], np.float64)
  y = np.asarray([c["damage"] for c in cells], np.float64)
  curve = redundancy.isotonic_decreasing(sign * x, y) * 100
  order = np.argsort(x)
  ax.step(x[order], curve[order], where="post" if sign > 0 else "pre", color="0.25", lw=1,
          ls="--")
  ax.axhline(0, color="0.6", lw=0.8)
  if not key.startswith("P("):
    ax.set_xscale("log", base=2)
    ax.set_xticks([t for t in (1, 1.25, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 36)
                   if x.min() <= t <= x.max()] or sorted(set(x)))
    ax.xaxis.set_major_formatter(lambda t, _: f"{t:g}")
    ax.minorticks_off()
  ax.set_xlabel(key)
  c = fit["coords"][key]
  ax.set_title(f"LOO $R^2$ = {c['r2_loo']:.2f} [{c['r2_loo_lo']:.2f}, {c['r2_loo_hi']:.2f}]",
               fontsize=8)


def figure(tabs: dict[str, Any]):
  """Per label function (rows): cell damage against each coordinate with the isotonic
  fit, and the leave-one-d-out R^2s with their bootstrap intervals."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (slow; figures only)
  from matplotlib import lines  # pylint: disable=g-import-not-at-top
  tasks = tabs["figure_data"]["tasks"]
  dims = sorted({c["d"] for c in tabs["cells"]})
  cmap = matplotlib.colormaps["tab10"]  # Discrete: neighbouring d told apart.
  colors = {d: cmap(j % 10) for j, d in enumerate(dims)}
  with style.context():
    fig, axes = style.figure((17, 3.6 * len(tasks) + 0.6), len(tasks), 5, squeeze=False)
    for r, task in enumerate(tasks):
      cells, fit = [c for c in tabs["cells"] if c["task"] == task], tabs["identification"][task]
      for j, key in enumerate(COORDS):
        _coordinate_panel(axes[r, j], cells, key, colors, fit)
      axes[r, 0].set_ylabel(f"{task}\nlinear minus ReLU (points)")
      ax = axes[r, 4]
      vals = [fit["coords"][k] for k in COORDS]
      ax.bar(range(4), [v["r2_loo"] for v in vals], color="#8a8a8a", width=0.6,
             yerr=[[v["r2_loo"] - v["r2_loo_lo"] for v in vals],
                   [v["r2_loo_hi"] - v["r2_loo"] for v in vals]], capsize=3)
      ax.plot(range(4), [v["r2_all"] for v in vals], "k_", ms=14, label="$R^2$, all cells")
      ax.set_xticks(range(4))
      ax.set_xticklabels(["n/d", "n-d", "P", "n"])
      ax.axhline(0, color="0.6", lw=0.8)
      ax.set_ylabel("leave-one-d-out $R^2$")
      ax.set_title(f"winner: {fit['winner']['best']}"
                   + ("" if fit["winner"]["identified"] else " (not identified)"), fontsize=8)
      ax.legend(frameon=False, fontsize=7)
    handles = [lines.Line2D([], [], marker="o", ls="", color=colors[d],
                                       label=f"d = {d}") for d in dims]
    axes[0, 0].legend(handles=handles, frameon=False, fontsize=6, ncol=3, loc="lower left")
    figures.finish(fig, tabs["figure_data"]["title"], (
        "points: cell mean damage (linear minus ReLU, paired by seed) over the replicates "
        "(draw of Q x seed) with 95% t-intervals, colour = d; dashed: one non-increasing curve "
        "through all cells; right: leave-one-d-out $R^2$ with 95% bootstrap intervals of the "
        "replicates, and $R^2$ of the fit to all cells"))
  return fig
