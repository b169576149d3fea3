"""Redundancy (C3): does n / d decide the ReLU damage after training?

Accuracy vs first-layer width n on tasks of intrinsic dimension d embedded in
16 dims ('manifold'), ReLU vs linear vs identity-plus-ReLU first layer, one
grid per d (configs/study.py `redundancy`).

The measure, fixed before the study ran. Damage of a cell (d, n) = test
accuracy of the linear first layer minus the ReLU one, mean over the seeds
(paired by seed). A coordinate x (n / d, or n) "collapses" the damage curves
of the different d onto one curve as far as one non-increasing function of x
fits all cells: the isotonic (non-increasing) least-squares fit of the cell
means on x, and its R^2 over the cells (unweighted). The isotonic fit depends
only on the order of x, so no scale of x is chosen. Uncertainty: a bootstrap
of the seeds (the same resampled seeds in every cell, as the seeds pair
across the grid), 95% percentile intervals of each R^2 and of
R^2(n / d) - R^2(n). Verdict: the interval of the difference above 0 says n / d
predicts better, below 0 n, otherwise the two are not told apart; a
coordinate "predicts" the damage when the lower end of its R^2 interval is
above 0.5, and "neither" is said when neither does. The noise ceiling is the
R^2 a perfect curve would reach given the seed noise of the cell means,
1 - sum(var of cell means) / total sum of squares.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np

from resjax import restore, schema, train
from resjax import stats as rstats
from resjax.plotting import style
from resjax.studies import figures, runs, tables
from resjax.studies.tables import g6 as _g

FAMILIES = ("firstlayer",)
RULES = {"bootstrap": schema.Int(1, 1_000_000, optional=True,
                                 fix="use an integer in [1, 1000000] (resamples of the seeds)")}
_VARIANT_LABELS = {"relu": "ReLU(z)", "linear": "z (linear)", "residual": "z + ReLU(Uz + c)"}


def tiny(config) -> None:
  """Two dimensions, two widths, ReLU and linear (8 inits), 200 bootstrap draws."""
  for name in list(config.grids.keys())[2:]:
    del config.grids[name]
  for g in config.grids.values():
    g.grid.model.first = ("relu", "linear")
  config.bootstrap = 200


def binom_below(n: int, d: int) -> float:
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


def coordinate_fits(d: Sequence[int], n: Sequence[int], damage: Sequence[float]) -> dict:
  """R² of one non-increasing curve of the cell damage in each candidate coordinate.

  The coordinates: n/d, n, n - d and the random-layer collapse probability
  P(Bin(n, 1/2) < d) (damage rises with it, so it is fitted decreasing in its
  negative). `r2` fits all cells; `r2_leave_one_d_out` predicts each d's cells
  from a fit to the other d's (linear interpolation of that fit).
  """
  d, n, y = (np.asarray(v, np.float64) for v in (d, n, damage))
  below = np.asarray([binom_below(int(a), int(b)) for a, b in zip(n, d)])
  coords = {"n/d": n / d, "n": n, "n - d": n - d, "P(Bin(n, 1/2) < d)": -below}
  total = ((y - y.mean()) ** 2).sum()
  out = {}
  for name, x in coords.items():
    pred = np.empty_like(y)
    for left in np.unique(d):
      fit, rest = d != left, d == left
      order = np.argsort(x[fit], kind="stable")
      curve = isotonic_decreasing(x[fit], y[fit])
      pred[rest] = np.interp(x[rest], x[fit][order], np.asarray(curve)[order])
    out[name] = {"r2": _g(one_curve_r2(x, y)),
                 "r2_leave_one_d_out": _g(1 - ((y - pred) ** 2).sum() / total)}
  return out


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


def _first_layer_duty(run: runs.GridRun) -> tuple[dict[int, np.ndarray], int]:
  """Units on duty (z > 0) of each trained ReLU first layer on every training input,
  computed from the checkpoint's parameters (no probe compile): position -> bool [N, n]."""
  cfg, state = restore.load(run.workdir, devices=jax.devices()[:1])
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




