"""Linear regime (C1, C6, C7): do trained nets escape collapse by running linear, and does
collapse in trained nets come from initialization and optimization rather than necessity?

Three grids (configs/study.py: linear_regime):

  widths  the collapse study's ReLU first layers (spirals, d = 2) at every width n
  bias    ReLU vs linear first layers at n = 2, 3, the first bias starting at 0 and at a
          value high enough that every unit is on for every input at init
          (configs/study.py LINEAR_REGIME_HIGH_BIAS, derived there from the data's radius)
  invres  the bottleneck study's nets at bottleneck widths 2 and 4, linear vs ReLU6
          bottleneck, the bottleneck BatchNorm's shift learned vs frozen at 0

Per net, at init and after training, on the whole training split
(`probes.regions.linear_shares`, the same code for every variant): the share of
inputs on which the first layer's z = Wx + b is positive in every unit (a ReLU
there acts as the identity), and on which every channel of both bottlenecks (the
projection's BatchNorm output) at every position lies in (0, 6) (ReLU6 there acts
as the identity); for linear first layers and linear bottlenecks the same share
of the outputs no activation follows.

Contrasts, paired by seed (same initial shared weights, same batches), fixed here
before the run; each family Holm-corrected on its own (its size in each contrast):

  damage     per n: test_acc(linear) - test_acc(relu) at bias 0, at the high bias, and
             the interaction (damage at 0 minus damage at the high bias)
  gap        per bottleneck width: test_acc(linear) - test_acc(relu6) with the shift
             learned, frozen, and the interaction (frozen gap minus learned gap)
  regime     per condition probed: fully-on share after training minus at init
  arm        per width and variant: test accuracy at the high bias minus at bias 0, and
             with the shift frozen minus learned (what each ablation does to each
             variant on its own; added after the grids had trained, on seeing that the
             high bias lowered the linear nets at n = 2, before any analysis ran)

Verdicts: 'detected' where the Holm-adjusted p is below 0.05 (the interval then
excludes 0); otherwise 'not detected at this power' with the smallest effect a paired
t-test of the contrast's n and SD detects with power `config.power` at the family's
strictest Holm level 0.05 / k (`stats.detectable`).
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from resjax import files, grid, restore, schema, train
from resjax import stats as rstats
from resjax.plotting import style
from resjax.probes import regions
from resjax.studies import figures, runs, tables
from resjax.studies.figures import COLORS, LABELS

FAMILIES = ("firstlayer", "invres")
RULES = {"power": schema.Float(
    0.0, 1.0, low_open=True, high_open=True,
    fix="use a number in (0, 1), e.g. 0.8 (the power of the detectable effect)"),
         "grid_seeds.invres": schema.Int(2, 10_000, fix=(
             "use an integer in [2, 10000]: the seeds of the digits grid (the costly one)"))}
# The module whose output is measured, and the activation whose region counts, per family.
MEASURED = {"firstlayer": (("first_dense",), "relu"), "invres": (("project_bn",), "relu6")}


def tiny(config) -> None:
  """Widths 2 and 3 in the widths grid; one bottleneck width."""
  config.grids.widths.grid.model.width = (2, 3)
  config.grids.invres.grid.model.stages = (((2, 2, 1),),)


def validate(config) -> None:
  """ConfigError unless `power` is in (0, 1) and the digits grid's seeds are a count."""
  schema.check(config, RULES)


def _arm(cfg) -> str:
  """A net's ablation arm: its first bias at init, or its bottleneck BN shift."""
  if cfg.model.name == "invres":
    return f"shift {cfg.model.get('bottleneck_bn_shift', 'learned')}"
  return f"bias {float(cfg.model.get('first_bias_init', 0.0)):g}"


