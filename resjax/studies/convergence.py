"""Convergence speed (C5): steps to reach a target full training loss, plain vs residual
MLPs with the same budget (median over seeds, order-statistic interval), and the curves.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from resjax import schema
from resjax import stats as rstats
from resjax.plotting import style
from resjax.studies import figures, runs, tables
from resjax.studies.figures import COLORS, LABELS

FAMILIES = ("mlp",)


RULES = {"target_loss": schema.Float(0, low_open=True)}


def validate(config) -> None:
  """ConfigError unless target_loss > 0."""
  schema.check(config, RULES)


def steps_to_target(run: runs.GridRun, target: float) -> np.ndarray:
  """First evaluation step with full training loss <= target; inf if never."""
  hit = run.history["train_loss"] <= target
  first = np.argmax(hit, axis=1)
  return np.where(hit.any(1), run.eval_steps[first].astype(np.float64), np.inf)


def _rows(run: runs.GridRun, steps: np.ndarray, target: float, seed: int) -> list[dict]:
  rows = []
  for (v, wd, d), idx in tables.groups(run).items():
    s = steps[idx]
    row = {"grid": run.name, "variant": v, "width": wd, "depth": d, "lr": run.nets[idx[0]].lr,
           "n": len(idx), "target_loss": target}
    row.update(tables.stat_cols("steps_to_target_median", rstats.median_ci(s)))
    row.update(tables.stat_cols("reached_fraction",
                                rstats.wilson(int(np.isfinite(s).sum()), len(s))))
    for key in ("train_loss", "train_acc"):
      row.update(tables.stat_cols(f"final_{key}", tables.ci95_in(tables.final(run, key)[idx], key)))
    rows.append(row)
  return rows


def analyze(config, trained: dict[str, runs.GridRun], workdir: str, log) -> dict[str, Any]:
  """Rows per condition, contrasts of the mean log loss over training, the curves."""
  del workdir, log
  run = next(iter(trained.values()))
  target, budget = float(config.target_loss), int(run.config.train.steps)
  steps = steps_to_target(run, target)
  by = tables.groups(run)
  depths = sorted({n.depth for n in run.nets})
  variants = tables.variants(run, ("plain", "residual"))
  w = run.nets[0].width
  contrasts = {}
  auc = np.log(np.maximum(run.history["train_loss"], 1e-12)).mean(1)
  for d in depths:
    contrasts[f"depth {d}: mean log train loss over training (plain - residual)"] = tables.paired(
        run, auc, ("plain", w, d), ("residual", w, d))
  curves, series, missed = {"eval_steps": [int(s) for s in run.eval_steps]}, {}, []
  for v in variants:
    for d in depths:
      loss = run.history["train_loss"][by[(v, w, d)]]
      s = tables.series(run.eval_steps, [tables.geo_ci95(loss[:, t]) for t in range(loss.shape[1])])
      series[f"{v}/depth{d}/train_loss"] = s
      curves[f"{v}/depth{d}/train_loss_geomean"] = s["mean"]
  for v in variants:
    triples = [rstats.median_ci(steps[by[(v, w, d)]]) for d in depths]
    shown = [tuple(min(x, budget * 1.08) if not math.isnan(x) else x for x in t) for t in triples]
    series[f"{v}/steps_to_target"] = tables.series(depths, shown)  # Not reached: above budget.
    missed += [{"variant": v, "depth": d, "reached": int(np.isfinite(steps[by[(v, w, d)]]).sum()),
                "n": len(by[(v, w, d)])} for d, t in zip(depths, triples)
               if not math.isfinite(t[0])]
    curves[f"{v}/steps_to_target_median"] = [tables.g6(t[0]) for t in triples]
  return {"rows": _rows(run, steps, target, config.seed),
          "net_rows": tables.net_rows(run, {"steps_to_target": steps}),
          "contrasts": tables.holm(contrasts), "curves": curves,
          "figure_data": {"depths": depths, "variants": variants, "target": target,
                          "budget": budget, "title": run.title(), "missed": missed,
                          "series": series}}


def _curves_panel(ax, data: dict, series: dict, steps) -> None:
  depths, target = data["depths"], data["target"]
  shades = {d: 0.35 + 0.65 * j / max(1, len(depths) - 1) for j, d in enumerate(depths)}
  for v in data["variants"]:
    for d in depths:
      s = series[f"{v}/depth{d}/train_loss"]
      ax.plot(steps, figures.arr(s["mean"]), color=COLORS[v], alpha=shades[d],
              ls="-" if v == "residual" else "--", label=f"{LABELS[v]}, depth {d}")
      ax.fill_between(steps, figures.arr(s["lo"]), figures.arr(s["hi"]), color=COLORS[v],
                      alpha=0.10 * shades[d], lw=0)
  ax.axhline(target, color="k", lw=0.8, ls=":")
  ax.text(steps[-1], target, f" target {target:g}", va="bottom", ha="right", fontsize=7)
  ax.set_yscale("log")
  ax.set_xlabel("training step")
  ax.set_ylabel("full training loss (geometric mean)")
  ax.set_title(f"{data['title']}: training curves")
  ax.legend(frameon=False, ncol=2, fontsize=7)


def _steps_panel(ax, data: dict, series: dict) -> None:
  depths, budget, target = data["depths"], data["budget"], data["target"]
  for v in data["variants"]:
    figures.line(ax, series[f"{v}/steps_to_target"], color=COLORS[v], label=LABELS[v], fill=False)
  for m in data["missed"]:
    ax.annotate(f"not reached\n({m['reached']}/{m['n']} seeds)", (m["depth"], budget * 1.08),
                textcoords="offset points", xytext=(-12, -44), ha="right", fontsize=7,
                color=COLORS[m["variant"]],
                bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.9))
  ax.axhline(budget, color="0.4", lw=0.8, ls="--")
  ax.text(depths[0], budget, " budget (above: not reached)", va="bottom", fontsize=7, color="0.3")
  style.log2_axis(ax, depths)
  ax.set_ylim(0, budget * 1.15)
  ax.set_xlabel("depth (hidden layers)")
  ax.set_ylabel(f"steps to training loss <= {target:g} (median)")
  ax.set_title("steps to target (median, 95% order-statistic interval)")
  ax.legend(frameon=False)


def figure(tabs: dict[str, Any]):
  """Training curves (left) and the median steps to the target vs depth (right)."""
  data = tabs["figure_data"]
  with style.context():
    fig, axes = style.figure((10.5, 3.9), 1, 2)
    _curves_panel(axes[0], data, data["series"], tabs["curves"]["eval_steps"])
    _steps_panel(axes[1], data, data["series"])
    figures.finish(fig, "Convergence speed with the same budget: plain vs residual",
                   figures.footer(tabs, log_note=True))
  return fig


def headline(result: dict[str, Any]) -> dict[str, str]:
  """C5 in one sentence from study.json: median steps to the target, and the contrasts."""
  rows, target = result["rows"], result["rows"][0]["target_loss"]
  def steps(v):
    return "/".join("never" if r["steps_to_target_median"] is None else
                    f"{r['steps_to_target_median']:.0f}"
                    for r in sorted(rows, key=lambda r: r["depth"]) if r["variant"] == v)
  depths = "/".join(str(d) for d in sorted({r["depth"] for r in rows}))
  kept, size = tables.holm_count(result["contrasts"])
  diffs = ", ".join(tables.interval_text(c) for c in result["contrasts"].values())
  return {"C5": f"median steps to training loss {target} at depth {depths} (Adam "
                f"{rows[0]['lr']:g}): residual {steps('residual')}, plain {steps('plain')}; "
                f"plain minus residual mean log training loss {diffs}: {kept} of {size} "
                "detected after Holm."}
