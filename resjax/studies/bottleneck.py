"""Linear bottleneck ablation (C6, MobileNetV2 Fig. 6a): inverted-residual nets on digits,
linear vs ReLU6 bottleneck, vs bottleneck width; the gap paired by seed.
"""
from __future__ import annotations

from typing import Any

from resjax.plotting import style
from resjax.studies import figures, runs, tables
from resjax.studies.figures import COLORS, LABELS

FAMILIES = ("invres",)


def analyze(config, trained: dict[str, runs.GridRun], workdir: str, log) -> dict[str, Any]:
  """Rows per condition, linear-minus-ReLU6 contrasts per width."""
  del config, workdir, log
  run = next(iter(trained.values()))
  g = run.config
  metrics = {k: tables.final(run, k) for k in ("test_acc", "train_acc", "train_loss", "test_loss")}
  by = tables.groups(run)
  widths = sorted({n.width for n in run.nets})
  variants = tables.variants(run, ("linear", "relu6"))
  depth = run.nets[0].depth
  contrasts, curves, series, gaps = {}, {}, {}, []
  for w in widths:
    for key in ("test_acc", "train_loss"):
      if {"linear", "relu6"} <= set(variants):
        c = tables.paired(run, metrics[key], ("linear", w, depth), ("relu6", w, depth))
        contrasts[f"width {w}: {key}(linear) - {key}(relu6)"] = c
        if key == "test_acc":
          gaps.append((c["mean"], c["lo"], c["hi"]))
  for key in ("test_acc", "train_loss"):
    ci = tables.geo_ci95 if key == "train_loss" else (lambda x: tables.ci95_in(x, "acc"))
    for v in variants:
      series[f"{v}/{key}"] = tables.series(widths, [ci(metrics[key][by[(v, w, depth)]])
                                                    for w in widths])
      curves[f"{v}/{key}"] = series[f"{v}/{key}"]["mean"]
  if gaps:
    series["test_acc_gap"] = tables.series(widths, gaps)
    curves["test_acc_gap_linear_minus_relu6"] = series["test_acc_gap"]["mean"]
  title = (f"Linear vs ReLU6 bottleneck (MobileNetV2 Fig. 6a): {depth} inverted-residual "
           f"blocks, t={g.model.expansion}, stem fixed, on {g.data.name}")
  return {"rows": tables.condition_rows(run, metrics), "net_rows": tables.net_rows(run),
          "contrasts": tables.holm(contrasts), "curves": curves,
          "figure_data": {"widths": widths, "variants": variants, "steps": int(g.train.steps),
                          "title": title, "series": series}}


def figure(tabs: dict[str, Any]):
  """Test accuracy, the paired gap and training loss vs bottleneck width."""
  data, series = tabs["figure_data"], tabs["figure_data"]["series"]
  widths = data["widths"]
  with style.context():
    fig, axes = style.figure((13.5, 3.8), 1, 3)
    for ax, key in zip((axes[0], axes[2]), ("test_acc", "train_loss")):
      for v in data["variants"]:
        figures.line(ax, series[f"{v}/{key}"], color=COLORS[v], label=f"{LABELS[v]} bottleneck")
      style.log2_axis(ax, widths)
      ax.set_xlabel("bottleneck width (channels)")
      if key == "train_loss":
        ax.set_yscale("log")
        ax.set_ylabel("final training loss (geo. mean)")
        ax.set_title(f"training loss after {data['steps']} steps")
      else:
        ax.set_ylabel("test accuracy")
        ax.set_title("test accuracy vs bottleneck width")
      ax.legend(frameon=False)
    ax = axes[1]
    if "test_acc_gap" in series:
      figures.line(ax, series["test_acc_gap"], color="k", label="linear - ReLU6, paired by seed",
                   fill=False)
    ax.axhline(0, color="0.5", lw=0.8)
    style.log2_axis(ax, widths)
    ax.set_xlabel("bottleneck width (channels)")
    ax.set_ylabel("difference in test accuracy")
    ax.set_title("gap: linear minus ReLU6 bottleneck")
    ax.legend(frameon=False)
    figures.finish(fig, data["title"], figures.footer(tabs, log_note=True))
  return fig


def headline(result: dict[str, Any]) -> dict[str, str]:
  """C6 in one sentence from study.json: linear minus ReLU6 test accuracy per width."""
  acc = {int(k.split(":")[0].split()[1]): c for k, c in result["contrasts"].items()
         if "test_acc" in k}
  parts = "; ".join(f"width {w} {tables.verdict_text(c, 100, 1)}" for w, c in sorted(acc.items()))
  steps = result["figure_data"]["steps"]
  return {"C6": f"linear minus ReLU6 bottleneck, test accuracy in points on digits ({steps} "
                f"steps, one shared rate {result['rows'][0]['lr']:g}, {acc[min(acc)]['n']} "
                f"seeds): {parts}."}