def _shares(run: runs.GridRun, log) -> dict[str, np.ndarray]:
  """Per net, at init and trained: `share_*`, the share of samples on which every measured
  unit is in the region (a sample: an input for a dense layer, an (input, position) pair for
  a conv layer, as the probes' `linear_frac`; for the two bottlenecks the mean of their
  shares), and `input_share_*`, the share of inputs with every unit at every position in it.
  Cached in <grid>/study_shares.json (a rerun of the analysis reads it)."""
  path = os.path.join(run.workdir, "study_shares.json")
  if os.path.exists(path):
    with open(path) as f:
      return {k: np.asarray(v, np.float64) for k, v in json.load(f).items()}
  configs = [grid.nets(run.config)[k] for k in run.index]
  ds = train.load_data(run.config)
  names, act = MEASURED[run.config.model.name]
  inits = train.initial_states(configs, ds.input_shape, ds.num_classes, mean=ds.mean, std=ds.std)
  out = {k: np.full(len(configs), np.nan) for k in
         ("share_init", "share_trained", "input_share_init", "input_share_trained")}
  finals = restore.load_nets(run.workdir, run.index, devices=jax.devices()[:1])
  for i, (_, final) in enumerate(finals):
    for tag, state in (("init", inits[i]), ("trained", final)):
      got = regions.linear_shares(state, ds.train.inputs, names, act)["all"]
      out[f"share_{tag}"][i], out[f"input_share_{tag}"][i] = got["position"], got["input"]
    if log and (i + 1) % 16 == 0:
      log(f"[{run.name}] measured {i + 1}/{len(configs)} nets")
  files.write_json(path, {k: v.tolist() for k, v in out.items()})
  return out


def _verdict(c: dict, power: float) -> str:
  """The verdict of a Holm-corrected paired contrast (see the module docstring)."""
  c["detectable"] = tables.g6(rstats.detectable(c["sd"], c["n"], power,
                                                  1 - 0.05 / c["family_size"]))
  return tables.verdict(c, power)


def _family(diffs: dict[str, np.ndarray], family: str, power: float) -> dict[str, dict]:
  """Paired contrasts from per-seed differences, Holm-corrected together, with verdicts."""
  out = {}
  for key, d in diffs.items():
    d = np.asarray(d, np.float64)
    c = rstats.paired(d, np.zeros_like(d))
    out[key] = {"family": family, **{k: tables.g6(c[k]) for k in ("mean", "lo", "hi", "p")},
                "n": c["n"], "excludes_zero": c["excludes_zero"], "sd": tables.g6(c["sd"])}
  tables.holm(out)
  for c in out.values():
    c["verdict"] = _verdict(c, power)
  return out


def _by_seed(run: runs.GridRun, arm: list[str],
             metric: np.ndarray) -> dict[tuple, dict[int, float]]:
  """(variant, width, arm) -> {seed: value}."""
  out: dict[tuple, dict[int, float]] = {}
  for i, n in enumerate(run.nets):
    out.setdefault((n.variant, n.width, arm[i]), {})[n.seed] = float(metric[i])
  return out


