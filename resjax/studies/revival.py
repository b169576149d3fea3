"""Revival (C4): do ReDo resets bring dead units back, and learning with them?

Plain and residual MLPs (norm=None) on spirals, each seed trained twice from
the same initialization in one compiled program: without resets and with
ReDo-style resets of the dormant units every K steps (the grid axis
`train.reset_dead_every` = 0, K). Probes during training (`train.probe_every`,
on the whole training split) follow every unit; per net, from probes.jsonl:

  dead_init, dead_final   dead fraction of all hidden units at step 0 and at the last probe
  revived                 units dead at some probe and alive at a later one (fraction of all)
  revived_init            of the units dead at step 0, the fraction alive at the last probe
  dead_since_init         units dead at every probe (fraction of all)
  units_*                 the same as counts; units_reset: resets summed over the run
  dead_layer_init         a whole layer dead at step 0 (nothing below it gets a gradient
                          in a plain net; a residual net's shortcut passes it)

Contrasts (reset minus none, paired by seed; each family Holm-corrected on its
own): final training loss, test accuracy and dead_final per (variant, width,
depth) cell, and loss and accuracy pooled over cells per variant and per
dead_layer_init; the loss contrasts also count the pairs at chance (final
training loss within CHANCE_MARGIN of ln(classes)) without resets but not with
them ('escaped') and the reverse ('fell'). Each states a verdict
(`tables.verdict`): 'detected' where the 95% interval excludes 0 and Holm
rejects within its family, else 'not detected' with the effect a paired t-test
of its n and SD would detect with power `config.power` (0.8;
`stats.detectable`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from resjax import errors, grid, schema, train
from resjax import stats as rstats
from resjax.plotting import style
from resjax.studies import figures, runs, tables
from resjax.studies.figures import COLORS, LABELS

FAMILIES = ("mlp",)
# The study's own config fields (its grids' probe and reset fields are training fields).
RULES = {"power": schema.Float(
    0.0, 1.0, low_open=True, high_open=True,
    fix="use a number in (0, 1), e.g. 0.8 (the power of the detectable effect)")}
ARMS = ("none", "reset")
# A net is at chance when its final training loss is within this of ln(classes).
CHANCE_MARGIN = 0.05
# Per net: fractions (of all hidden units; revived_init: of those dead at step 0) and counts.
FRACTIONS = ("dead_init", "dead_final", "revived", "revived_init", "dead_since_init",
             "dead_layer_init")
COUNTS = ("units", "units_dead_init", "units_revived", "units_revived_init",
          "units_dead_since_init", "units_reset")


def tiny(config) -> None:
  """One depth (8), probes every 10 steps, resets every 15 of the 20 steps."""
  for g in config.grids.values():
    g.grid.model.depth = (8,)
    g.train.probe_every = 10
    g.grid.train.reset_dead_every = (0, 15)


def validate(config) -> None:
  """ConfigError unless `power` is in (0, 1) and each grid probes its last step and
  pairs no resets with one reset period."""
  schema.check(config, RULES)
  for name, g in config.grids.items():
    runs.check_last_probe(name, g)
    arms = tuple(g.grid.train.reset_dead_every)
    errors.check(len(arms) == 2 and arms[0] == 0 and arms[1] > 0,
                 f"grids.{name}.grid.train.reset_dead_every={arms} is not allowed; the study "
                 "pairs no resets with one period: use (0, K) with K > 0")


def net_numbers(probes: list[tuple[int, dict[str, dict]]]) -> dict[str, float]:
  """One net's FRACTIONS and COUNTS from its probe rows (`runs.read_probes`)."""
  seen = [(s, rows) for s, rows in probes if all("dead_units" in r for r in rows.values())]
  first, last = seen[0][1], seen[-1][1]
  units = sum(r["units"] for r in first.values())
  dead0 = sum(r["dead"] for r in first.values())
  revived = dead_init_alive = 0
  for layer in first:
    dead = [set(rows[layer]["dead_units"]) for _, rows in seen]
    revived += len(set().union(*(a - b for a, b in zip(dead, dead[1:]))))
    dead_init_alive += len(dead[0] - dead[-1])
  always = sum(r["dead_every_probe"] for r in last.values())
  return {"dead_init": dead0 / units, "dead_final": sum(r["dead"] for r in last.values()) / units,
          "revived": revived / units,
          "revived_init": dead_init_alive / dead0 if dead0 else float("nan"),
          "dead_since_init": always / units,
          "dead_layer_init": float(any(r["dead"] == r["units"] for r in first.values())),
          "units": units, "units_dead_init": dead0, "units_revived": revived,
          "units_revived_init": dead_init_alive, "units_dead_since_init": always,
          "units_reset": sum(r.get("reset", 0) for _, rows in probes for r in rows.values())}


