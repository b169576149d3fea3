"""Rank collapse (C5's mechanism): do plain deep nets map all inputs one way, and is
the convergence gap there at a bracketed learning rate?

Plain and residual MLPs (width 16, layer norm) on spirals at depths 2-32, one grid
per optimizer (Adam; SGD with momentum), each over a learning-rate axis reaching
down to 1e-4 (Adam) so that the best rate can be bracketed. Probes during training
(`train.probe_every`, on a fixed batch of training inputs) give, for the LAST
hidden layer (the classifier's input, after its norm and ReLU):

  cosine   the mean cosine similarity over pairs of distinct inputs of their
           feature vectors (uncentred: 1 when every input points the same way)
  erank    the entropy effective rank exp(-sum p log p), p = s^2 / sum s^2, of
           the singular values s of the UNCENTRED feature matrix F [inputs,
           units] (the eigenvalues of the Gram matrix F^T F): rank collapse is
           all inputs near one direction, F ~ 1 m^T, which the uncentred
           spectrum shows (erank -> 1) and a centred covariance hides (it sees
           only the spread around m, whatever its size, and its entropy rank is
           scale-free); the centred one is kept as erank_cov.

Both at step 0 (init) and at the last probe (end). Rules fixed here before the
run: the best rate of each (optimizer, variant, depth) is the one with the lowest
mean final full training loss over the seeds (a diverged net counts as +inf;
ties: the lower rate); a best rate at either end of its grid is "not bracketed".
Convergence is read at each cell's best rate from the same runs: the steps to the
full training loss `target_loss` (first evaluation at or below it; a net that never
gets there counts as the budget plus one evaluation period, a floor on its true
value) and the mean log training loss over training.

Contrasts (plain minus residual, paired by seed: both variants share their initial
weights; each family Holm-corrected on its own, its size in each contrast):
'convergence: steps' and 'convergence: mean log loss' per (optimizer, depth);
'geometry at init' (cosine, erank per depth; init does not depend on the
optimizer or rate); 'geometry at the end' (cosine, erank per optimizer and depth);
'init collapse predicts loss': across the plain nets at their best rates, the
correlation of init erank and cosine with the final training loss, across depths
(Spearman; depth drives both) and within depths (Pearson of the deviations from
each depth's mean, df = nets - depths - 1), each with its 95% Fisher-z interval
(`stats.fisher_ci`). Verdicts: 'detected' where the Holm-
adjusted test rejects (its 95% interval excludes 0), else 'not detected at this
power' with the effect a paired t-test of its n and SD detects with power
`config.power` (`stats.detectable`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats as sstats

from resjax import errors, schema
from resjax import stats as rstats
from resjax.plotting import style
from resjax.studies import figures, runs, tables
from resjax.studies.figures import COLORS, LABELS

FAMILIES = ("mlp",)
RULES = {"target_loss": schema.Float(0, low_open=True),
         "power": schema.Float(0.0, 1.0, low_open=True, high_open=True,
                               fix="use a number in (0, 1), e.g. 0.8 (the power of the "
                                   "detectable effect)")}
VARIANTS = ("plain", "residual")
# Per net from probes.jsonl: the last hidden layer at init and at the end.
GEOMETRY = ("cosine", "erank", "erank_cov")
PROBE_FIELDS = {"cosine": "cosine", "erank": "entropy_rank_gram", "erank_cov": "entropy_rank"}
# Read in the contrasts (erank_cov is reported only).
CONTRASTED = ("cosine", "erank")


def tiny(config) -> None:
  """Probes every 10 of the 20 steps on 64 inputs; the rates keep their first two."""
  for g in config.grids.values():
    g.train.probe_every = 10
    g.train.probe_batch = 64


def validate(config) -> None:
  """ConfigError unless the grids probe their last step, vary the rate and both variants."""
  schema.check(config, RULES)
  for name, g in config.grids.items():
    runs.check_last_probe(name, g)
    errors.check(len(tuple(g.grid.opt.lr)) >= 2,
                 f"grids.{name}.grid.opt.lr={tuple(g.grid.opt.lr)} is not allowed; the study "
                 "picks the best rate: give at least 2 (3 or more to bracket it)")
    errors.check(sorted(tuple(g.grid.model.residual)) == [False, True],
                 f"grids.{name}.grid.model.residual={tuple(g.grid.model.residual)} is not "
                 "allowed; the study contrasts plain and residual: use (False, True)")


def net_geometry(probes: list[tuple[int, dict[str, dict]]], depth: int) -> dict[str, float]:
  """GEOMETRY of one net's last hidden layer at its first and last probe (`runs.read_probes`)."""
  layer = f"layer{depth - 1}"
  first, last = probes[0][1][layer], probes[-1][1][layer]
  out = {}
  for key, field in PROBE_FIELDS.items():
    out[f"{key}_init"] = float(first[field])
    out[f"{key}_end"] = float(last[field])
  return out