def _grid_tables(run: runs.GridRun, d: int, out: dict) -> dict[str, Any]:
  """Adds one grid's rows, net rows and contrasts to `out`; returns its metrics by condition."""
  duty, points = _first_layer_duty(run)
  k = len(run.nets)
  collapsed, none_on, dead = np.full(k, np.nan), np.full(k, np.nan), np.full(k, np.nan)
  for i, on in duty.items():
    count = on.sum(1)
    collapsed[i], none_on[i] = np.mean(count < d), np.mean(count == 0)
    dead[i] = np.mean(~on.any(0))
  metrics = {"test_acc": tables.final(run, "test_acc"), "train_acc": tables.final(run, "train_acc"),
             "train_loss": tables.final(run, "train_loss"), "collapsed_trained": collapsed,
             "none_on_trained": none_on, "dead_first_trained": dead}
  rows = tables.condition_rows(run, metrics, {"d": d})
  tables.fractions(rows, run, {"collapsed_trained": collapsed, "none_on_trained": none_on},
                   lambda r: points)
  tables.fractions(rows, run, {"dead_first_trained": dead}, lambda r: r["width"])
  for row in rows:
    row["ratio"] = _g(row["width"] / d)
    row["collapsed_theory_init"] = _g(binom_below(row["width"], d))
  out["rows"] += rows
  out["net_rows"] += [{**r, "d": d} for r in tables.net_rows(
      run, {"collapsed_trained": collapsed, "dead_first_trained": dead})]
  by, widths = tables.groups(run), sorted({n.width for n in run.nets})
  for w in widths:
    for other in ("linear", "residual"):
      if ("relu", w, 1) in by and (other, w, 1) in by:
        out["contrasts"][f"d={d}, n={w}: test_acc({other}) - test_acc(relu)"] = tables.paired(
            run, metrics["test_acc"], (other, w, 1), ("relu", w, 1))
  return {"widths": widths, "run": run, "metrics": metrics, "groups": by}


def _damage(dims: list[int], per_d: dict) -> tuple[list[tuple[int, int]], np.ndarray]:
  """The cells (d, n) and their per-seed damage (linear - ReLU), [cell, seed] over the
  seeds every cell holds (column j is the same seed in every cell)."""
  cells, diffs = [], []
  for d in dims:
    info, by = per_d[d], per_d[d]["groups"]
    for w in info["widths"]:
      if ("relu", w, 1) in by and ("linear", w, 1) in by:
        acc = info["metrics"]["test_acc"]
        lin = {info["run"].nets[i].seed: acc[i] for i in by[("linear", w, 1)]}
        rel = {info["run"].nets[i].seed: acc[i] for i in by[("relu", w, 1)]}
        cells.append((d, w))
        diffs.append({s: lin[s] - rel[s] for s in set(lin) & set(rel)})
  seeds = sorted(set.intersection(*(set(v) for v in diffs))) if diffs else []
  return cells, np.reshape([[v[s] for s in seeds] for v in diffs], (len(cells), len(seeds)))