def _trajectory(probes: list[tuple[int, dict[str, dict]]]) -> tuple[list[int], list[float]]:
  """Steps and the dead fraction of all hidden units at each probe."""
  seen = [(s, rows) for s, rows in probes if all("dead_units" in r for r in rows.values())]
  return ([s for s, _ in seen], [sum(r["dead"] for r in rows.values()) /
                                 sum(r["units"] for r in rows.values()) for _, rows in seen])


def _contrast(values: np.ndarray, pairs: list[tuple[int, int]], power: float) -> dict[str, Any]:
  """reset minus none over `pairs` (reset net, none net): interval, SD, detectable
  effect (the verdict comes after Holm, `tables.verdicts`)."""
  on = [values[a] for a, _ in pairs]
  off = [values[b] for _, b in pairs]
  c = rstats.paired(on, off)
  return {**{k: tables.g6(c[k]) for k in ("mean", "lo", "hi", "p")}, "n": c["n"],
          "excludes_zero": c["excludes_zero"], "sd": tables.g6(c["sd"]),
          "detectable": tables.g6(rstats.detectable(c["sd"], c["n"], power))}


def _chance(metrics: dict[str, np.ndarray], pairs: list[tuple[int, int]]) -> dict[str, int]:
  """Pairs at chance without resets but not with them ('escaped'), and the reverse ('fell')."""
  on = np.asarray([metrics["at_chance"][a] for a, _ in pairs], bool)
  off = np.asarray([metrics["at_chance"][b] for _, b in pairs], bool)
  return {"at_chance_none": int(off.sum()), "at_chance_reset": int(on.sum()),
          "escaped": int((off & ~on).sum()), "fell": int((on & ~off).sum())}


def _families(run: runs.GridRun, arm: list[str], metrics: dict[str, np.ndarray],
              power: float) -> dict[str, dict]:
  """The contrasts, each family Holm-corrected on its own (its size in each contrast)."""
  pairs: dict[tuple, list[tuple[int, int]]] = {}
  by_seed = {(n.variant, n.width, n.depth, n.seed, arm[i]): i for i, n in enumerate(run.nets)}
  for (v, w, d, s, a), i in sorted(by_seed.items()):
    if a == "reset" and (v, w, d, s, "none") in by_seed:
      pairs.setdefault((v, w, d), []).append((i, by_seed[(v, w, d, s, "none")]))
  out = {}
  for key, label in (("train_loss", "final training loss"), ("test_acc", "test accuracy"),
                     ("dead_final", "dead fraction at the end")):
    family = {f"{label}: {LABELS[v]}, width {w}, depth {d}": {
        "family": f"{key} per cell", **_contrast(metrics[key], p, power), **_chance(metrics, p)}
        for (v, w, d), p in sorted(pairs.items())}
    out.update(tables.verdicts(family, f"{key} per cell", power))
  family = {}
  for key, label in (("train_loss", "final training loss"), ("test_acc", "test accuracy")):
    for v in sorted({c[0] for c in pairs}):
      for dead, tag in ((1.0, "a whole layer dead at init"), (0.0, "no whole layer dead at init")):
        p = [(a, b) for c, ps in pairs.items() if c[0] == v for a, b in ps
             if metrics["dead_layer_init"][b] == dead]
        if p:
          family[f"{label}: {LABELS[v]} nets with {tag}, all cells"] = {
              "family": "pooled by dead layer at init", **_contrast(metrics[key], p, power)}
  out.update(tables.verdicts(family, "pooled by dead layer at init", power))
  return out


def _rows(run: runs.GridRun, arm: list[str], metrics: dict[str, np.ndarray]) -> list[dict]:
  """One row per arm and condition: means and intervals, unit counts summed over nets."""
  rows = []
  for a in ARMS:
    members = [i for i in range(len(run.nets)) if arm[i] == a]
    sub = run.subset(members)
    shown = FRACTIONS + ("train_loss", "test_acc")
    part = tables.condition_rows(sub, {k: metrics[k][members] for k in shown},
                                 head={"resets": a})
    by = tables.groups(sub)
    for row in part:
      idx = np.asarray(members)[by[(row["variant"], row["width"], row["depth"])]]
      row.update({k: int(metrics[k][idx].sum()) for k in COUNTS})
      for key in ("dead_layer_init", "at_chance"):  # Shares of nets: Wilson, nets as trials.
        row.update(tables.stat_cols(key, rstats.wilson(metrics[key][idx].sum(), len(idx))))
    # Seed-clustered Wilson intervals; trials per net: its units (its dead units at init).
    tables.fractions(part, sub, {k: metrics[k][members] for k in FRACTIONS
                                 if k not in ("revived_init", "dead_layer_init")},
                     lambda r: r["width"] * r["depth"])
    tables.fractions(part, sub, {"revived_init": metrics["revived_init"][members]},
                     lambda r: max(r["units_dead_init"] / r["n"], 1.0))
    rows += part
  return rows


