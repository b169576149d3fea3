"""Power (C1, C6): the linear-bottleneck and first-layer contrasts with the seeds a power
computation gives, each variant at its own bracketed learning rate.

Two families, each in two phases inside one run (grids train in name order):

  lr_<family>               rate pilot: both variants at every rate of the grid's
                            `opt.lr` axis, on the seeds rate_seed .. rate_seed +
                            rate_seeds - 1 (disjoint from the main seeds)
  main_<family>_<variant>   the main arm: one variant at the rate its pilot picked
                            (`prepare` sets opt.lr before the grid trains), seeds
                            seed .. seed + seeds - 1 (digits) or spirals_seeds (spirals)

The rate rule, fixed here before the run: per variant, the lowest geometric mean of
the final full training loss over its pilot nets (all widths of the family); a pick
at either end of the rate grid is flagged (not bracketed). Both variants of a seed
share initial weights and batches (the seed alone sets them), so the main contrasts
are paired by seed: linear minus ReLU6 test accuracy at each bottleneck width (C6)
and linear minus ReLU at n = 3 (C1), one Holm family of 3. A contrast is 'detected'
when its Holm-adjusted p is at most 0.05, else 'not detected at this power' with the
smallest effect the design detects with power `config.power` (stats.detectable:
unadjusted, and at Holm's first level 0.05 / 3).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from resjax import errors, grid, schema
from resjax import stats as rstats
from resjax.plotting import style
from resjax.studies import figures, runs, tables
from resjax.studies.figures import COLORS, LABELS

FAMILIES = ("invres", "firstlayer")
RULES = {
    "power": schema.Float(0.0, 1.0, low_open=True, high_open=True,
                          fix="use a number in (0, 1), e.g. 0.8 (the power of the "
                          "detectable effect)"),
    "spirals_seeds": schema.Int(2, 10_000, fix="use an integer in [2, 10000] (the seeds of "
                                "the first-layer nets' main grids)"),
    "rate_seed": schema.SEED,
    "rate_seeds": schema.Int(1, 100, fix="use an integer in [1, 100] (the rate pilot's seeds)"),
    "effect": schema.Float(0.0, 1.0, low_open=True, fix="use an accuracy difference in (0, 1], "
                           "e.g. 0.01 (the effect the seeds are sized for)"),
    **{f"prior_sd.{k}": schema.Float(0.0, low_open=True, fix="use the SD (> 0) of the earlier "
                                     "study's paired differences (stats.paired_sd)")
       for k in ("c6_width2", "c6_width4", "c1_n3")},
}
# The variants of each family, the second the reference (contrasts: first minus second).
PAIRS = {"invres": ("linear", "relu6"), "firstlayer": ("linear", "relu")}
CLAIMS = {"invres": "C6", "firstlayer": "C1"}
ALPHA = 0.05


def tiny(config) -> None:
  """One bottleneck width, one pilot seed, two main seeds per family."""
  config.rate_seeds, config.spirals_seeds = 1, 2
  for name, g in config.grids.items():
    if g.model.name == "invres" and name.startswith("lr_"):
      g.grid.model.stages = tuple(g.grid.model.stages)[:1]
    elif g.model.name == "invres":
      g.grid.model.stages = ()
      g.model.stages = ((2, 2, 1),)


def _family(name: str) -> str:
  return name.split("_")[1]


def grid_seeds(config, name: str) -> tuple[int, ...] | None:
  """The pilot's seeds for lr_* grids, spirals_seeds for the first-layer main grids."""
  if name.startswith("lr_"):
    return tuple(range(int(config.rate_seed), int(config.rate_seed) + int(config.rate_seeds)))
  if name.startswith("main_firstlayer"):
    return tuple(range(int(config.seed), int(config.seed) + int(config.spirals_seeds)))
  return None