def _minus(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
  return {s: a[s] - b[s] for s in sorted(set(a) & set(b))}


def _ablation(run: runs.GridRun, arm: list[str], acc: np.ndarray, arms: tuple[str, str],
              variants: tuple[str, str], label: str) -> dict[str, np.ndarray]:
  """Per width: the variants[0] - variants[1] accuracy difference in each arm and the
  interaction (arms[0] difference minus arms[1] difference), per seed."""
  by = _by_seed(run, arm, acc)
  out = {}
  for w in sorted({n.width for n in run.nets}):
    gap = {a: _minus(by.get((variants[0], w, a), {}), by.get((variants[1], w, a), {}))
           for a in arms}
    for a in arms:
      out[f"{label} {w}: test_acc({variants[0]}) - test_acc({variants[1]}), {a}"] = np.asarray(
          list(gap[a].values()))
    inter = _minus(gap[arms[0]], gap[arms[1]])
    out[f"{label} {w}: interaction, difference at {arms[0]} minus at {arms[1]}"] = np.asarray(
        list(inter.values()))
  return out


def _arm_effects(run: runs.GridRun, arm: list[str], acc: np.ndarray, arms: tuple[str, str],
                 label: str) -> dict[str, np.ndarray]:
  """Per width and variant: test accuracy in arms[0] minus in arms[1], per seed."""
  by = _by_seed(run, arm, acc)
  return {f"{label} {w}, {LABELS.get(v, v)}: test_acc({arms[0]}) - test_acc({arms[1]})":
          np.asarray(list(_minus(by[(v, w, arms[0])], by[(v, w, arms[1])]).values()))
          for v, w, a in sorted(by) if a == arms[0] and (v, w, arms[1]) in by}


def _grid_rows(run: runs.GridRun, arm: list[str], metrics: dict[str, np.ndarray]) -> list[dict]:
  """One row per arm and condition; shares with seed-clustered Wilson intervals."""
  rows = []
  points = len(train.load_data(run.config).train.labels)
  for a in sorted(set(arm)):
    members = [i for i in range(len(run.nets)) if arm[i] == a]
    sub = run.subset(members)
    part = tables.condition_rows(sub, {k: v[members] for k, v in metrics.items()},
                                 head={"arm": a})
    tables.fractions(part, sub, {k: v[members] for k, v in metrics.items() if "share" in k},
                     lambda r: points)
    rows += part
  return rows


def analyze(config, trained: dict[str, runs.GridRun], workdir: str, log) -> dict[str, Any]:
  """Shares per net, rows per grid, arm and condition, the three contrast families."""
  del workdir
  power = float(config.power)
  rows, net_rows, regime = [], [], {}
  diffs: dict[str, dict[str, np.ndarray]] = {"damage": {}, "gap": {}, "arm": {}}
  for name, run in trained.items():
    arm = [_arm(grid.nets(run.config)[k]) for k in run.index]
    metrics = {k: tables.final(run, k) for k in ("test_acc", "train_acc", "train_loss")}
    metrics.update(_shares(run, log))
    rows += _grid_rows(run, arm, metrics)
    extra = {k: v for k, v in metrics.items() if "share" in k}
    for r, a in zip(tables.net_rows(run, extra), arm):
      net_rows.append({**r, "arm": a})
    init, final = _by_seed(run, arm, metrics["share_init"]), \
        _by_seed(run, arm, metrics["share_trained"])
    for key in sorted(init):  # The widths grid holds the bias grid's ReLU nets at bias 0.
      if name != "bias" or (key[0] == "relu" and key[2] != "bias 0"):
        v, w, a = key
        regime[f"{name}: {LABELS.get(v, v)} width {w}, {a}: share trained - init"] = np.asarray(
            list(_minus(final[key], init[key]).values()))
    if name == "bias":
      high = max(arm)  # 'bias 6' sorts after 'bias 0'
      diffs["damage"] = _ablation(run, arm, metrics["test_acc"], ("bias 0", high),
                                  ("linear", "relu"), "n =")
      diffs["arm"].update(_arm_effects(run, arm, metrics["test_acc"], (high, "bias 0"), "n ="))
    if name == "invres":
      diffs["gap"] = _ablation(run, arm, metrics["test_acc"], ("shift frozen", "shift learned"),
                               ("linear", "relu6"), "width")
      diffs["arm"].update(_arm_effects(run, arm, metrics["test_acc"],
                                       ("shift frozen", "shift learned"), "width"))
  contrasts = {**_family(diffs["damage"], "damage", power), **_family(diffs["gap"], "gap", power),
               **_family(regime, "regime", power), **_family(diffs["arm"], "arm", power)}
  return {"rows": rows, "net_rows": net_rows, "contrasts": contrasts,
          "high_bias": max(float(grid.nets(trained["bias"].config)[k].model.first_bias_init)
                           for k in trained["bias"].index) if "bias" in trained else None,
          "figure_data": {"steps": {n: int(r.config.train.steps) for n, r in trained.items()}}}


def headline(result: dict) -> dict[str, str]:
  """One sentence per claim (C1, C6, C7) from study.json alone."""
  c, rows = result["contrasts"], result["rows"]

  def fmt(key: str, scale: float = 100.0) -> str:
    x = c[key]
    return (f"{scale * x['mean']:+.1f} {tables.bounds_text(x, scale, 1)} "
            f"(Holm p {x['p_holm']:.2g} of {x['family_size']}; {tables.verdict(x).split(' (')[0]})")

  high = f"bias {result['high_bias']:g}"
  dmg = [k for k in c if k.startswith("n = 2:")]
  arm = {v: f"n = 2, {v}: test_acc({high}) - test_acc(bias 0)" for v in ("linear", "ReLU")}
  gap = [k for k in c if c[k]["family"] == "gap" and k.startswith("width 2:")]
  on = {r["width"]: r for r in rows if r["grid"] == "widths"}
  wide = max(100 * on[n]["share_trained"] for n in on if n >= 6) if any(n >= 6 for n in on) \
      else float("nan")
  return {
      "C1": (f"At n = 2 a ReLU first layer costs {fmt(dmg[0])} points against a linear one with "
             f"the bias at 0 and {fmt(dmg[1])} with every unit on at init (bias "
             f"{result['high_bias']:g}; interaction {fmt(dmg[2])}); the high bias moves the "
             f"linear net by {fmt(arm['linear'])} and the ReLU net by {fmt(arm['ReLU'])}."),
      "C6": (f"Linear minus ReLU6 bottleneck at width 2: {fmt(gap[0])} with the BN shift "
             f"frozen, {fmt(gap[1])} learned; frozen minus learned {fmt(gap[2])}."),
      "C7": (f"Trained ReLU first layers are fully on for {100 * on[2]['share_trained']:.1f}% of "
             f"the inputs at n = 2 ({100 * on[2]['share_init']:.1f}% at init), "
             f"{100 * on[3]['share_trained']:.1f}% at n = 3 and at most {wide:.1f}% from "
             "n = 6 on."),
  }


def figure(tabs: dict[str, Any]):
  """Fully-on share vs n (init, trained, 2^-n); the ablations' accuracies; the bottleneck's
  in-range share; the paired contrasts of the two ablations."""
  rows, contrasts = tabs["rows"], tabs["contrasts"]
  with style.context():
    fig, axes = style.figure((13.0, 9.0), 2, 2, squeeze=False)
    _widths_panel(axes[0, 0], [r for r in rows if r["grid"] == "widths"])
    _bias_panel(axes[0, 1], [r for r in rows if r["grid"] == "bias"])
    _bottleneck_panel(axes[1, 0], [r for r in rows if r["grid"] == "invres"])
    _forest(axes[1, 1], {k: v for k, v in contrasts.items() if v["family"] in ("damage", "gap")})
    cfg = tabs["config"]
    digits = (cfg.get("grid_seeds") or {}).get("invres", cfg["seeds"])
    figures.finish(fig, "Linear regime: fully-on first layers and ReLU6 bottlenecks in range, "
                   "and two ablations paired by seed", (
                       f"{cfg['seeds']} seeds per point on spirals, {digits} on digits; "
                       "accuracies: 95% t-intervals over seeds; shares: seed-clustered Wilson "
                       "intervals; (d): filled where the Holm-adjusted p < 0.05"))
  return fig


def _tri(r: dict, key: str, scale: float = 100.0) -> tuple[float, float, float]:
  return tuple(scale * np.nan if r.get(k) is None else scale * float(r[k])
               for k in (key, f"{key}_lo", f"{key}_hi"))


def _widths_panel(ax, rows: list[dict]) -> None:
  if not rows:
    return
  rows = sorted(rows, key=lambda r: r["width"])
  widths = [r["width"] for r in rows]
  for key, ls, tag in (("share_init", "--", "at init"), ("share_trained", "-", "trained")):
    style.band(ax, widths, [_tri(r, key) for r in rows], color=COLORS["relu"], ls=ls,
               label=f"ReLU first layer, {tag}", fill=False,
               marker="s" if tag == "at init" else "o")
  ax.plot(widths, [100 * 2.0 ** -w for w in widths], color="0.3", ls=":", marker=None,
          label=r"$2^{-n}$ (random half-planes through 0)")
  style.log2_axis(ax, widths)
  ax.set_yscale("symlog", linthresh=0.1)
  ax.set_ylim(0, 105)
  ax.set_xlabel("first-layer width n (bias 0 at init)")
  ax.set_ylabel("inputs with every unit on (%)")
  ax.set_title("(a) spirals: is the ReLU first layer fully on?")
  ax.legend(frameon=False, fontsize=8)


def _bias_panel(ax, rows: list[dict]) -> None:
  arms = sorted({r["arm"] for r in rows})
  widths = sorted({r["width"] for r in rows})
  x0, ticks = 0, []
  for w in widths:
    for a in arms:
      for j, v in enumerate(("relu", "linear")):
        r = next((r for r in rows if (r["width"], r["arm"], r["variant"]) == (w, a, v)), None)
        if r is None:
          continue
        m, lo, hi = _tri(r, "test_acc")
        ax.errorbar([x0 + 0.3 * j], [m], yerr=[[m - lo], [hi - m]], fmt="o", color=COLORS[v],
                    label=LABELS[v] if (w, a) == (widths[0], arms[0]) else None)
        if v == "relu":
          ax.annotate(f"on {_tri(r, 'share_trained')[0]:.0f}%", (x0, m), fontsize=7,
                      xytext=(6, 0), textcoords="offset points", ha="left", va="center")
      ticks.append((x0 + 0.15, f"n={w}\n{a}"))
      x0 += 1
  _ticks(ax, ticks, 8)
  ax.set_ylabel("test accuracy (%)")
  ax.set_title("(b) first bias at 0 vs high: ReLU vs linear (ReLU: fully-on share trained)")
  ax.legend(frameon=False, fontsize=8)


def _bottleneck_panel(ax, rows: list[dict]) -> None:
  x0, ticks = 0, []
  for r in sorted(rows, key=lambda r: (r["width"], r["arm"], r["variant"])):
    for j, (key, marker) in enumerate((("share_init", "s"), ("share_trained", "o"))):
      m, lo, hi = _tri(r, key)
      ax.errorbar([x0 + 0.25 * j], [m], yerr=[[m - lo], [hi - m]], fmt=marker,
                  color=COLORS[r["variant"]], mfc="white" if j == 0 else COLORS[r["variant"]])
    ticks.append((x0 + 0.12, f"w{r['width']} {LABELS[r['variant']]}\n{r['arm'].split()[1]}"))
    x0 += 1
  _ticks(ax, ticks, 7)
  ax.set_ylabel("(input, position) pairs with every\nbottleneck channel in (0, 6) (%)")
  ax.set_title("(c) digits: bottleneck in ReLU6's linear range (open: init, filled: trained)")


def _ticks(ax, ticks: list[tuple[float, str]], size: float) -> None:
  """Labelled x ticks at the given positions."""
  ax.set_xticks([t for t, _ in ticks])
  ax.set_xticklabels([label for _, label in ticks], fontsize=size)


def _forest(ax, contrasts: dict[str, dict]) -> None:
  keys = list(contrasts)
  for y, k in enumerate(keys):
    c = contrasts[k]
    mean, lo, hi = (np.nan if c[f] is None else 100 * c[f] for f in ("mean", "lo", "hi"))
    color = "k" if "interaction" in k else ("0.45" if c["family"] == "gap" else COLORS["relu"])
    ax.plot([lo, hi], [y, y], color=color, lw=1.6)
    ax.plot([mean], [y], "o", color=color, mfc=color if c["holm_reject"] else "white")
  ax.axvline(0.0, color="0.5", lw=0.8)
  ax.set_yticks(range(len(keys)))
  ax.set_yticklabels([k.replace("test_acc", "acc") for k in keys], fontsize=6.5)
  ax.invert_yaxis()
  ax.set_xlabel("paired difference in test accuracy (points)")
  ax.set_title("(d) the ablations' contrasts (95% intervals)")