def _trajectory(probes: list[tuple[int, dict[str, dict]]], depth: int, field: str):
  layer = f"layer{depth - 1}"
  return [s for s, _ in probes], [float(rows[layer][field]) for _, rows in probes]


def best_rates(run: runs.GridRun, loss: np.ndarray) -> dict[tuple, dict]:
  """(variant, depth) -> the best rate by the fixed rule, its position and bracketing."""
  rates = sorted({n.lr for n in run.nets})
  out = {}
  for (v, d), idx in tables.groups(run, ("variant", "depth")).items():
    means = []
    for lr in rates:
      vals = np.asarray([loss[i] for i in idx if run.nets[i].lr == lr], np.float64)
      means.append(float(np.mean(np.where(np.isfinite(vals), vals, np.inf))))
    k = int(np.argmin(means))  # First minimum: ties go to the lower rate.
    out[(v, d)] = {"best_lr": rates[k], "position": k, "rates": len(rates),
                   "bracketed": 0 < k < len(rates) - 1, "mean_loss_by_rate": means}
  return out


def _pair(values: np.ndarray, plain: list[int], resid: list[int], run: runs.GridRun) -> dict:
  """plain minus residual over the seeds both hold (positions of the nets at their rates)."""
  ps = {run.nets[i].seed: i for i in plain}
  rs = {run.nets[i].seed: i for i in resid}
  common = sorted(set(ps) & set(rs))
  a = np.asarray([values[ps[s]] for s in common], np.float64)
  b = np.asarray([values[rs[s]] for s in common], np.float64)
  c = rstats.paired(a, b)
  return {**{k: tables.g6(c[k]) for k in ("mean", "lo", "hi", "p")}, "n": c["n"],
          "excludes_zero": c["excludes_zero"], "sd": tables.g6(c["sd"]),
          "plain_mean": tables.g6(float(np.nanmean(a))) if a.size else None,
          "residual_mean": tables.g6(float(np.nanmean(b))) if b.size else None}


def _at_best(run: runs.GridRun, best: dict, v: str, d: int) -> list[int]:
  lr = best[(v, d)]["best_lr"]
  return [i for i, n in enumerate(run.nets) if (n.variant, n.depth, n.lr) == (v, d, lr)]


