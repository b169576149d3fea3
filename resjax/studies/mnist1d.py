"""MNIST-1D (C5, C6 on real data): degradation of plain 1-D ResNets and the linear
bottleneck of inverted-residual nets, each family at a rate chosen on a validation split.

Grids (configs/study.py `mnist1d`), trained in name order:

  select_<family>  the family's nets at one depth (resnet1d) or bottleneck width
                   (invres), both variants, at each rate of a small grid, with
                   `data.num_val` training sequences held out: every evaluation
                   reads the validation split, never the test split;
  test_<family>    the family's study grid on the whole training split,
                   evaluated on the test split, at the rate `prepare` takes
                   from select_<family> (`choose_rate`).

The rate rule, fixed before the run: the rate of the selection grid with the
highest mean final validation accuracy over all its nets (both variants, all
seeds), ties to the lower rate. One rate per family, shared by the variants
compared (He et al. and MobileNetV2 compare their variants at one recipe).

Contrasts, paired by seed (both variants share their initial weights and
batches): plain minus residual per depth (final training loss on the whole
training split, test accuracy) and deepest minus shallowest per variant
(training loss); linear minus ReLU6 bottleneck per width (test accuracy,
training loss). Each metric's contrasts form one Holm family (its size is in
each contrast). A verdict is 'detected' where the Holm-adjusted p is below 0.05
(the interval, unadjusted, is printed beside it), else 'not detected at this
power' with the effect a paired t-test of its n and SD detects with power
`config.power` (`stats.detectable`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from resjax import errors, grid, schema
from resjax.plotting import style
from resjax.studies import figures, runs, tables
from resjax.studies.figures import COLORS, LABELS

FAMILIES = ("resnet1d", "invres")
RULES = {"power": schema.Float(
    0.0, 1.0, low_open=True, high_open=True,
    fix="use a number in (0, 1), e.g. 0.8 (the power of the detectable effect)")}
# Each family's arm: the variants compared (first minus second) and the axis they vary on.
ARMS = {"resnet1d": ("plain", "residual", "depth"), "invres": ("linear", "relu6", "width")}


def tiny(config) -> None:
  """Two rates, 2 depths / widths (the runner cuts the axes); a smaller validation split."""
  for g in config.grids.values():
    if g.data.get("num_val", 0):
      g.data.num_val = 500


def validate(config) -> None:
  """ConfigError unless each test grid has its selection grid, which holds out a
  validation split and varies the rate."""
  schema.check(config, RULES)
  for name, g in config.grids.items():
    kind, _, family = name.partition("_")
    errors.check(kind in ("select", "test") and family == g.model.name,
                 f"grids.{name} is not allowed; name the grids select_<family> and "
                 f"test_<family> (model.name={g.model.name!r})")
    if kind == "select":
      errors.check(int(g.data.get("num_val", 0)) > 0 and len(g.grid.opt.lr) >= 2,
                   f"grids.{name} is not allowed; a selection grid holds out data.num_val > 0 "
                   "sequences and varies grid.opt.lr over 2 or more rates")
    else:
      errors.check(f"select_{family}" in config.grids and not g.data.get("num_val", 0),
                   f"grids.{name} is not allowed; it needs grids.select_{family} and "
                   "data.num_val=0 (evaluated on the test split)")


def choose_rate(run: runs.GridRun) -> tuple[float, dict[float, float]]:
  """The rate with the highest mean final validation accuracy over the nets of the
  selection grid `run` (ties: the lower rate), and that mean per rate."""
  acc = tables.final(run, "test_acc")  # A selection grid evaluates on its validation split.
  means = {lr: float(np.nanmean([acc[i] for i, n in enumerate(run.nets) if n.lr == lr]))
           for lr in sorted({n.lr for n in run.nets})}
  best = max(means.values())
  return min(lr for lr, m in means.items() if m == best), means


def prepare(config, name: str, g, trained: dict[str, runs.GridRun]):
  """A test grid trains at the rate its family's selection grid chose; a grid over
  depths runs one compiled call per depth (each padded to its own depth, not the deepest)."""
  del config  # What it reads is in the grids.
  kind, _, family = name.partition("_")
  if kind == "test":
    errors.check(f"select_{family}" in trained,
                 f"grids.{name} needs grids.select_{family} trained first")
    g.opt.lr = choose_rate(trained[f"select_{family}"])[0]
    axes = dict(grid.axes(g))
    depths = axes.get("model.depth", ())
    if len(depths) > 1 and not g.grid.get("nets_per_call"):  # Each depth padded to its own.
      g.grid.nets_per_call = len(grid.nets(g)) // len(depths)
  return g


def _verdict(c: dict[str, Any], power: float) -> dict[str, Any]:
  """Adds the verdict: detected after Holm, or the smallest effect detectable at `power`."""
  c = {**c, "detectable": tables.g6(tables.detectable_of(c, power))}
  return {**c, "verdict": tables.verdict(c, power)}


def _family(contrasts: dict[str, dict], power: float) -> dict[str, dict]:
  return {k: _verdict(c, power) for k, c in tables.holm(contrasts).items()}


def _arm(run: runs.GridRun, metrics: dict[str, np.ndarray], power: float) -> dict[str, dict]:
  """The arm's contrasts, one Holm family per metric (and one for the depth contrasts)."""
  a, b, axis = ARMS[run.config.model.name]
  by = tables.groups(run)
  values = sorted({getattr(n, axis) for n in run.nets})
  cell = {v: next(k for k in by if k[0] == a and k[1 if axis == "width" else 2] == v)
          for v in values}
  other = lambda key: (b,) + key[1:]
  out = {}
  for key in ("train_loss", "test_acc"):
    out.update(_family({f"{axis} {v}: {key}({a}) - {key}({b})": tables.paired(
        run, metrics[key], cell[v], other(cell[v])) for v in values}, power))
  if axis == "depth":
    out.update(_family({
        f"{v}: train_loss(depth {values[-1]}) - train_loss(depth {values[0]})": tables.paired(
            run, metrics["train_loss"], (v,) + cell[values[-1]][1:], (v,) + cell[values[0]][1:])
        for v in (a, b)}, power))
  return out


