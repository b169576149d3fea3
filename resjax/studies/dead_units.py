"""Dead units vs width and depth (C4; C7 per layer): dead units per layer and per unit,
at init and after training, plain vs residual MLPs on spirals.

A unit is dead when it is never on duty on the training set (probes.run).
Rows: dead fractions with seed-clustered Wilson intervals, per-unit recoveries
and new deaths pooled over seeds (Wilson), inputs on which layer 1 or 2 is
fully on (C7) beside 2^-width.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from resjax import stats as rstats
from resjax import train
from resjax.plotting import style
from resjax.studies import figures, runs, tables
from resjax.studies.figures import COLORS, LABELS

FAMILIES = ("mlp",)


def _dead(p: dict) -> tuple[np.ndarray, float]:
  """Per-layer dead fraction and the fraction over all units of one probe result."""
  units = np.asarray([l["units"] for l in p["layers"]], np.float64)
  dead = np.asarray([len(l["dead_units"]) for l in p["layers"]], np.float64)
  return dead / np.maximum(units, 1), float(dead.sum() / max(units.sum(), 1))


def _recovery(p0: dict, p1: dict) -> tuple[int, int, int, int]:
  """(dead at init, of them alive at the end, alive at init, of them dead at the end)."""
  d0 = d0_alive = a0 = a0_dead = 0
  for l0, l1 in zip(p0["layers"], p1["layers"]):
    dead0, dead1 = set(l0["dead_units"]), set(l1["dead_units"])
    d0 += len(dead0)
    d0_alive += len(dead0 - dead1)
    a0 += l0["units"] - len(dead0)
    a0_dead += len(dead1 - dead0)
  return d0, d0_alive, a0, a0_dead


def _per_unit(rows: list[dict], run: runs.GridRun, rec: np.ndarray, lin: dict) -> None:
  """Adds recoveries and new deaths (pooled Wilson) and C7's fully-on inputs to `rows`."""
  by = tables.groups(run)
  points = len(train.load_data(run.config).train.labels)
  for row in rows:
    idx = by[(row["variant"], row["width"], row["depth"])]
    d0, d0a, a0, a0d = rec[idx].sum(0)
    row.update({"units_dead_init": int(d0), "units_recovered": int(d0a),
                "units_alive_init": int(a0), "units_died": int(a0d)})
    row.update(tables.stat_cols("recovered_frac", rstats.wilson(d0a, d0)))
    row.update(tables.stat_cols("died_frac", rstats.wilson(a0d, a0)))
    for l in (0, 1):  # C7 per layer: inputs on which layer l is fully on, vs 2^-width.
      if l < row["depth"]:
        for tag, which in (("init", 0), ("trained", 1)):
          row.update(tables.stat_cols(f"linear_inputs_layer{l + 1}_{tag}", rstats.cluster_wilson(
              [lin[i][which][l] for i in idx], size=points)))
    row["linear_inputs_theory"] = tables.g6(2.0 ** -row["width"])


def analyze(config, trained: dict[str, runs.GridRun], workdir: str, log) -> dict[str, Any]:
  """Rows per condition, plain-vs-residual contrasts, dead units per layer."""
  del config, workdir
  run = next(iter(trained.values()))
  runs.probe_grid(run, log)
  k = len(run.nets)
  dead0, dead1, rec, per_layer, lin = np.zeros(k), np.zeros(k), np.zeros((k, 4)), {}, {}
  for i in range(k):
    p0, p1 = run.probes_init[i], run.probes_final[i]
    per_layer[i] = (_dead(p0)[0], _dead(p1)[0])
    dead0[i], dead1[i] = _dead(p0)[1], _dead(p1)[1]
    rec[i] = _recovery(p0, p1)
    lin[i] = ([l["all_on"] for l in p0["layers"]], [l["all_on"] for l in p1["layers"]])
  metrics = {"dead_init": dead0, "dead_trained": dead1,
             "train_acc": tables.final(run, "train_acc"), "test_acc": tables.final(run, "test_acc")}
  rows = tables.condition_rows(run, metrics)
  tables.fractions(rows, run, {"dead_init": dead0, "dead_trained": dead1},
                   lambda r: r["width"] * r["depth"])
  _per_unit(rows, run, rec, lin)
  net_rows = tables.net_rows(run, {"dead_init": dead0, "dead_trained": dead1,
                                   "units_dead_init": rec[:, 0], "units_recovered": rec[:, 1],
                                   "units_alive_init": rec[:, 2], "units_died": rec[:, 3]})
  by = tables.groups(run)
  widths, depths = sorted({n.width for n in run.nets}), sorted({n.depth for n in run.nets})
  contrasts, curves, series = {}, {}, {}
  for d in depths:
    for w in widths:
      contrasts[f"depth {d}, width {w}: dead_trained(plain) - dead_trained(residual)"] = \
          tables.paired(run, dead1, ("plain", w, d), ("residual", w, d))
  for (v, w, d), idx in by.items():
    layers = np.stack([per_layer[i][1] for i in idx])
    curves[f"{v}/width{w}/depth{d}/dead_per_layer_trained"] = [tables.g6(x) for x in layers.mean(0)]
    curves[f"{v}/width{w}/depth{d}/dead_per_layer_init"] = [
        tables.g6(x) for x in np.stack([per_layer[i][0] for i in idx]).mean(0)]
    series[f"{v}/width{w}/depth{d}/dead_per_layer_trained"] = tables.series(
        range(1, layers.shape[1] + 1), [tables.ci95_in(layers[:, l], "frac")
                                        for l in range(layers.shape[1])])
  for v in tables.variants(run, ("plain", "residual")):
    for d in depths:
      for values, tag in ((dead0, "init"), (dead1, "trained")):
        series[f"{v}/depth{d}/dead_{tag}"] = tables.series(
            widths, [tables.ci95_in(values[by[(v, w, d)]], "frac") for w in widths])
  title = (f"Dead units (never on duty on the training set): {run.title()}, "
           f"norm={run.config.model.norm}, {run.config.train.steps} steps")
  return {"rows": rows, "net_rows": net_rows, "contrasts": tables.holm(contrasts),
          "curves": curves, "figure_data": {"widths": widths, "depths": depths, "title": title,
                                            "series": series}}