def _correlations(per_opt: dict, power: float) -> dict[str, dict]:
  """Init geometry vs final training loss across the plain nets at their best rates."""
  family = {}
  for opt, (run, best, m) in per_opt.items():
    depths = sorted({n.depth for n in run.nets})
    idx = [i for d in depths for i in _at_best(run, best, "plain", d)]
    depth = np.asarray([run.nets[i].depth for i in idx])
    loss = m["train_loss"][idx]
    for key in CONTRASTED:
      x = m[f"{key}_init"][idx]
      ok = np.isfinite(x) & np.isfinite(loss)
      n = int(ok.sum())
      rho, p = sstats.spearmanr(x[ok], loss[ok]) if n >= 3 else (np.nan, np.nan)
      family[f"{opt}: plain nets, {key} at init vs final training loss, across depths "
             "(Spearman)"] = {"estimate": tables.g6(float(rho)), "p": tables.g6(float(p)),
                              "n": n, **tables.correlation_interval(float(rho), n - 3, 1.06)}
      dx, dl = x.astype(np.float64).copy(), loss.astype(np.float64).copy()
      for d in depths:  # Deviations from each depth's mean: what depth leaves over.
        sel = (depth == d) & ok
        dx[sel] -= dx[sel].mean() if sel.any() else 0.0
        dl[sel] -= dl[sel].mean() if sel.any() else 0.0
      df = int(ok.sum()) - len(depths) - 1
      r = float(np.corrcoef(dx[ok], dl[ok])[0, 1]) if df >= 1 else np.nan
      t = r * np.sqrt(df / max(1 - r * r, 1e-300)) if np.isfinite(r) else np.nan
      pw = float(2 * sstats.t.sf(abs(t), df)) if np.isfinite(t) else np.nan
      family[f"{opt}: plain nets, {key} at init vs final training loss, within depths "
             "(Pearson)"] = {"estimate": tables.g6(r), "p": tables.g6(pw), "n": int(ok.sum()),
                             "df": df, **tables.correlation_interval(r, df - 1)}
  tables.holm(family)
  for c in family.values():
    c["family"] = "init collapse predicts loss"
    c["verdict"] = tables.verdict(c)
  return family


def _net_metrics(run: runs.GridRun, budget: int, every: int) -> dict[str, np.ndarray]:
  probes = runs.read_probes(run.workdir)
  geo = [net_geometry(probes[k], run.nets[i].depth) for i, k in enumerate(run.index)]
  m = {key: np.asarray([g[key] for g in geo], np.float64) for key in geo[0]}
  loss = run.history["train_loss"]
  m["train_loss"] = tables.final(run, "train_loss")
  m["test_acc"] = tables.final(run, "test_acc")
  m["mean_log_loss"] = np.log(np.maximum(loss, 1e-12)).mean(1)
  m["_probes"] = probes
  m["_censor"] = float(budget + every)
  return m


def _steps(run: runs.GridRun, target: float, censor: float) -> tuple[np.ndarray, np.ndarray]:
  """Steps to the target per net (censored at `censor`) and whether it got there."""
  hit = run.history["train_loss"] <= target
  first = np.argmax(hit, axis=1)
  reached = hit.any(1)
  return np.where(reached, run.eval_steps[first].astype(np.float64), censor), reached


def _rows(opt: str, run: runs.GridRun, m: dict, best: dict) -> list[dict]:
  """One row per (variant, depth, rate): means and 95% intervals over seeds."""
  rows = []
  for (v, d, lr), idx in sorted(tables.groups(run, ("variant", "depth", "lr")).items()):
    b = best[(v, d)]
    row = {"optimizer": opt, "variant": v, "depth": d, "lr": lr, "n": len(idx),
           "best": lr == b["best_lr"], "bracketed": b["bracketed"],
           "diverged": int((~np.isfinite(m["train_loss"][idx])).sum()),
           "reached": int(m["reached"][idx].sum())}
    for key in ("train_loss", "mean_log_loss", "test_acc", "steps_to_target") + tuple(
        f"{g}_{w}" for g in GEOMETRY for w in ("init", "end")):
      vals = m[key][idx]
      vals = vals[np.isfinite(vals)]
      row.update(tables.stat_cols(key, rstats.mean_ci(vals) if vals.size else (np.nan,) * 3))
    rows.append(row)
  return rows


