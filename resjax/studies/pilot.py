"""The learning-rate pilot: per family, the rate with the lowest final training loss
among a few (reported, not applied: the studies keep configs/study.py's rates).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from resjax import schema
from resjax.plotting import style
from resjax.studies import figures, runs, tables
from resjax.studies.figures import COLORS, LABELS

FAMILIES = ("mlp", "resnet", "invres")
# The rate each grid's study uses, by grid name (only reported beside the pilot's pick).
RULES = {f"study_rates.{grid}": schema.Float(0, low_open=True, optional=True)
         for grid in ("mlp", "conv", "invres")}


def tiny(config) -> None:
  """The MLPs only (the conv families run tiny in their studies)."""
  for name in [n for n in config.grids.keys() if n != "mlp"]:
    del config.grids[name]


def _lowest(lrs, score: dict) -> float:
  return min(lrs, key=lambda lr: score[lr] if math.isfinite(score[lr]) else math.inf)


def _grid(config, name: str, run: runs.GridRun, log) -> tuple[list, dict, dict]:
  """One family's rows, its choice, and what its panel draws."""
  loss = tables.final(run, "train_loss")
  by = tables.groups(run, ("variant", "width", "depth", "lr"))
  lrs = sorted({n.lr for n in run.nets})
  variants = sorted({n.variant for n in run.nets})
  rows = []
  for (v, w, d, lr), idx in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][3])):
    row = {"grid": name, "variant": v, "width": w, "depth": d, "lr": lr, "n": len(idx)}
    row.update(tables.stat_cols("train_loss_geomean", tables.geo_ci95(loss[idx])))
    for key in ("train_acc", "test_acc"):
      row.update(tables.stat_cols(key, tables.ci95_in(tables.final(run, key)[idx], key)))
    rows.append(row)
  score = {lr: tables.geo_ci95(loss[[i for i, n in enumerate(run.nets) if n.lr == lr]])[0]
           for lr in lrs}
  score = {lr: s if math.isfinite(s) else math.inf for lr, s in score.items()}
  best = min(lrs, key=lambda lr: score[lr])
  cell = {(v, lr): by[next(k for k in by if k[0] == v and k[3] == lr)]
          for v in variants for lr in lrs}
  per_variant = {v: _lowest(lrs, {lr: tables.geo_ci95(loss[cell[(v, lr)]])[0] for lr in lrs})
                 for v in variants}
  study_rate = float(config.study_rates[name]) if name in config.get("study_rates", {}) else None
  chosen = {"model": run.config.model.name, "data": run.config.data.name,
            "chosen_lr": best, "chosen_lr_per_variant": per_variant, "study_lr": study_rate,
            "agrees": None if study_rate is None else bool(math.isclose(best, study_rate)),
            "train_loss_geomean_per_lr": {f"{lr:g}": tables.g6(score[lr]) for lr in lrs}}
  for row in rows:
    row["chosen"] = bool(math.isclose(row["lr"], best))
  if log:
    used = f"; the studies use {study_rate:g}" if study_rate is not None else ""
    log(f"pilot [{name}] {run.config.model.name} on {run.config.data.name}: lowest final "
        f"training loss at lr {best:g} (per variant: "
        f"{', '.join(f'{v} {r:g}' for v, r in per_variant.items())}){used}")
  panel = {"title": f"{run.title()}, {run.config.train.steps} steps", "lrs": lrs,
           "variants": variants, "best": best, "best_score": score[best], "study_lr": study_rate,
           "score": [score[lr] for lr in lrs],
           "geomean": {v: [tables.geo_ci95(loss[cell[(v, lr)]])[0] for lr in lrs]
                       for v in variants},
           "nets": {v: [[tables.g6(x) for x in loss[cell[(v, lr)]]] for lr in lrs]
                    for v in variants}}
  return rows, chosen, panel


def analyze(config, trained: dict[str, runs.GridRun], workdir: str, log) -> dict[str, Any]:
  """Rows per (variant, rate), the chosen rate per family."""
  del workdir
  rows, net_rows, chosen, panels = [], [], {}, []
  for name, run in trained.items():
    net_rows += tables.net_rows(run)
    grid_rows, chosen[name], panel = _grid(config, name, run, log)
    rows += grid_rows
    panels.append(panel)
  return {"rows": rows, "net_rows": net_rows, "contrasts": {}, "curves": {}, "chosen": chosen,
          "figure_data": {"panels": panels}}


def _panel(ax, p: dict) -> None:
  lrs = p["lrs"]
  for j, v in enumerate(p["variants"]):
    col = COLORS.get(v, f"C{j}")
    ax.plot(lrs, figures.arr(p["geomean"][v]), color=col, marker=None, label=LABELS.get(v, v))
    for lr, losses in zip(lrs, p["nets"][v]):
      ax.scatter(np.full(len(losses), lr) * (1.0 + 0.04 * (j - 0.5)), figures.arr(losses),
                 color=col, s=12, zorder=3)
  ax.plot(lrs, figures.arr(p["score"]), color="k", ls="--", marker=None, lw=1,
          label="both variants (geo. mean)")
  ax.axvline(p["best"], color="k", lw=0.8, ls=":")
  ax.text(p["best"], figures.arr([p["best_score"]])[0], f" lowest: {p['best']:g}", fontsize=7,
          va="bottom")
  if p["study_lr"] is not None:
    ax.axvline(p["study_lr"], color="#d2691e", lw=2, alpha=0.3,
               label=f"studies' rate {p['study_lr']:g}")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xticks(lrs)
  ax.set_xticklabels([f"{lr:g}" for lr in lrs])
  ax.minorticks_off()
  ax.set_xlabel("Adam learning rate (constant)")
  ax.set_ylabel("final training loss (geo. mean)")
  ax.set_title(p["title"], fontsize=9)
  ax.legend(frameon=False, fontsize=7)


def figure(tabs: dict[str, Any]):
  """Per family: final training loss vs rate, single nets and geometric means."""
  panels = tabs["figure_data"]["panels"]
  with style.context():
    fig, axes = style.figure((4.4 * len(panels), 3.8), 1, len(panels), squeeze=False)
    for c, p in enumerate(panels):
      _panel(axes[0, c], p)
    figures.finish(fig, "Learning-rate pilot: lowest final training loss per family",
                   f"dots: single nets ({tabs['config']['seeds']} seeds per variant and rate); "
                   "lines: geometric means; dotted: the lowest rate, shaded: the rate the "
                   "studies use")
  return fig