def _figure_data(run: runs.GridRun, arm: list[str], probes: dict, metrics: dict) -> dict:
  """Dead fraction per probe step (mean over nets) per variant, depth and arm; the pairs."""
  series = {}
  for v in tables.variants(run, ("plain", "residual")):
    for d in sorted({n.depth for n in run.nets}):
      for a in ARMS:
        idx = [i for i, n in enumerate(run.nets) if (n.variant, n.depth, arm[i]) == (v, d, a)]
        traj = [_trajectory(probes[run.index[i]]) for i in idx]
        dead = np.asarray([t[1] for t in traj])
        series[f"{v}/depth{d}/{a}"] = tables.series(traj[0][0], [
            tables.ci95_in(dead[:, t], "frac") for t in range(dead.shape[1])])
  partner = {(n.variant, n.width, n.depth, n.seed): j for j, n in enumerate(run.nets)
             if arm[j] == "reset"}
  pairs = []
  for i, n in enumerate(run.nets):
    j = partner.get((n.variant, n.width, n.depth, n.seed))
    if arm[i] == "none" and j is not None:
      pairs.append({"variant": n.variant, "width": n.width, "depth": n.depth, "seed": n.seed,
                    "dead_layer_init": bool(metrics["dead_layer_init"][i]),
                    "loss_none": tables.g6(metrics["train_loss"][i]),
                    "loss_reset": tables.g6(metrics["train_loss"][j])})
  return {"series": series, "pairs": pairs, "depths": sorted({n.depth for n in run.nets})}


def analyze(config, trained: dict[str, runs.GridRun], workdir: str, log) -> dict[str, Any]:
  """Per-net unit numbers from probes.jsonl, rows per arm and condition, paired contrasts."""
  del workdir, log
  run = next(iter(trained.values()))
  configs = grid.nets(run.config)
  arm = ["reset" if int(configs[k].train.reset_dead_every) > 0 else "none" for k in run.index]
  probes = runs.read_probes(run.workdir)
  numbers = [net_numbers(probes[k]) for k in run.index]
  metrics = {key: np.asarray([n[key] for n in numbers], np.float64)
             for key in FRACTIONS + COUNTS}
  metrics.update(train_loss=tables.final(run, "train_loss"), test_acc=tables.final(run, "test_acc"))
  chance = float(np.log(train.load_data(run.config).num_classes))
  metrics["at_chance"] = (metrics["train_loss"] >= chance - CHANCE_MARGIN).astype(np.float64)
  net_rows = tables.net_rows(run, {k: metrics[k] for k in FRACTIONS + COUNTS + ("at_chance",)})
  for r, a in zip(net_rows, arm):
    r["resets"] = a
  period = max(int(c.train.reset_dead_every) for c in configs)
  title = (f"Revival: {run.title()}, norm=None, {run.config.train.steps} steps, "
           f"ReDo resets every {period} steps (tau={run.config.train.dormant_tau}) vs none")
  return {"rows": _rows(run, arm, metrics), "net_rows": net_rows,
          "contrasts": _families(run, arm, metrics, float(config.power)),
          "chance_loss": tables.g6(chance), "chance_margin": CHANCE_MARGIN,
          "figure_data": {"title": title, "period": period,
                          **_figure_data(run, arm, probes, metrics)}}


def figure(tabs: dict[str, Any]):
  """Dead units over training per depth (top), the paired loss contrasts and the loss
  of each seed without vs with resets, whole dead layers at init marked (bottom)."""
  data = tabs["figure_data"]
  depths = data["depths"]
  with style.context():
    fig, axes = style.figure((13.0, 10.5), 2, max(2, len(depths)), squeeze=False)
    for c, d in enumerate(depths):
      ax = axes[0, c]
      for key, s in data["series"].items():
        v, dd, a = key.split("/")
        if dd == f"depth{d}":
          figures.line(ax, s, color=COLORS[v], ls="-" if a == "none" else "--", marker=None,
                       label=f"{LABELS[v]}, {'no resets' if a == 'none' else 'resets'}")
      ax.set_ylim(-0.02, 1.02)
      ax.set_xlabel("training step")
      ax.set_ylabel("dead units (fraction of all hidden units)")
      ax.set_title(f"depth {d}: dead units during training (mean over widths, seeds)")
      ax.legend(frameon=False, fontsize=8)
    for c in range(len(depths), axes.shape[1]):
      axes[0, c].set_visible(False)
    _forest(axes[1, 0], tabs["contrasts"])
    _pairs(axes[1, 1], data["pairs"])
    figures.finish(fig, data["title"], figures.footer(
        tabs, extra="; bottom left: resets minus none, paired by seed, filled where the "
        "interval excludes 0 and Holm rejects"))
  return fig