def validate(config) -> None:
  """ConfigError unless the fields hold, the pilot seeds are disjoint from the main ones,
  and every main grid has its family's pilot (with a rate axis) to take its rate from."""
  schema.check(config, RULES)
  pilot = set(grid_seeds(config, "lr_"))
  main = set(range(int(config.seed), int(config.seed) + max(int(config.seeds),
                                                              int(config.spirals_seeds))))
  errors.check(not pilot & main,
               f"config.rate_seed={config.rate_seed} is not allowed; the rate pilot's seeds "
               f"overlap the main seeds {min(main)}..{max(main)}: use a rate_seed above "
               f"{max(main)}")
  for name, g in config.grids.items():
    errors.check(name.startswith(("lr_", "main_")) and _family(name) == g.model.name,
                 f"config.grids.{name} is not allowed; name the grids lr_<family> (rate "
                 "pilot) and main_<family>_<variant>")
    if name.startswith("lr_"):
      errors.check(len(g.grid.opt.lr) >= 2,
                   f"grids.{name}.grid.opt.lr={tuple(g.grid.opt.lr)} is not allowed; the "
                   "rate pilot compares rates: give two or more")
    else:
      errors.check(f"lr_{g.model.name}" in config.grids,
                   f"config.grids.{name} has no rate pilot; add grid lr_{g.model.name}")


def _variant(g) -> str:
  return runs.net_of(grid.nets(g)[0]).variant


def pick_rates(run: runs.GridRun) -> dict[str, dict[str, Any]]:
  """Per variant of a pilot grid: the geometric mean of the final training loss per rate
  over its nets, the rate with the lowest (the rule), and whether it is at the grid's edge."""
  loss = tables.final(run, "train_loss")
  lrs = sorted({n.lr for n in run.nets})
  out = {}
  for v in sorted({n.variant for n in run.nets}):
    score = {}
    for lr in lrs:
      score[lr] = tables.rate_score(loss[[i for i, n in enumerate(run.nets)
                                          if (n.variant, n.lr) == (v, lr)]])
    best = min(lrs, key=lambda lr: score[lr])
    out[v] = {"lr": best, "at_edge": best in (lrs[0], lrs[-1]), "rates": lrs,
              "train_loss_geomean": [tables.g6(score[lr]) for lr in lrs]}
  return out


def prepare(config, name: str, g, trained: dict[str, runs.GridRun]):
  """A main grid at its variant's pilot rate (pilot grids as they are)."""
  del config
  if name.startswith("lr_"):
    return g
  pilot = f"lr_{g.model.name}"
  errors.check(pilot in trained, f"grid {name} trains before its rate pilot {pilot}; "
               "the pilot's name must sort first")
  g = type(g)(g.to_dict())
  g.opt.lr = pick_rates(trained[pilot])[_variant(g)]["lr"]
  return g


def _contrast(on: dict[int, float], off: dict[int, float], power: float) -> dict[str, Any]:
  """on minus off over the seeds both have: interval, p, SD, what the design detects."""
  seeds = sorted(set(on) & set(off))
  c = rstats.paired([on[s] for s in seeds], [off[s] for s in seeds])
  sd = c["sd"]
  return {**{k: tables.g6(c[k]) for k in ("mean", "lo", "hi", "p")}, "n": c["n"],
          "excludes_zero": c["excludes_zero"], "sd": tables.g6(sd),
          "detectable": tables.g6(rstats.detectable(sd, c["n"], power))}


def _verdict(c: dict[str, Any], power: float) -> str:
  """'detected' where Holm rejects, else what the design could have detected."""
  holm = c.get("detectable_holm")
  note = ("" if holm is None or not math.isfinite(holm) else
          f" unadjusted, {100 * holm:.3g} at Holm's first level")
  return tables.verdict(c, power, 100, " points", note=note)


def _by_seed(run: runs.GridRun, key: str) -> dict[tuple, dict[int, float]]:
  """(variant, width) -> {seed: final value of key}."""
  values = tables.final(run, key)
  out: dict[tuple, dict[int, float]] = {}
  for i, n in enumerate(run.nets):
    out.setdefault((n.variant, n.width), {})[n.seed] = float(values[i])
  return out