def _drawn(dims, per_d, cells, diffs_CxS, curves) -> dict[str, Any]:
  """The series the figure draws (percent); adds the per-d curves to `curves`."""
  series = {}
  for key, xs_of in (("ratio", lambda d, n: n / d), ("n", lambda d, n: float(n))):
    xs = np.asarray([xs_of(d, n) for d, n in cells])
    fitted, order = isotonic_decreasing(xs, diffs_CxS.mean(1)) * 100, np.argsort(xs, kind="stable")
    series[f"fit/{key}"] = {"x": [_g(x) for x in xs[order]], "y": [_g(y) for y in fitted[order]]}
  for d in dims:
    info = per_d[d]
    acc, by, xs = info["metrics"]["test_acc"], info["groups"], [w / d for w in info["widths"]]
    for v in ("linear", "relu"):
      triples = [tuple(100 * x for x in tables.ci95_in(acc[by[(v, w, 1)]], "acc"))
                 for w in info["widths"]]
      series[f"d{d}/{v}/test_acc"] = tables.series(xs, triples)
      curves[f"d{d}/{v}/test_acc"] = [_g(t[0] / 100) for t in triples]
    if all(("residual", w, 1) in by for w in info["widths"]):
      curves[f"d{d}/residual/test_acc"] = [
          _g(tables.ci95_in(acc[by[("residual", w, 1)]], "acc")[0]) for w in info["widths"]]
  for d in dims:
    info = per_d[d]
    triples = [rstats.cluster_wilson(info["metrics"]["collapsed_trained"][info["groups"][
        ("relu", w, 1)]]) for w in info["widths"]]
    xs = [w / d for w in info["widths"]]
    series[f"d{d}/collapsed"] = tables.series(xs, [tuple(100 * x for x in t) for t in triples])
    series[f"d{d}/collapsed_theory"] = {"x": [_g(x) for x in xs], "y": [
        _g(100 * binom_below(w, d)) for w in info["widths"]]}
    curves[f"d{d}/relu/collapsed_trained"] = [_g(t[0]) for t in triples]
    curves[f"d{d}/collapsed_theory_init"] = [_g(binom_below(w, d)) for w in info["widths"]]
  return series


def analyze(config, trained: dict[str, runs.GridRun], workdir: str, log) -> dict[str, Any]:
  """Rows per (d, condition), other-minus-ReLU contrasts, the one-curve fits."""
  del workdir, log
  out = {"rows": [], "net_rows": [], "contrasts": {}}
  dims, per_d = [], {}
  for run in trained.values():
    d = int(run.config.data.d)
    dims.append(d)
    per_d[d] = _grid_tables(run, d, out)
  tables.holm(out["contrasts"])
  cells, diffs_CxS = _damage(dims, per_d)
  fit = _one_curve(cells, diffs_CxS, int(config.get("bootstrap", 2000)), int(config.seed))
  curves = {"one_curve": fit, "cells": [{"d": d, "n": n, "ratio": _g(n / d), "damage": _g(m)}
                                        for (d, n), m in zip(cells, diffs_CxS.mean(1))]}
  series = _drawn(dims, per_d, cells, diffs_CxS, curves)
  g0 = next(iter(trained.values())).config
  title = (f"Does redundancy n/d decide the ReLU damage after training? d-dim task embedded in "
           f"{g0.data.ambient} dims, width-n first layer, head {g0.model.head_depth} x "
           f"{g0.model.head_width}, {g0.train.steps} steps")
  means = diffs_CxS.mean(1)
  coords = coordinate_fits([c[0] for c in cells], [c[1] for c in cells], means)
  return {**out, "curves": curves, "one_curve": fit, "coordinate_fits": coords,
          "figure_data": {"dims": dims, "title": title, "series": series}}


def _contrast(tabs: dict, d: int, n: int, other: str) -> tuple[float, ...] | None:
  """(mean, lo, hi) in points of test_acc(other) - test_acc(relu) in cell (d, n)."""
  c = tabs["contrasts"].get(f"d={d}, n={n}: test_acc({other}) - test_acc(relu)")
  return None if c is None else tuple(100 * figures.arr([c[k]])[0] for k in ("mean", "lo", "hi"))


def _ratio_axis(ax, ticks) -> None:
  ax.set_xscale("log", base=2)
  ax.set_xticks(ticks)
  ax.set_xticklabels([f"{t:g}" for t in ticks])
  ax.minorticks_off()


