"""Degradation (C5, He et al. 2016 Fig. 6): final training loss and accuracy vs depth,
plain vs residual, at one learning rate and at each net's best rate.

Grids (configs/study.py `degradation`): MLPs on spirals (depth x residual x
lr) and one-stage ResNets on digits (depth x plain). A grid with several rates
is read twice: at the config's rate, and at each (variant, depth)'s rate with
the lowest geometric-mean final training loss (an optimistic view). The third
panel: gradient norms per layer at init of the deepest nets.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from resjax.plotting import style
from resjax.studies import figures, runs, tables
from resjax.studies.figures import COLORS, LABELS

FAMILIES = ("mlp", "resnet")


def _best_rate(run: runs.GridRun) -> tuple[runs.GridRun, dict[str, float]]:
  """Per (variant, depth), the nets of the rate with the lowest geometric-mean final
  training loss over seeds (chosen on the same nets: an optimistic view)."""
  by = tables.groups(run, ("variant", "width", "depth", "lr"))
  best: dict[tuple, tuple[float, float]] = {}
  loss = tables.final(run, "train_loss")
  for (v, w, d, lr), idx in by.items():
    score = tables.rate_score(loss[idx])
    if (v, w, d) not in best or score < best[(v, w, d)][0]:
      best[(v, w, d)] = (score, lr)
  members = sorted(i for (v, w, d, lr), idx in by.items() if best[(v, w, d)][1] == lr
                   for i in idx)
  return (run.subset(members, f"{run.name}/best_lr"),
          {f"{v} depth {d}": lr for (v, w, d), (_, lr) in best.items()})


def _views(config, trained: dict[str, runs.GridRun], log) -> tuple[list, dict]:
  """(label, run) per row of the figure, and the best rates; probes the deepest nets."""
  views, rates = [], {}
  for name in sorted(trained, key=lambda n: n != "mlp"):
    run = trained[name]
    # Gradient norms at init: the deepest nets at the config's rate (the initial
    # weights do not depend on the rate).
    deepest, base = max(m.depth for m in run.nets), float(config.grids[name].opt.lr)
    runs.probe_grid(run, log, grad_at_init=lambda n: True,
                    which=lambda n, d=deepest, b=base: n.depth == d and n.lr == b)
    if len({n.lr for n in run.nets}) > 1:
      same = [i for i, n in enumerate(run.nets) if n.lr == base]
      views.append((f"{name}, lr {base:g}", run.subset(same, f"{name}/lr{base:g}")))
      best, rates[name] = _best_rate(run)
      views.append((f"{name}, best lr per net", best))
    else:
      views.append((name, run))
  return views, rates


def _grad_norms(run: runs.GridRun, variants, w: int, d: int) -> dict[str, np.ndarray]:
  """Variant -> gradient norms at init [net, layer] of the probed nets of depth d."""
  by = tables.groups(run)
  have = {v: [i for i in by[(v, w, d)] if i in run.probes_init] for v in variants}
  if not (all(have.values()) and run.probes_init[have[variants[0]][0]]["weights"]):
    return {}
  return {v: np.stack([[x["grad_norm"] for x in run.probes_init[i]["weights"]] for i in idx])
          for v, idx in have.items()}


def analyze(config, trained: dict[str, runs.GridRun], workdir: str, log) -> dict[str, Any]:
  """Rows per view and condition, depth and plain-vs-residual contrasts, the curves."""
  del workdir  # Nothing cached beside the grids.
  views, rates = _views(config, trained, log)
  rows, net_rows, contrasts, curves, drawn = [], [], {}, {}, []
  for name in sorted(trained, key=lambda n: n != "mlp"):
    net_rows += tables.net_rows(trained[name])
  for label, run in views:
    metrics = {k: tables.final(run, k) for k in ("train_loss", "train_acc", "test_acc")}
    rows += tables.condition_rows(run, metrics, {"view": label})
    by = tables.groups(run)
    depths = sorted({n.depth for n in run.nets})
    variants = tables.variants(run, ("plain", "residual"))
    w = run.nets[0].width
    for v in variants:
      contrasts[f"{label}/{v}: train_loss(depth {depths[-1]}) - train_loss(depth {depths[0]})"] = \
          tables.paired(run, metrics["train_loss"], (v, w, depths[-1]), (v, w, depths[0]))
    for d in depths:
      contrasts[f"{label}/depth {d}: train_loss(plain) - train_loss(residual)"] = \
          tables.paired(run, metrics["train_loss"], ("plain", w, d), ("residual", w, d))
    for key in ("train_loss", "train_acc"):
      ci = tables.geo_ci95 if key == "train_loss" else (lambda x: tables.ci95_in(x, "acc"))
      for v in variants:
        s = tables.series(depths, [ci(metrics[key][by[(v, w, d)]]) for d in depths])
        curves[f"{label}/{v}/{key}"] = {"depth": depths, **{k: s[k] for k in ("mean", "lo", "hi")}}
    grads = {}
    for v, norms in _grad_norms(run, variants, w, depths[-1]).items():
      triples = [tables.geo_ci95(norms[:, l]) for l in range(norms.shape[1])]
      grads[v] = tables.series(range(1, norms.shape[1] + 1), triples)
      curves[f"{label}/{v}/grad_norm_init_depth{depths[-1]}"] = grads[v]["mean"]
    drawn.append({"label": label, "title": run.title(), "steps": int(run.config.train.steps),
                  "depths": depths, "variants": variants, "grad_norm_init": grads})
  return {"rows": rows, "net_rows": net_rows, "contrasts": tables.holm(contrasts),
          "curves": curves, "best_lr": rates, "figure_data": {"views": drawn}}


def _loss_and_accuracy(axes, view: dict, curves: dict) -> None:
  label = view["label"]
  for ax, key in zip(axes, ("train_loss", "train_acc")):
    for v in view["variants"]:
      c = curves[f"{label}/{v}/{key}"]
      figures.line(ax, {"x": c["depth"], **c}, color=COLORS[v], label=LABELS[v])
    style.log2_axis(ax, view["depths"])
    ax.set_xlabel("depth")
    if key == "train_loss":
      ax.set_yscale("log")
      ax.set_ylabel("final training loss (geo. mean)")
      ax.set_title(f"{view['title']} ({label.split(', ', 1)[-1] if ', ' in label else 'one lr'})",
                   fontsize=9)
    else:
      ax.set_ylim(0, 1.02)
      ax.set_ylabel("final training accuracy")
      ax.set_title(f"training accuracy after {view['steps']} steps")
    ax.legend(frameon=False)


def _gradients(ax, view: dict) -> None:
  if not view["grad_norm_init"]:
    ax.axis("off")
    return
  for v, s in view["grad_norm_init"].items():
    figures.line(ax, s, color=COLORS[v], label=LABELS[v], marker=None)
  ax.set_yscale("log")
  ax.set_xlabel("weight layer (input side = 1)")
  ax.set_ylabel(r"$\|\partial L / \partial W_l\|$ at initialization")
  ax.set_title(f"gradient norm per layer at init, depth {view['depths'][-1]}")
  ax.xaxis.set_major_locator(figures.int_locator())
  ax.legend(frameon=False)


def figure(tabs: dict[str, Any]):
  """Per view: loss and accuracy vs depth, gradient norms per layer at init."""
  views = tabs["figure_data"]["views"]
  with style.context():
    fig, axes = style.figure((13, 3.4 * len(views)), len(views), 3, squeeze=False)
    for r, view in enumerate(views):
      _loss_and_accuracy(axes[r, :2], view, tabs["curves"])
      _gradients(axes[r, 2], view)
    figures.finish(fig, "Degradation with depth: plain vs residual, same parameters and budget "
                   "(He et al. 2016, Fig. 6)", figures.footer(tabs, log_note=True))
  return fig


def headline(result: dict[str, Any]) -> dict[str, str]:
  """C5 in one sentence from study.json: plain minus residual final training loss at the
  deepest depth of each view, and how many depth contrasts survive Holm."""
  parts = []
  views = [v["label"] for v in result["figure_data"]["views"]]
  for label in views:
    pairs = {int(k.split("depth ")[1].split(":")[0]): c for k, c in result["contrasts"].items()
             if k.startswith(f"{label}/depth ")}
    deep = max(pairs)
    kept = sum(bool(c.get("holm_reject")) for c in pairs.values())
    acc = {r["variant"]: r["train_acc"] for r in result["rows"]
           if r["view"] == label and r["depth"] == deep}
    parts.append(f"{label}: depth {deep} {tables.verdict_text(pairs[deep], 1, 2)} "
                 f"(training accuracy plain {100 * acc.get('plain', float('nan')):.0f}%, "
                 f"residual {100 * acc.get('residual', float('nan')):.0f}%), {kept} of "
                 f"{len(pairs)} depths detected")
  family = next(iter(result["contrasts"].values())).get("family_size")
  return {"C5": "plain minus residual final training loss: " + "; ".join(parts) +
                f" (Holm over the study's {family} contrasts)."}