def _curves(run: runs.GridRun, metrics: dict[str, np.ndarray]) -> dict[str, dict]:
  """Per variant and metric: the series over the arm's axis."""
  a, b, axis = ARMS[run.config.model.name]
  by = tables.groups(run)
  out = {}
  for v in (a, b):
    keys = sorted((k for k in by if k[0] == v), key=lambda k: k[1 if axis == "width" else 2])
    x = [k[1 if axis == "width" else 2] for k in keys]
    for key in ("train_loss", "test_acc"):
      ci = tables.geo_ci95 if key == "train_loss" else (lambda z: tables.ci95_in(z, "acc"))
      out[f"{v}/{key}"] = tables.series(x, [ci(metrics[key][by[k]]) for k in keys])
  return out


def _selection(run: runs.GridRun) -> tuple[list[dict], dict[str, Any]]:
  """Rows per rate and condition (validation numbers) and the rate chosen."""
  rows, acc = [], tables.final(run, "test_acc")
  for lr in sorted({n.lr for n in run.nets}):
    sub = run.subset([i for i, n in enumerate(run.nets) if n.lr == lr])
    rows += tables.condition_rows(sub, {"val_acc": tables.final(sub, "test_acc"),
                                        "train_loss": tables.final(sub, "train_loss")},
                                  head={"split": "validation"})
  chosen, means = choose_rate(run)
  per_variant = {v: {f"{lr:g}": tables.g6(float(np.nanmean(
      [acc[i] for i, n in enumerate(run.nets) if (n.variant, n.lr) == (v, lr)])))
      for lr in means} for v in tables.variants(run, ("plain", "residual", "linear", "relu6"))}
  return rows, {"rate": chosen, "mean_val_acc": {f"{lr:g}": tables.g6(m) for lr, m in means.items()},
                "mean_val_acc_per_variant": per_variant,
                "num_val": int(run.config.data.num_val), "at": run.title()}