def _damage_panel(ax, tabs, colors, key: str, ticks, xlabel: str) -> None:
  cells, fit = [(c["d"], c["n"]) for c in tabs["curves"]["cells"]], tabs["one_curve"]
  for d in tabs["figure_data"]["dims"]:
    own = [n for d2, n in cells if d2 == d]
    xs = [n / d if key == "ratio" else float(n) for n in own]
    style.band(ax, xs, [_contrast(tabs, d, n, "linear") for n in own], color=colors[d],
               label=f"d = {d}", fill=False)
  step = tabs["figure_data"]["series"][f"fit/{key}"]
  ax.step(step["x"], figures.arr(step["y"]), where="post", color="0.2", lw=1.0, ls="--",
          label="one non-increasing curve")
  ax.axhline(0, color="0.5", lw=0.8)
  _ratio_axis(ax, ticks)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("linear minus ReLU test accuracy (points)")
  ax.set_title(f"damage vs {xlabel.split(' (')[0]}: one-curve $R^2$ = {fit[f'r2_{key}']:.2f} "
               f"[{fit[f'r2_{key}_lo']:.2f}, {fit[f'r2_{key}_hi']:.2f}]", fontsize=9)


def _r2_panel(ax, fit: dict) -> None:
  errs = [[fit["r2_ratio"] - fit["r2_ratio_lo"], fit["r2_n"] - fit["r2_n_lo"]],
          [fit["r2_ratio_hi"] - fit["r2_ratio"], fit["r2_n_hi"] - fit["r2_n"]]]
  ax.bar([0, 1], [fit["r2_ratio"], fit["r2_n"]], yerr=errs, color=["#2e8b57", "#8a8a8a"],
         width=0.55, capsize=4)
  if fit["r2_ceiling"] is not None and 0 < fit["r2_ceiling"] <= 1:
    ax.axhline(fit["r2_ceiling"], color="k", ls=":", lw=1,
               label=f"noise ceiling {fit['r2_ceiling']:.2f}")
  ax.axhline(0.5, color="0.6", ls="--", lw=0.8, label="0.5 (predicts above)")
  ax.set_xticks([0, 1])
  ax.set_xticklabels(["n / d", "n"])
  ax.set_ylim(min(0.0, min(fit["r2_ratio_lo"], fit["r2_n_lo"]) - 0.05), 1.05)
  ax.set_ylabel("$R^2$ of one non-increasing curve")
  ax.set_title(f"which coordinate collapses the curves: $\\Delta R^2$ = {fit['r2_diff']:.2f} "
               f"[{fit['r2_diff_lo']:.2f}, {fit['r2_diff_hi']:.2f}]", fontsize=9)
  ax.legend(frameon=False, fontsize=7, loc="lower right")


def _per_d_panels(axes, tabs, colors, ticks) -> None:
  """Test accuracy, the identity+ReLU gain and the trained layer's collapse vs n / d."""
  dims, series = tabs["figure_data"]["dims"], tabs["figure_data"]["series"]
  cells = [(c["d"], c["n"]) for c in tabs["curves"]["cells"]]
  for d in dims:
    for v, ls in (("linear", "--"), ("relu", "-")):
      figures.line(axes[0], series[f"d{d}/{v}/test_acc"], color=colors[d], ls=ls,
                   label=f"d = {d}, {_VARIANT_LABELS[v]}" if d == dims[0] else None,
                   marker="o" if v == "relu" else None, alpha=0.08)
    own = [n for d2, n in cells if d2 == d and _contrast(tabs, d, n, "residual")]
    if own:
      style.band(axes[1], [n / d for n in own], [_contrast(tabs, d, n, "residual") for n in own],
                 color=colors[d], label=f"d = {d}", fill=False)
    figures.line(axes[2], series[f"d{d}/collapsed"], color=colors[d],
                 label=f"d = {d}" if d == dims[0] else None, alpha=0.12)
    theory = series[f"d{d}/collapsed_theory"]
    axes[2].plot(theory["x"], theory["y"], color=colors[d], ls=":", marker=None)
  axes[1].axhline(0, color="0.5", lw=0.8)
  axes[2].plot([], [], color="0.3", ls="-", marker="o", label="trained ReLU layer")
  axes[2].plot([], [], color="0.3", ls=":",
               label=r"random layer: $P(\mathrm{Bin}(n, \frac{1}{2}) < d)$")
  axes[2].set_yscale("symlog", linthresh=1.0)
  axes[2].set_ylim(0, 105)
  for ax, ylabel, title in zip(axes, (
      "test accuracy (%)", "identity+ReLU minus ReLU (points)",
      "training inputs with < d units on duty (%)"), (
      "test accuracy: ReLU (solid) and linear (dashed) first layer",
      "a linear path beside the ReLU: z + ReLU(Uz + c) minus ReLU(z)",
      "collapse: fewer units on duty than latent dimensions")):
    _ratio_axis(ax, ticks)
    ax.set_xlabel("n / d")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
  axes[0].legend(frameon=False, fontsize=7)
  handles, labels = axes[2].get_legend_handles_labels()
  keep = [j for j, l in enumerate(labels) if not l.startswith("d = ")]
  axes[2].legend([handles[j] for j in keep], [labels[j] for j in keep], frameon=False, fontsize=7)