def _forest(ax, contrasts: dict[str, dict]) -> None:
  """The loss contrasts per cell and pooled, as intervals on one axis."""
  keys = [k for k in contrasts if k.startswith("final training loss")]
  for y, k in enumerate(keys):
    c = contrasts[k]
    color = COLORS["residual" if "residual" in k else "plain"]
    mean, lo, hi = (np.nan if c[f] is None else c[f] for f in ("mean", "lo", "hi"))
    ax.plot([lo, hi], [y, y], color=color, lw=1.6)
    detected = c.get("holm_reject") and c["excludes_zero"]
    ax.plot([mean], [y], "o", color=color, mfc=color if detected else "white")
  ax.axvline(0.0, color="0.5", lw=0.8)
  cells = sum("all cells" not in k for k in keys)
  if 0 < cells < len(keys):  # Per cell above, pooled by dead layer at init below.
    ax.axhline(cells - 0.5, color="0.6", lw=0.8, ls=":")
  ax.set_yticks(range(len(keys)))
  ax.set_yticklabels([k.split(": ", 1)[1].replace(", all cells", "") for k in keys], fontsize=7)
  ax.invert_yaxis()
  ax.set_xlabel("final training loss: resets minus none")
  ax.set_title("paired contrasts (95% intervals)")


def _pairs(ax, pairs: list[dict]) -> None:
  """Final training loss of each seed without vs with resets."""
  for v in ("plain", "residual"):
    for dead, marker, tag in ((False, "o", "no dead layer at init"),
                              (True, "x", "a whole layer dead at init")):
      got = [p for p in pairs if p["variant"] == v and p["dead_layer_init"] == dead]
      if got:
        ax.scatter([p["loss_none"] for p in got], [p["loss_reset"] for p in got], marker=marker,
                   s=22, color=COLORS[v], alpha=0.75, label=f"{LABELS[v]}, {tag}",
                   facecolors="none" if marker == "o" else None)
  top = max([1.2] + [max(p["loss_none"], p["loss_reset"]) for p in pairs])
  ax.plot([0, top], [0, top], color="0.5", lw=0.8)
  ax.set_xlim(-0.03, top)
  ax.set_ylim(-0.03, top)
  ax.set_aspect("equal")
  ax.axvline(np.log(3), color="0.8", lw=0.8, ls=":")
  ax.axhline(np.log(3), color="0.8", lw=0.8, ls=":")
  ax.set_xlabel("final training loss, no resets")
  ax.set_ylabel("final training loss, resets")
  ax.set_title("each net: no resets vs resets (dotted: chance, ln 3)")
  ax.legend(frameon=False, fontsize=7)


def headline(result: dict[str, Any]) -> dict[str, str]:
  """C4 in one sentence from study.json: units revived, learning restored or not."""
  rows, contrasts = result["rows"], result["contrasts"]
  always = {arm: max(r["dead_since_init"] for r in rows if r["resets"] == arm) for arm in ARMS}
  loss = {k: c for k, c in contrasts.items() if c["family"] == "train_loss per cell"}
  better = [k.split(": ", 1)[1].replace(", width ", " w").replace(", depth ", " d")
            for k, c in loss.items() if c["hi"] < 0]
  kept = sum(bool(c.get("holm_reject")) and c["hi"] < 0 for c in loss.values())
  deep = [c for k, c in loss.items() if "plain" in k and k.endswith(
      f"depth {max(r['depth'] for r in rows)}")]
  none, reset = (sum(c[f"at_chance_{arm}"] for c in deep) for arm in ARMS)
  return {"C4": (
      f"resets of dormant units lower the units dead at every probe from up to "
      f"{100 * always['none']:.0f}% to at most {100 * always['reset']:.1f}% of all units; the "
      f"final training loss falls (interval below 0) in {len(better)} of {len(loss)} cells "
      f"({', '.join(better) or 'none'}), {kept} after Holm over {len(loss)}; deepest plain "
      f"nets at chance: {none} of {sum(c['n'] for c in deep)} without resets, {reset} with"
      f"{': reviving their units does not rescue them' if reset >= none else ''}.")}
