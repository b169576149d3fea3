"""Collapse inside training (C1-C3): test accuracy vs the width n of a first layer on 2-D
spirals, ReLU vs linear vs identity-plus-ReLU, beside the untrained collapse curve of
`resjax.collapse.sweep` (MobileNetV2 Fig. 1 and Appendix A).
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from resjax import collapse, errors, files, train
from resjax import stats as rstats
from resjax.plotting import style
from resjax.studies import figures, runs, tables
from resjax.studies.figures import COLORS

FAMILIES = ("firstlayer",)
# The fields of its own this study reads: the untrained curve's sweep config
# (the sweep's rules; its widths come from the grid, its figure from the study).
RULES = {f"collapse.{k}": r for k, r in collapse.RULES.items()
         if k.split(".")[0] not in ("dims", "figure")}
_LABELS = {"relu": "ReLU(z)", "linear": "z (linear)", "residual": "z + ReLU(Uz + c)"}


def _sweep_config(config, widths: Sequence[int]) -> dict[str, Any]:
  """The untrained curve's sweep config (`config.collapse`) at `widths`."""
  c = config.collapse
  return {"activations": tuple(c.activations), "dims": tuple(widths), "seeds": c.seeds,
          "seed": c.seed, "chunk": c.chunk, "manifold": dict(c.manifold)}


def validate(config) -> None:
  """`config.collapse` checked as `launch.sweep` checks a sweep, before any grid trains."""
  try:
    collapse.spec_from_config(_sweep_config(config, (1,)))
  except errors.ConfigError as e:
    raise errors.ConfigError(f"collapse.{e}") from None