def analyze(config, trained: dict[str, runs.GridRun], workdir: str, log) -> dict[str, Any]:
  """Per-net geometry and convergence, the best rates, rows, contrasts and the figure's data."""
  del workdir, log
  target, power = float(config.target_loss), float(config.power)
  per_opt, rows, net_rows, best_rows = {}, [], [], []
  fam = {"steps": {}, "auc": {}, "init": {}, "end": {}}
  for name, run in trained.items():
    opt = str(run.config.opt.name)
    budget, every = int(run.config.train.steps), int(run.config.train.eval_every)
    m = _net_metrics(run, budget, every)
    m["steps_to_target"], m["reached"] = _steps(run, target, m["_censor"])
    best = best_rates(run, m["train_loss"])
    per_opt[opt] = (run, best, m)
    rows += _rows(opt, run, m, best)
    extra = {k: v for k, v in m.items() if not k.startswith("_")}
    for r in tables.net_rows(run, extra):
      r["optimizer"] = opt
      net_rows.append(r)
    for d in sorted({n.depth for n in run.nets}):
      nets = {v: _at_best(run, best, v, d) for v in VARIANTS}
      for v in VARIANTS:
        idx = nets[v]
        best_rows.append({
            "optimizer": opt, "variant": v, "depth": d, "best_lr": best[(v, d)]["best_lr"],
            "bracketed": best[(v, d)]["bracketed"], "n": len(idx),
            "reached": int(m["reached"][idx].sum()),
            **tables.stat_cols("train_loss", tables.ci95_in(m["train_loss"][idx], "loss")),
            **tables.stat_cols("steps_to_target_median",
                               rstats.median_ci(m["steps_to_target"][idx])),
            **{k: tables.g6(v_) for k, v_ in (
                (f"{g}_{w}", float(np.nanmean(m[f"{g}_{w}"][idx])))
                for g in GEOMETRY for w in ("init", "end"))}})
      tag = f"{opt}, depth {d}"
      fam["steps"][f"steps to loss {target:g} (plain - residual): {tag}"] = _pair(
          m["steps_to_target"], nets["plain"], nets["residual"], run)
      fam["auc"][f"mean log training loss (plain - residual): {tag}"] = _pair(
          m["mean_log_loss"], nets["plain"], nets["residual"], run)
      for key in CONTRASTED:
        fam["end"][f"{key} at the end (plain - residual): {tag}"] = _pair(
            m[f"{key}_end"], nets["plain"], nets["residual"], run)
        if name == next(iter(trained)):  # Init is the same for every optimizer and rate.
          fam["init"][f"{key} at init (plain - residual): depth {d}"] = _pair(
              m[f"{key}_init"], nets["plain"], nets["residual"], run)
  contrasts = {}
  for key, label in (("steps", "convergence: steps"), ("auc", "convergence: mean log loss"),
                     ("init", "geometry at init"), ("end", "geometry at the end")):
    contrasts.update(tables.verdicts(fam[key], label, power))
  contrasts.update(_correlations(per_opt, power))
  return {"rows": rows, "net_rows": net_rows, "best": best_rows, "contrasts": contrasts,
          "rules": {"best_rate": "lowest mean final full training loss over seeds (diverged "
                                 "= +inf; ties: lower rate); at a grid edge: not bracketed",
                    "steps_censored_at": "budget + eval_every",
                    "rates": {opt: sorted({n.lr for n in r.nets}) for opt, (r, _, _) in
                              per_opt.items()}},
          "target_loss": target,
          "figure_data": _figure_data(per_opt)}