def analyze(config, trained: dict[str, runs.GridRun], workdir: str, log) -> dict[str, Any]:
  """Selection rows and rates; per arm rows, paired contrasts with Holm and verdicts."""
  del workdir, log
  rows, net_rows, contrasts, selection, arms = [], [], {}, {}, {}
  for name, run in trained.items():
    net_rows += tables.net_rows(run)
    family = run.config.model.name
    if name.startswith("select_"):
      part, selection[family] = _selection(run)
      rows += part
      continue
    metrics = {k: tables.final(run, k) for k in ("train_loss", "train_acc", "test_acc",
                                                 "test_loss")}
    rows += tables.condition_rows(run, metrics, head={"split": "test"})
    found = _arm(run, metrics, float(config.power))
    contrasts.update({f"{family}/{k}": c for k, c in found.items()})
    a, b, axis = ARMS[family]
    arms[family] = {"variants": [a, b], "axis": axis, "title": run.title(),
                    "lr": run.nets[0].lr, "steps": int(run.config.train.steps),
                    "series": _curves(run, metrics)}
  return {"rows": rows, "net_rows": net_rows, "contrasts": contrasts, "selection": selection,
          "figure_data": {"arms": arms}}


def _cells(contrasts: dict[str, dict], prefix: str, key: str) -> list[tuple[str, dict]]:
  """(depth or width, contrast) of the `key` contrasts of one arm, in axis order."""
  return [(k.split(": ")[0].split()[-1], c) for k, c in contrasts.items()
          if k.startswith(prefix) and f": {key}(" in k]


def headline(result: dict) -> dict[str, str]:
  """{'C5': ..., 'C6': ...}: the MNIST-1D verdicts with their numbers (from study.json)."""
  out, c = {}, result["contrasts"]
  arms, sel = result["figure_data"]["arms"], result["selection"]
  if "resnet1d" in arms:
    loss = _cells(c, "resnet1d/depth", "train_loss")
    acc = _cells(c, "resnet1d/depth", "test_acc")[-1]
    plain = next(v for k, v in c.items() if k.startswith("resnet1d/plain: train_loss"))
    depths = [d for d, _ in loss]
    out["C5"] = (
        f"MNIST-1D, {arms['resnet1d']['title'].split(',')[0]} (BatchNorm), "
        f"{arms['resnet1d']['steps']} steps "
        f"at Adam {sel['resnet1d']['rate']:g} (chosen on a validation split), "
        f"{loss[0][1]['n']} seeds: plain minus residual final training loss "
        + "; ".join(f"depth {d}: {tables.verdict_text(x, digits=3)}" for d, x in loss)
        + f"; plain depth {depths[-1]} minus depth "
        f"{depths[0]}: {tables.verdict_text(plain, digits=3)}; test accuracy at depth {acc[0]}, plain minus "
        f"residual: {tables.verdict_text(acc[1], 100, 1, unit=' points')}.")
  if "invres" in arms:
    acc = _cells(c, "invres/width", "test_acc")
    out["C6"] = (
        f"MNIST-1D, inverted-residual nets, {arms['invres']['steps']} steps at Adam "
        f"{sel['invres']['rate']:g} (chosen on a validation split), {acc[0][1]['n']} seeds: "
        "linear minus ReLU6 bottleneck test accuracy, points, "
        + "; ".join(f"width {w}: {tables.verdict_text(x, 100, 1)}" for w, x in acc)
        + ".")
  return out