def figure(tabs: dict[str, Any]):
  """Per depth: dead units vs width (top) and per layer after training (bottom)."""
  data, series = tabs["figure_data"], tabs["figure_data"]["series"]
  widths, depths = data["widths"], data["depths"]
  variants = [v for v in ("plain", "residual") if f"{v}/depth{depths[0]}/dead_init" in series]
  shown = widths[: min(3, len(widths))]
  shades = {w: 0.45 + 0.55 * j / max(1, len(shown) - 1) for j, w in enumerate(shown)}
  with style.context():
    fig, axes = style.figure((3.7 * len(depths), 6.4), 2, len(depths), squeeze=False)
    for c, d in enumerate(depths):
      ax = axes[0, c]
      for v in variants:
        for ls, tag in ((":", "init"), ("-", "trained")):
          figures.line(ax, series[f"{v}/depth{d}/dead_{tag}"], color=COLORS[v], ls=ls,
                       label=f"{LABELS[v]}, {tag}", marker="o" if tag == "trained" else "s")
      style.log2_axis(ax, widths)
      ax.set_ylim(-0.02, 1.02)
      ax.set_xlabel("width (units per layer)")
      ax.set_ylabel("dead units (fraction of all units)")
      ax.set_title(f"depth {d}: dead units vs width")
      if c == 0:
        ax.legend(frameon=False)
      ax = axes[1, c]
      for v in variants:
        for w in shown:
          figures.line(ax, series[f"{v}/width{w}/depth{d}/dead_per_layer_trained"],
                       color=COLORS[v], alpha=0.08 * shades[w], ls="-" if v == "plain" else "--",
                       label=f"{LABELS[v]}, width {w}", marker=None)
          ax.lines[-1].set_alpha(shades[w])
      ax.set_ylim(-0.02, 1.02)
      ax.xaxis.set_major_locator(figures.int_locator())
      ax.set_xlabel("layer (input side = 1)")
      ax.set_ylabel("dead units after training")
      ax.set_title(f"depth {d}: dead units per layer (trained)")
      if c == 0:
        ax.legend(frameon=False, ncol=2, fontsize=7)
    figures.finish(fig, data["title"], figures.footer(tabs))
  return fig


def headline(result: dict[str, Any]) -> dict[str, str]:
  """C4 and C7 in a sentence each, from study.json."""
  rows = result["rows"]
  deep = max(r["depth"] for r in rows)
  plain_deep = sorted((r for r in rows if r["variant"] == "plain" and r["depth"] == deep),
                      key=lambda r: r["width"])
  narrow = plain_deep[:2]
  dead = "; ".join(f"width {r['width']} {100 * r['dead_init']:.0f}% at init, "
                   f"{100 * r['dead_trained']:.0f}% trained, {r['units_recovered']} of "
                   f"{r['units_dead_init']} dead units recovered" for r in narrow)
  pairs = result["contrasts"]
  kept = [k.split(":")[0] for k, c in pairs.items() if c.get("holm_reject")]
  c4 = (f"plain depth-{deep} nets: {dead}; plain minus residual trained dead fraction: "
        f"{len(kept)} of {len(pairs)} cells detected after Holm"
        f"{' (' + '; '.join(kept) + ')' if kept else ''}.")
  shallow = sorted((r for r in rows if r["variant"] == "plain" and r["depth"] == min(
      x["depth"] for x in rows)), key=lambda r: r["width"])
  inside = [r["width"] for r in shallow if r["linear_inputs_layer1_init_lo"] <=
            r["linear_inputs_theory"] <= r["linear_inputs_layer1_init_hi"]]
  shares = ", ".join(f"{100 * r['linear_inputs_layer1_init']:.1f}% at width {r['width']} "
                     f"(2^-n = {100 * r['linear_inputs_theory']:.2g}%)" for r in shallow[:4])
  c7 = (f"the first hidden layer of plain depth-{shallow[0]['depth']} nets at init is fully "
        f"on for {shares}; 2^-n inside the seed-clustered interval at {len(inside)} of "
        f"{len(shallow)} widths; after training "
        + ", ".join(f"{100 * r['linear_inputs_layer1_trained']:.1f}%" for r in shallow[:4])
        + " at the same widths.")
  return {"C4": c4, "C7": c7}