def _figure_data(per_opt: dict) -> dict:
  """Per optimizer, variant and depth at the best rate: geometry and loss (mean, 95% CI),
  and the last layer's erank and cosine over training at the deepest depth."""
  out: dict[str, Any] = {"series": {}, "trajectories": {}, "best_lr": {}, "scatter": []}
  for opt, (run, best, m) in per_opt.items():
    depths = sorted({n.depth for n in run.nets})
    out["depths"] = depths
    for v in VARIANTS:
      idx = {d: _at_best(run, best, v, d) for d in depths}
      for key in ("cosine_init", "erank_init", "cosine_end", "erank_end", "train_loss"):
        bounds = (-1.0, 1.0) if key.startswith("cosine") else (0.0, np.inf)
        out["series"][f"{opt}/{v}/{key}"] = tables.series(depths, [rstats.mean_ci(
            m[key][idx[d]][np.isfinite(m[key][idx[d]])], bounds=bounds) for d in depths])
      out["series"][f"{opt}/{v}/steps"] = tables.series(
          depths, [rstats.median_ci(m["steps_to_target"][idx[d]]) for d in depths])
      out["best_lr"][f"{opt}/{v}"] = {"depths": depths,
                                      "lr": [best[(v, d)]["best_lr"] for d in depths],
                                      "bracketed": [best[(v, d)]["bracketed"] for d in depths]}
      deep = depths[-1]
      for field, key in (("entropy_rank_gram", "erank"), ("cosine", "cosine")):
        traj = [_trajectory(m["_probes"][run.index[i]], deep, field) for i in idx[deep]]
        vals = np.asarray([t[1] for t in traj], np.float64)
        out["trajectories"][f"{opt}/{v}/{key}"] = tables.series(traj[0][0], [rstats.mean_ci(
            vals[:, j], bounds=(0.0, np.inf)) for j in range(vals.shape[1])])
      for d in depths:
        for i in idx[d]:
          out["scatter"].append({"optimizer": opt, "variant": v, "depth": d,
                                 "erank_init": tables.g6(m["erank_init"][i]),
                                 "train_loss": tables.g6(m["train_loss"][i])})
    out["rates"] = out.get("rates", {})
    out["rates"][opt] = sorted({n.lr for n in run.nets})
    out["title"] = f"{run.title()}, layer norm"
    out["steps"] = int(run.config.train.steps)
  return out


def figure(tabs: dict[str, Any]):
  """Top: the last hidden layer's cosine and erank vs depth at init and at the end,
  and the final training loss; bottom: erank over training at the deepest depth,
  the steps to the target and each cell's best rate (open: not bracketed)."""
  data = tabs["figure_data"]
  depths = data["depths"]
  opts = list(data["rates"])
  dash = {o: ls for o, ls in zip(opts, ("-", "--", ":"))}
  with style.context():
    fig, axes = style.figure((14.0, 8.4), 2, 3, squeeze=False)
    for ax, key in ((axes[0, 0], "cosine"), (axes[0, 1], "erank")):
      for v in VARIANTS:
        figures.line(ax, data["series"][f"{opts[0]}/{v}/{key}_init"], color=COLORS[v],
                     ls=":", marker="s", label=f"{LABELS[v]}, init")
      _lines(ax, data["series"], f"{key}_end", opts, dash, ", end")
      _label(ax, f"{'mean pairwise cosine' if key == 'cosine' else 'effective rank (uncentred)'}"
             ", last hidden layer", f"{key} at init and after training (best rate)", depths)
    _lines(axes[0, 2], data["series"], "train_loss", opts, dash)
    _label(axes[0, 2], "final full training loss (best rate)",
           "final training loss at each cell's best rate", depths)
    _lines(axes[1, 0], data["trajectories"], "erank", opts, dash, marker=None)
    _label(axes[1, 0], "effective rank (uncentred)",
           f"depth {depths[-1]}: last hidden layer during training (best rate)")
    _lines(axes[1, 1], data["series"], "steps", opts, dash, fill=False)
    axes[1, 1].axhline(data["steps"], color="0.4", lw=0.8, ls="--")
    _label(axes[1, 1], f"steps to training loss <= {tabs['target_loss']:g} (median)",
           "convergence at the best rate (dashed: budget; above: not reached)", depths)
    _rates_panel(axes[1, 2], data, opts, dash)
    figures.finish(fig, f"Rank collapse: {data['title']}, plain vs residual, "
                   f"{data['steps']} steps", figures.footer(
                       tabs, extra="; steps: medians, order-statistic 95% intervals "
                       "(none below 6 seeds)"))
  return fig