def figure(tabs: dict[str, Any]):
  """Per arm: training loss and test accuracy over its axis, the paired contrasts;
  the validation accuracy per rate of the selection grids."""
  arms = tabs["figure_data"]["arms"]
  with style.context():
    fig, axes = style.figure((14.5, 3.9 * max(len(arms), 1) + 3.6), len(arms) + 1, 3,
                             squeeze=False)
    order = sorted(arms, key=lambda f: f != "resnet1d")  # C5, then C6.
    for r, family in enumerate(order):
      arm = arms[family]
      for c, key in enumerate(("train_loss", "test_acc")):
        ax = axes[r, c]
        for v in arm["variants"]:
          figures.line(ax, arm["series"][f"{v}/{key}"], color=COLORS[v], label=LABELS[v])
        style.log2_axis(ax, [int(x) for x in arm["series"][f"{arm['variants'][0]}/{key}"]["x"]])
        ax.set_xlabel("depth" if arm["axis"] == "depth" else "bottleneck width (channels)")
        if key == "train_loss":
          ax.set_yscale("log")
          ax.set_ylabel("final training loss (geo. mean)")
        else:
          ax.set_ylabel("test accuracy")
        ax.set_title(f"{arm['title']}, Adam {arm['lr']:g}, {arm['steps']} steps", fontsize=9)
        ax.legend(frameon=False)
      _forest(axes[r, 2], {k.split("/", 1)[1]: v for k, v in tabs["contrasts"].items()
                           if k.startswith(family + "/")}, "test_acc")
    _rates(axes[-1, 0], tabs["selection"])
    for c, family in enumerate(order[:2]):
      _forest(axes[-1, c + 1], {k.split("/", 1)[1]: v for k, v in tabs["contrasts"].items()
                                if k.startswith(family + "/")}, "train_loss")
    figures.finish(fig, "MNIST-1D: degradation (plain vs residual 1-D ResNets) and the linear "
                   "bottleneck (linear vs ReLU6)", figures.footer(
                       tabs, log_note=True, extra="; right: paired contrasts (first minus "
                       "second variant), filled where Holm rejects"))
  return fig


def _forest(ax, contrasts: dict[str, dict], key: str) -> None:
  """The contrasts of `key` (test accuracy in points, training loss) as intervals."""
  keys = [k for k in contrasts if f"{key}(" in k]
  scale = 100.0 if key == "test_acc" else 1.0
  for y, k in enumerate(keys):
    c = contrasts[k]
    ax.plot(scale * figures.arr([c["lo"], c["hi"]]), [y, y], color="k", lw=1.6)
    ax.plot([scale * c["mean"]], [y], "o", color="k",
            mfc="k" if c.get("holm_reject") else "white")
  ax.axvline(0.0, color="0.5", lw=0.8)
  ax.set_yticks(range(len(keys)))
  bare = lambda k: k.split(": ", 1)[1].replace(f"{key}(", "").replace(")", "")
  ax.set_yticklabels([f"{k.split(': ')[0]}: {bare(k)}" if "depth" in bare(k)
                      else k.split(": ")[0] for k in keys], fontsize=8)
  ax.invert_yaxis()
  what = "test accuracy difference, points" if key == "test_acc" else \
      "final training loss difference"
  ax.set_xlabel(f"{what}, {bare(keys[0])}" if keys else what)
  ax.set_title(f"paired contrasts of {'test accuracy' if key == 'test_acc' else 'training loss'}"
               ", 95% intervals (unadjusted)", fontsize=9)


def _rates(ax, selection: dict[str, dict]) -> None:
  """Mean validation accuracy per rate, per family and variant; the chosen rate circled."""
  for family, s in selection.items():
    for v, per in s["mean_val_acc_per_variant"].items():
      x = [float(k) for k in per]
      ax.plot(x, list(per.values()), marker="o", color=COLORS[v],
              label=f"{family}: {LABELS[v]}", ls="-" if family == "resnet1d" else "--")
    ax.plot([s["rate"]], [s["mean_val_acc"][f"{s['rate']:g}"]], "s", ms=11, mfc="none",
            color="k")
  ax.set_xscale("log")
  ax.set_xlabel("learning rate (Adam)")
  ax.set_ylabel("final validation accuracy (mean)")
  ax.set_title("rate choice on the validation split (square: chosen, mean of both variants)",
               fontsize=9)
  ax.legend(frameon=False, fontsize=8)