def _rows(trained: dict[str, runs.GridRun]) -> list[dict[str, Any]]:
  """Condition rows: per pilot rate, then per main grid (the rate it used)."""
  rows = []
  for name, run in trained.items():
    phase = "rate pilot" if name.startswith("lr_") else "main"
    for lr in sorted({n.lr for n in run.nets}):
      sub = run.subset([i for i, n in enumerate(run.nets) if n.lr == lr])
      metrics = {k: tables.final(sub, k) for k in ("test_acc", "train_acc", "train_loss")}
      rows += tables.condition_rows(sub, metrics, head={"phase": phase})
  return rows


def analyze(config, trained: dict[str, runs.GridRun], workdir: str, log) -> dict[str, Any]:
  """The rates the pilots picked, rows, and the paired contrasts (one Holm family)."""
  del workdir
  power = float(config.power)
  picks = {run.config.model.name: pick_rates(run) for name, run in trained.items()
           if name.startswith("lr_")}
  contrasts, gaps = {}, {}
  for family, (on, off) in PAIRS.items():
    main = [r for n, r in trained.items() if n.startswith(f"main_{family}_")]
    if not main:
      continue
    acc: dict[tuple, dict[int, float]] = {}
    for run in main:
      acc.update(_by_seed(run, "test_acc"))
    for w in sorted({w for _, w in acc}):
      if (on, w) in acc and (off, w) in acc:
        tag = "width" if family == "invres" else "n ="
        key = f"{CLAIMS[family]}, {tag} {w}: test_acc({on}) - test_acc({off})"
        contrasts[key] = {"claim": CLAIMS[family], "family": family, "width": w,
                          "rates": {v: picks[family][v]["lr"] for v in (on, off)},
                          **_contrast(acc[(on, w)], acc[(off, w)], power)}
        gaps[key] = [acc[(on, w)][s] - acc[(off, w)][s]
                     for s in sorted(set(acc[(on, w)]) & set(acc[(off, w)]))]
  contrasts = tables.holm(contrasts)
  for c in contrasts.values():  # At Holm's first level: alpha over the family's size.
    c["detectable_holm"] = tables.g6(rstats.detectable(
        c["sd"] if c["sd"] is not None else math.nan, c["n"], power,
        1 - ALPHA / c["family_size"]))
    c["verdict"] = _verdict(c, power)
  if log:
    for k, c in contrasts.items():
      log(f"power: {k}: {100 * c['mean']:+.2f} {tables.bounds_text(c, 100, 2, '+')} "
          f"points, Holm p {c['p_holm']:.3g}: {c['verdict']}")
  net_rows = []
  for run in trained.values():
    net_rows += tables.net_rows(run)
  pilots = {f: {v: {**p, "at_edge": bool(p["at_edge"])} for v, p in vs.items()}
            for f, vs in picks.items()}
  design = {k: {"sd": tables.g6(sd), "pairs_needed": rstats.pairs_needed(
      sd, float(config.effect), power, 1 - ALPHA)} for k, sd in config.prior_sd.items()}
  steps = {run.config.model.name: int(run.config.train.steps) for run in trained.values()}
  seeds = {n: len(run.config.grid.seeds) for n, run in trained.items()}
  return {"rows": _rows(trained), "net_rows": net_rows, "contrasts": contrasts,
          "rates": pilots, "seeds": seeds, "design": design,
          "effect": float(config.effect), "steps": steps, "power": power, "alpha": ALPHA,
          "figure_data": {"gaps": gaps}}


def _pilot_panel(ax, family: str, picks: dict[str, dict]) -> None:
  """Final training loss (geo. mean over the pilot nets) vs rate per variant, picks marked."""
  for v, p in picks.items():
    loss = figures.arr(p["train_loss_geomean"])
    ax.plot(p["rates"], loss, color=COLORS[v], marker="o", label=LABELS[v])
    j = p["rates"].index(p["lr"])
    ax.plot([p["lr"]], [loss[j]], marker="*", ms=14, color=COLORS[v], ls="none")
    edge = " (at the grid's edge)" if p["at_edge"] else ""
    # Text to the left of a pick at the right edge; linear's below its star, the other
    # variant's above, so two picks at one rate and a similar loss keep apart.
    last = j == len(p["rates"]) - 1
    dy = -14 if v == "linear" else 8
    ax.annotate(f"{LABELS[v]}: {p['lr']:g}{edge}", (p["lr"], loss[j]), fontsize=7,
                xytext=(-8, dy) if last else (4, dy),
                textcoords="offset points", ha="right" if last else "left")
  rates = next(iter(picks.values()))["rates"]
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.margins(y=0.15)  # Room for the labels above and below the picks.
  ax.set_xticks(rates)
  ax.set_xticklabels([f"{r:g}" for r in rates])
  ax.minorticks_off()
  ax.set_xlabel("Adam learning rate (constant)")
  ax.set_ylabel("final training loss (geo. mean)")
  ax.set_title(f"{CLAIMS[family]} rate pilot: "
               f"{'inv. residual, digits' if family == 'invres' else 'first layer, spirals'}",
               fontsize=9)
  ax.legend(frameon=False, fontsize=7, title="star: picked", title_fontsize=7)