def _lines(ax, series: dict, key: str, opts: list[str], dash: dict, tag: str = "",
           **kw) -> None:
  """One line per variant and optimizer of `series['<opt>/<variant>/<key>']`."""
  for v in VARIANTS:
    for o in opts:
      figures.line(ax, series[f"{o}/{v}/{key}"], color=COLORS[v], ls=dash[o],
                   label=f"{LABELS[v]}{tag}, {o}", **kw)


def _label(ax, ylabel: str, title: str, depths: list[int] | None = None) -> None:
  """Axis labels, title and legend; a depth axis when `depths` is given."""
  if depths is not None:
    style.log2_axis(ax, depths)
  ax.set_xlabel("depth (hidden layers)" if depths is not None else "training step")
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=9)
  ax.legend(frameon=False, fontsize=7)


def _rates_panel(ax, data: dict, opts: list[str], dash: dict) -> None:
  """Each cell's best rate per depth; open markers: at a grid edge (not bracketed)."""
  shift = {v: f for v, f in zip(VARIANTS, (0.96, 1.04))}
  for o in opts:
    for v in VARIANTS:
      b = data["best_lr"][f"{o}/{v}"]
      x = np.asarray(b["depths"], np.float64) * shift[v]
      ax.plot(x, b["lr"], color=COLORS[v], ls=dash[o], lw=1.0, label=f"{LABELS[v]}, {o}")
      for xi, lr, ok in zip(x, b["lr"], b["bracketed"]):
        ax.plot([xi], [lr], "o", color=COLORS[v], mfc=COLORS[v] if ok else "white")
    for edge in (data["rates"][o][0], data["rates"][o][-1]):
      ax.axhline(edge, color="0.75", lw=0.7, ls=dash[o])
  ax.set_yscale("log")
  _label(ax, "best learning rate", "best rate per cell (open: at a grid edge; grey: edges)",
         data["depths"])


def headline(result: dict) -> dict[str, str]:
  """{'C5': one sentence} from study.json alone."""
  c, best = result["contrasts"], result["best"]
  opt = best[0]["optimizer"]  # Init does not depend on the optimizer.
  at = {(b["variant"], b["depth"]): b for b in best if b["optimizer"] == opt}
  lo, hi = min(d for _, d in at), max(d for _, d in at)
  init = [v for v in c.values() if v["family"] == "geometry at init"]
  steps = [v for v in c.values() if v["family"] == "convergence: steps"]
  found = [v for v in steps if tables.verdict(v).startswith("detected")]
  edge = sum(not b["bracketed"] for b in best)
  return {"C5": (
      f"At init the plain nets' last layer collapses with depth (uncentred effective rank "
      f"{at[('plain', lo)]['erank_init']:.2f} at depth {lo} to {at[('plain', hi)]['erank_init']:.2f}"
      f" at {hi}, mean cosine {at[('plain', hi)]['cosine_init']:.3f}; residual "
      f"{at[('residual', lo)]['erank_init']:.2f} to {at[('residual', hi)]['erank_init']:.2f}; "
      f"{sum(tables.verdict(v).startswith('detected') for v in init)} of {len(init)} "
      "plain-minus-residual "
      f"init contrasts detected after Holm with {result['config']['seeds']} seeds); at each "
      f"cell's best rate ({edge} of {len(best)} not bracketed) plain nets are detectably slower "
      f"to loss {result['target_loss']:g} in {len(found)} of {len(steps)} (optimizer, depth) "
      f"contrasts (Holm over {len(steps)}), "
      f"{sum(v['plain_mean'] >= v['residual_mean'] for v in steps)} of {len(steps)} point "
      "estimates slower.")}