def figure(tabs: dict[str, Any]):
  """Damage vs n / d and vs n with their one-curve fits, the R^2s, and per-d panels."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (slow; figures only)
  dims = tabs["figure_data"]["dims"]
  cmap = matplotlib.colormaps["viridis"]
  colors = {d: cmap(0.05 + 0.8 * j / max(1, len(dims) - 1)) for j, d in enumerate(dims)}
  cells = [(c["d"], c["n"]) for c in tabs["curves"]["cells"]]
  ticks = [r for r in (1, 1.5, 2, 3, 4, 6, 8) if any(abs(n / d - r) < 1e-9 for d, n in cells)]
  ticks = ticks or sorted({_g(n / d) for d, n in cells})
  all_n = sorted({n for _, n in cells})
  with style.context():
    fig, axes = style.figure((14, 7.6), 2, 3)
    _damage_panel(axes[0, 0], tabs, colors, "ratio", ticks, "n / d (units per latent dimension)")
    axes[0, 0].legend(frameon=False, fontsize=7, title="intrinsic dim.", title_fontsize=7)
    _damage_panel(axes[0, 1], tabs, colors, "n",
                  [n for n in all_n if n in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48)] or all_n,
                  "n (first-layer width)")
    _r2_panel(axes[0, 2], tabs["one_curve"])
    _per_d_panels(axes[1], tabs, colors, ticks)
    figures.finish(fig, tabs["figure_data"]["title"], figures.footer(
        tabs, extra="; damage: paired by seed; $R^2$: seed bootstrap; collapse: "
        "seed-clustered Wilson"))
  return fig


def headline(result: dict[str, Any]) -> dict[str, str]:
  """C3 in one sentence from study.json: the one-curve fits and the coordinate fits."""
  f, fits, dims = result["one_curve"], result.get("coordinate_fits", {}), result["figure_data"]["dims"]
  ranked = sorted(fits.items(), key=lambda kv: -kv[1]["r2_leave_one_d_out"])
  ci = lambda k: f"{f[k]:.2f} [{f[k + '_lo']:.2f}, {f[k + '_hi']:.2f}]"  # pylint: disable=unnecessary-lambda-assignment
  return {"C3": (
      f"tasks of intrinsic dimension d = {min(dims)}-{max(dims)}, {f['cells']} cells x "
      f"{f['seeds']} seeds: one curve of the linear-minus-ReLU damage in n/d fits with R² "
      f"{ci('r2_ratio')}, in n {ci('r2_n')} (n/d minus n {ci('r2_diff')}: better: {f['better']}); "
      "R² of each coordinate, all cells / leaving one d out, best first: " + ", ".join(
          f"{k} {v['r2']:.3f} / {v['r2_leave_one_d_out']:.3f}" for k, v in ranked) +
      " (no interval on these).")}