def _forest(ax, contrasts: dict[str, dict], gaps: dict[str, list]) -> None:
  """The 3 contrasts in points: each seed's difference, the mean and its 95% interval,
  and the smallest effect the design detects (grey ticks)."""
  keys = list(contrasts)
  for y, k in enumerate(keys):
    c = contrasts[k]
    diff = 100 * figures.arr(gaps.get(k, []))
    ax.scatter(diff, np.full(diff.size, y + 0.22), s=9, color="0.55", zorder=2)
    mean, lo, hi = (100 * (np.nan if c[f] is None else c[f]) for f in ("mean", "lo", "hi"))
    ax.plot([lo, hi], [y, y], color="k", lw=1.8)
    ax.plot([mean], [y], "o", color="k", mfc="k" if c["holm_reject"] else "white", zorder=3)
    if c["detectable"] is not None:
      for sign in (-1, 1):
        ax.plot([sign * 100 * c["detectable"]] * 2, [y - 0.15, y + 0.15], color="#d2691e", lw=2)
  ax.axvline(0.0, color="0.5", lw=0.8)
  ax.set_yticks(range(len(keys)))
  ax.set_yticklabels([f"{k.split(':')[0]}\n({contrasts[k]['n']} seeds)" for k in keys],
                     fontsize=8)
  ax.set_ylim(len(keys) - 0.5, -0.6)
  ax.set_xlabel("test accuracy difference (points): linear minus ReLU6 / ReLU")
  ax.set_title("paired contrasts (Holm over 3; filled: detected)\n"
               "orange: the effect detected with 80% power", fontsize=9)


def figure(tabs: dict[str, Any]):
  """The two rate pilots and the three paired contrasts."""
  rates = tabs["rates"]
  with style.context():
    fig, axes = style.figure((4.4 * (len(rates) + 1.2), 4.0), 1, len(rates) + 1, squeeze=False)
    for c, family in enumerate(f for f in FAMILIES if f in rates):
      _pilot_panel(axes[0, c], family, rates[family])
    _forest(axes[0, -1], tabs["contrasts"], tabs["figure_data"]["gaps"])
    seeds = ", ".join(f"{k} {v}" for k, v in tabs["seeds"].items())
    figures.finish(fig, "Power: linear vs ReLU6 bottleneck (C6) and linear vs ReLU first layer "
                   "(C1), each variant at its own pilot rate",
                   f"seeds per grid: {seeds}; intervals: 95% paired t over seeds; grey dots: "
                   "single seeds")
  return fig


def headline(result: dict) -> dict[str, str]:
  """{claim: one sentence with its numbers} from study.json alone."""
  out: dict[str, list[str]] = {}
  for k, c in result["contrasts"].items():
    what = k.split(": ")[0].split(", ", 1)[1]
    out.setdefault(c["claim"], []).append(
        f"{what}: {tables.interval_text(c, 100, 2)} points "
        f"over {c['n']} seeds (Holm p {c['p_holm']:.2g}): {_verdict(c, result['power'])}")
  lead = {"C6": "Linear minus ReLU6 bottleneck test accuracy, each at its own rate",
          "C1": "Linear minus ReLU first layer test accuracy, each at its own rate"}
  return {claim: f"{lead[claim]}: {'; '.join(parts)}." for claim, parts in out.items()}