def _collapse_curve(config, widths: Sequence[int], workdir: str, log) -> dict[str, Any]:
  """The untrained collapse curve at the study's widths (cached in the workdir)."""
  path = os.path.join(workdir, "collapse_sweep.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  cfg = _sweep_config(config, tuple(int(w) for w in widths))
  if log:
    log(f"untrained collapse curve: resjax.collapse.sweep over n = {cfg['dims']}")
  res = collapse.sweep(cfg)
  out = {"dims": [int(n) for n in res["dims"]], "activations": list(res["activations"]),
         "seeds": int(res["seeds"])}
  for key in ("collapsed_frac", "dead_frac", "collapsed_frac_theory", "dead_frac_theory"):
    out[key] = np.asarray(res[key])[0, 0].tolist()  # d = first manifold dim, first activation
  files.write_json(path, out)
  return out


def _first_layer(run: runs.GridRun) -> dict[str, np.ndarray]:
  """Per net, from the probes of the ReLU first layer ('relu' nets only; NaN elsewhere)."""
  nan = np.full(len(run.nets), np.nan)
  out = {k: nan.copy() for k in ("under2_on_init", "under2_on_trained", "none_on_trained",
                                 "dead_first_trained")}
  for i in run.probes_final:
    first = run.probes_final[i]["layers"][0]
    out["under2_on_init"][i] = run.probes_init[i]["layers"][0]["few_on"]
    out["under2_on_trained"][i] = first["few_on"]
    out["none_on_trained"][i] = first["all_off"]
    out["dead_first_trained"][i] = len(first["dead_units"]) / first["units"]
  return out


def analyze(config, trained: dict[str, runs.GridRun], workdir: str, log) -> dict[str, Any]:
  """Rows per condition, other-minus-ReLU contrasts, the untrained curve beside them."""
  run = next(iter(trained.values()))
  runs.probe_grid(run, log, which=lambda n: n.variant == "relu")
  probed = _first_layer(run)
  metrics = {"test_acc": tables.final(run, "test_acc"), "train_acc": tables.final(run, "train_acc"),
             "train_loss": tables.final(run, "train_loss"), **probed}
  rows = tables.condition_rows(run, metrics)
  points = len(train.load_data(run.config).train.labels)
  tables.fractions(rows, run, {k: metrics[k] for k in ("under2_on_init", "under2_on_trained",
                                                       "none_on_trained")}, lambda r: points)
  tables.fractions(rows, run, {"dead_first_trained": probed["dead_first_trained"]},
                   lambda r: r["width"])
  net_rows = tables.net_rows(run, {k: probed[k] for k in ("under2_on_init", "under2_on_trained")})
  by = tables.groups(run)
  widths = sorted({n.width for n in run.nets})
  variants = tables.variants(run, ("relu", "linear", "residual"))
  contrasts = {}
  for w in widths:
    for other in ("linear", "residual"):
      if {"relu", other} <= set(variants):
        contrasts[f"n={w}: test_acc({other}) - test_acc(relu)"] = tables.paired(
            run, metrics["test_acc"], (other, w, 1), ("relu", w, 1))
  curve = _collapse_curve(config, widths, workdir, log)
  seeds_u, size = np.asarray(curve["collapsed_frac"]), int(config.collapse.manifold.points)
  for row in rows:
    j = curve["dims"].index(row["width"])
    row.update(tables.stat_cols("untrained_collapsed",
                                rstats.cluster_wilson(seeds_u[j], size=size)))
    row["untrained_collapsed_theory"] = tables.g6(curve["collapsed_frac_theory"][j])
  curves, series = {"untrained": curve}, {}
  for v in variants:
    series[f"{v}/test_acc"] = tables.series(
        widths, [tables.ci95_in(metrics["test_acc"][by[(v, w, 1)]], "frac") for w in widths])
    curves[f"{v}/test_acc"] = series[f"{v}/test_acc"]["mean"]
  series["untrained"] = tables.series(curve["dims"], [
      rstats.cluster_wilson(seeds_u[j], size=size) for j in range(len(curve["dims"]))])
  if "relu" in variants:
    for key, tag in (("under2_on_init", "at init"), ("under2_on_trained", "after training")):
      series[f"relu/under2_on/{tag}"] = tables.series(
          widths, [rstats.cluster_wilson(probed[key][by[("relu", w, 1)]]) for w in widths])
      curves[f"relu/under2_on/{tag}"] = series[f"relu/under2_on/{tag}"]["mean"]
  return {"rows": rows, "net_rows": net_rows, "contrasts": tables.holm(contrasts),
          "curves": curves, "figure_data": {"widths": widths, "variants": variants,
                                            "steps": int(run.config.train.steps),
                                            "series": series}}


def figure(tabs: dict[str, Any]):
  """Test accuracy vs n (left); inputs with < 2 units on duty, untrained and trained (right)."""
  data, series, curve = tabs["figure_data"], tabs["figure_data"]["series"], \
      tabs["curves"]["untrained"]
  widths = data["widths"]
  with style.context():
    fig, axes = style.figure((10, 3.8), 1, 2)
    ax = axes[0]
    for v in data["variants"]:
      figures.line(ax, series[f"{v}/test_acc"], color=COLORS[v], label=_LABELS[v])
    style.log2_axis(ax, widths)
    ax.set_xlabel("width n of the first layer (z = Wx + b)")
    ax.set_ylabel(f"test accuracy after {data['steps']} steps")
    ax.set_title("trained: 2-D spirals through a width-n first layer")
    ax.legend(frameon=False, title="first-layer output", title_fontsize=8)
    ax = axes[1]
    figures.line(ax, series["untrained"], color="0.25",
                 label=f"random T, measured (untrained, {curve['seeds']} draws)")
    ax.plot(curve["dims"], curve["collapsed_frac_theory"], color="0.25", ls=":", marker=None,
            label=r"theory $P(\mathrm{Bin}(n, \frac{1}{2}) < 2)$")
    if "relu" in data["variants"]:
      for ls, tag in (("--", "at init"), ("-", "after training")):
        figures.line(ax, series[f"relu/under2_on/{tag}"], color=COLORS["relu"], ls=ls,
                     label=f"ReLU first layer, {tag}",
                     marker="o" if tag == "after training" else "s")
    style.log2_axis(ax, widths)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("width n")
    ax.set_ylabel("inputs with < 2 units on duty")
    ax.set_title("collapse: fewer units on duty than the manifold's dimension")
    ax.legend(frameon=False, fontsize=7)
    figures.finish(fig, "ReLU collapse inside training (MobileNetV2 Fig. 1 and Appendix A)",
                   figures.footer(tabs, extra="; right: seed-clustered Wilson intervals"))
  return fig


def headline(result: dict[str, Any]) -> dict[str, str]:
  """C1 and C2 in a sentence each, from study.json."""
  linear = {int(k.split(":")[0][2:]): c for k, c in result["contrasts"].items()
            if "(linear)" in k}
  found = [n for n, c in sorted(linear.items()) if c.get("holm_reject")]
  narrow = min(linear)
  c1 = (f"a trained linear first layer minus a ReLU one of width n on 2-D spirals, test "
        f"accuracy in points: n = {narrow} {tables.verdict_text(linear[narrow], 100, 1)}")
  if narrow + 1 in linear:
    c1 += f"; n = {narrow + 1} {tables.verdict_text(linear[narrow + 1], 100, 1)}"
  size = linear[narrow].get("family_size", len(linear))
  c1 += (f"; detected after Holm at n = {', '.join(map(str, found)) or 'no width'} of "
         f"the {len(linear)} widths (Holm among {size}).")
  relu = sorted((r for r in result["rows"] if r["variant"] == "relu"), key=lambda r: r["width"])
  # n = 2, 3 match by symmetry, not as evidence; where the theory is below 0.1% every
  # share is 0 and says nothing.
  informative = [r for r in relu if r["width"] >= 4 and r["untrained_collapsed_theory"] >= 1e-3]
  inside = [r for r in informative if r["untrained_collapsed_lo"] <=
            r["untrained_collapsed_theory"] <= r["untrained_collapsed_hi"]]
  tested = [r["width"] for r in informative]
  share = "/".join(f"{100 * r['untrained_collapsed']:.2g}" for r in informative)
  theory = "/".join(f"{100 * r['untrained_collapsed_theory']:.2g}" for r in informative)
  trained = "/".join(f"{100 * r['under2_on_trained']:.1f}" for r in relu[:3])
  init = "/".join(f"{100 * r['under2_on_init']:.1f}" for r in relu[:3])
  c2 = (f"random ReLU layers leave {share}% of spiral points with fewer than 2 units on at "
        f"n = {'/'.join(map(str, tested))} against the Binomial's {theory}% (theory inside "
        f"the interval at {len(inside)} of {len(tested)}); training moves it: "
        f"{trained}% at n = {'/'.join(str(r['width']) for r in relu[:3])} after training, "
        f"{init}% at init (no paired test).")
  return {"C1": c1, "C2": c2}
