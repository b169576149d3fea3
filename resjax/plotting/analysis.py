"""The analysis figures, drawn from probed runs alone (the runs of probes.json).

`plot_units`, `plot_rank`, `plot_gradients` and `plot_energy` each return a
pyplot-free `matplotlib.figure.Figure` in the one style (`plotting.style`).
Runs compared in one figure have their layers aligned by name
(`plotting.layers`); the nets of a grid are drawn every one, each seed of a
condition in the condition's colour, under one legend entry per condition.
matplotlib is imported inside the functions that draw (a slow import that
only figures need).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from resjax.plotting import layers, style

def _layer_ticks(ax, names: Sequence[str]) -> None:
  """One tick per layer name, written small and upright (names can be long)."""
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels([layers.display_name(n) for n in names], rotation=90, fontsize=7)
  ax.set_xlim(-0.5, len(names) - 0.5)




def _style_legend(ax, styles: Sequence[tuple[str, str, str]], extra: Sequence = (),
                  **kwargs) -> None:
  """A legend of line styles (in black), independent of the run colours.

  By default it sits above the axes at the right, beside the left-aligned
  title, where it cannot cover the data.
  """
  from matplotlib.lines import Line2D
  handles = [Line2D([], [], color="0.2", linestyle=ls, marker=mk,
                    markerfacecolor="0.2" if ls == "-" else "none", label=label)
             for label, ls, mk in styles]
  kwargs = {"loc": "lower right", "bbox_to_anchor": (1.0, 0.98), "ncol": len(styles)
            + len(extra), "borderaxespad": 0.0, "fontsize": 7.5, **kwargs}
  ax.add_artist(ax.legend(handles=handles + list(extra), frameon=False, **kwargs))


def _run_handles(labels: Sequence[str], colors: Sequence) -> list:
  """One legend line per series (the seeds of a grid condition share one)."""
  from matplotlib.lines import Line2D
  series = dict(zip(labels, colors))
  return [Line2D([], [], color=c, linewidth=2.5, label=label) for label, c in series.items()]


def _run_legend(fig, labels: Sequence[str], colors: Sequence, y: float = 0.965) -> None:
  """One legend for the whole figure: which colour is which run (or grid condition)."""
  handles = _run_handles(labels, colors)
  fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 4), frameon=False,
             bbox_to_anchor=(0.5, y))


def _side_legend(ax, handles) -> None:
  """A legend right of the axes, where it cannot cover the data."""
  ax.legend(handles=handles, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _has_linear_region(runs: Sequence[dict]) -> bool:
  """Whether any layer of any run passes every unit for some input or position."""
  return any((r["linear_frac"] or 0.0) > 0 or (r["linear_frac_position"] or 0.0) > 0
             for run in runs for r in run["layers"])


def _has_positions(runs: Sequence[dict]) -> bool:
  """Whether any layer has spatial positions (convolutions); MLP layers have one."""
  return any(r.get("positions", 1) > 1 for run in runs for r in run["layers"])


def _has_dense(runs: Sequence[dict]) -> bool:
  return any(r.get("positions", 1) <= 1 for run in runs for r in run["layers"])


def plot_units(runs: Sequence[dict]):
  """Dead/dormant fraction, active-fraction spread and linear-region fraction per layer.

  Panel (c), the linear-region fraction, is per input for dense layers (o) and
  per (input, position) for conv layers (^: all channels on duty at a
  position); it is drawn only where some layer has a linear region, otherwise
  a line under the figure says that it is 0 everywhere.
  """
  from matplotlib.patches import Patch
  linear = _has_linear_region(runs)
  names, xs = layers.aligned(runs, "layers", "layer")
  with style.context():
    fig, axes = style.figure((7.5, 8.6 if linear else 6.4), rows=3 if linear else 2, sharex=True)
    colors = layers.series_colors(runs)
    threshold = runs[0]["summary"]["dormant_threshold"]
    # Bands of the seeds of one condition overlap: each is fainter, their union as one.
    for run, color, x, n in zip(runs, colors, xs, layers.series_sizes(runs)):
      rows = run["layers"]
      axes[0].plot(x, [r["dead_frac"] for r in rows], "o-", color=color)
      axes[0].plot(x, [r["dormant_frac"] for r in rows], "s--", color=color,
                   markerfacecolor="none")
      axes[1].fill_between(x, [r["active_p025"] for r in rows],
                           [r["active_p975"] for r in rows], color=color, alpha=0.18 / n,
                           linewidth=0)
      axes[1].plot(x, [r["active_mean"] for r in rows], "o-", color=color)
      axes[1].plot(x, [r["active_min"] for r in rows], ":", color=color, linewidth=1)
      axes[1].plot(x, [r["active_max"] for r in rows], ":", color=color, linewidth=1)
      if linear:
        y = np.asarray([r["linear_frac"] or 0.0 for r in rows])
        conv = np.asarray([r.get("positions", 1) > 1 for r in rows])
        axes[2].plot(x, y, "-", color=color)
        for mask, marker in ((~conv, "o"), (conv, "^")):
          if mask.any():
            axes[2].plot(x[mask], y[mask], marker, color=color, linestyle="none")
    axes[0].set_ylabel("fraction of units")
    axes[0].set_title("(a) dead units (never on duty) and dormant units", loc="left")
    top = max([r["dead_frac"] for run in runs for r in run["layers"]]
              + [r["dormant_frac"] for run in runs for r in run["layers"]] + [0.0])
    axes[0].set_ylim(-0.02 * max(top, 0.05), 1.1 * max(top, 0.05))
    _style_legend(axes[0], [("dead", "-", "o"),
                            (f"dormant (ReDo score $\\leq$ {threshold:g})", "--", "s")])
    axes[1].set_ylabel("active fraction per input")
    axes[1].set_title("(b) share of a layer's neurons on duty per input", loc="left")
    axes[1].axhline(0.5, color="0.5", linewidth=0.8, linestyle="--")
    axes[1].set_ylim(0, 1)
    _style_legend(axes[1], [("mean", "-", "o"), ("min / max", ":", "")],
                  extra=[Patch(facecolor="0.2", alpha=0.18, label="2.5-97.5%")])
    if linear:
      axes[2].set_ylabel("linear-region fraction")
      axes[2].set_title("(c) every unit on duty: the layer acts linearly (C7)", loc="left")
      top = max(r["linear_frac"] or 0.0 for run in runs for r in run["layers"])
      top = min(1.0, max(top, 0.05))
      axes[2].set_ylim(-0.02 * top, 1.1 * top)
      styles = []
      if _has_dense(runs):
        styles.append(("per input", "-", "o"))
      if _has_positions(runs):
        styles.append(("per (input, position)", "-", "^"))
      _style_legend(axes[2], styles)
    _layer_ticks(axes[-1], names)
    axes[-1].set_xlabel("activation layer (forward order)")
    fig.suptitle(layers.figure_title(runs), fontsize=10, y=0.995)
    _run_legend(fig, layers.series_labels(runs), colors, y=0.965 if linear else 0.955)
    fig.tight_layout(rect=(0, 0.03 if not linear else 0, 1, 0.95 if linear else 0.935))
    if not linear:
      where = "input or position" if _has_positions(runs) else "input"
      fig.text(0.01, 0.005, "(c) linear-region fraction (C7) not drawn: 0 in every layer; "
               f"no {where} puts every unit of a layer on duty.", fontsize=8,
               color="0.3", ha="left", va="bottom")
  return fig


def plot_rank(runs: Sequence[dict]):
  """Participation ratio (a) and entropy effective rank (b) of the features
  before and after the activation, per layer, beside the layer width."""
  import matplotlib.ticker as mticker
  from matplotlib.lines import Line2D
  names, xs = layers.aligned(runs, "layers", "layer")
  width = {}
  for run in runs:
    for r in run["layers"]:
      width.setdefault(r["layer"], r["units"])
  with style.context():
    fig, axes = style.figure((9.5, 6.8), rows=2, sharex=True)
    colors = layers.series_colors(runs)
    panels = (("participation", "(a) participation ratio $(\\sum\\lambda)^2 / \\sum\\lambda^2$"),
              ("entropy_rank", "(b) entropy effective rank $\\exp(-\\sum p \\log p)$, "
               "$p = \\lambda / \\sum\\lambda$ (Roy & Vetterli)"))
    for ax, (key, title) in zip(axes, panels):
      for run, color, x in zip(runs, colors, xs):
        rows = run["layers"]
        ax.plot(x, [r[f"{key}_pre"] for r in rows], "o-", color=color)
        ax.plot(x, [r[f"{key}_post"] for r in rows], "s--", color=color,
                markerfacecolor="none")
      ax.step(np.arange(len(names)), [width[n] for n in names], where="mid", color="0.55",
              linewidth=1)
      ax.set_yscale("log", base=2)
      ax.yaxis.set_major_locator(mticker.LogLocator(base=2))
      ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
      ax.set_ylabel("rank")
      ax.set_title(title, loc="left")
    values = [r[f"{k}_{w}"] for run in runs for r in run["layers"]
              for k in ("participation", "entropy_rank") for w in ("pre", "post")]
    values = [v for v in values if v and v > 0] + list(width.values())
    for ax in axes:  # one scale for both measures
      ax.set_ylim(min(values) / 1.15, max(values) * 1.15)
    axes[-1].set_xlabel("activation layer (forward order)")
    _layer_ticks(axes[-1], names)
    handles = _run_handles(layers.series_labels(runs), colors)
    handles += [Line2D([], [], color="0.55", linewidth=1, label="layer width"),
                Line2D([], [], color="0.2", marker="o", label="before the activation"),
                Line2D([], [], color="0.2", linestyle="--", marker="s",
                       markerfacecolor="none", label="after the activation")]
    _side_legend(axes[0], handles)
    fig.suptitle(f"Effective rank of the channel covariance, eigenvalues $\\lambda$ (C3)\n"
                 f"{layers.figure_title(runs)}", fontsize=10)
    fig.tight_layout()
  return fig


def plot_gradients(runs: Sequence[dict]):
  """Loss-gradient norm per weight layer (geometric mean, 95% interval)."""
  names, xs = layers.aligned(runs, "weights", "layer")
  with style.context():
    fig, ax = style.figure((9.5, 4.0))
    n_batches = 0
    drawn = []
    for run, label, color, x, n in zip(runs, layers.series_labels(runs),
                                       layers.series_colors(runs), xs,
                                       layers.series_sizes(runs)):
      w = run["weights"]
      if not w:
        continue
      n_batches = max(n_batches, w[0]["grad_batches"])
      bound = lambda key: np.asarray([np.nan if r[key] is None else r[key] for r in w],  # noqa: E731
                                     np.float64)  # None: one batch, no interval
      ax.fill_between(x, bound("grad_norm_lo"), bound("grad_norm_hi"),
                      color=color, alpha=0.18 / n, linewidth=0)  # n seeds: fainter each
      ax.plot(x, [r["grad_norm"] for r in w], "o-", color=color)
      drawn.append((run, label, color))
    ax.set_yscale("log")
    ax.set_ylabel(r"$\|\partial L / \partial W\|$")
    ax.set_xlabel("weight layer (forward order)")
    _layer_ticks(ax, names)
    _side_legend(ax, _run_handles([l for _, l, _ in drawn], [c for _, _, c in drawn]))
    bn = ("BatchNorm on each batch's statistics, as in training\n"
          if any(r["summary"].get("batch_norm") for r, _, _ in drawn) else "")
    ax.set_title(f"Gradient norm per layer (geometric mean over {n_batches} batches; "
                 f"band: 95% interval)\n{bn}{layers.figure_title(runs)}")
    fig.tight_layout()
  return fig


def plot_energy(runs: Sequence[dict]):
  """Share of the block-output energy carried by the shortcut, per block.

  Runs without shortcuts are named in the legend (their branch carries 100%);
  when no run has shortcuts, their blocks are drawn as branch-only bars.
  """
  from matplotlib.patches import Patch
  names, xs = layers.aligned(runs, "blocks", "block")
  with style.context():
    fig, ax = style.figure((9.5, 3.8))
    colors, labels = layers.series_colors(runs), layers.series_labels(runs)
    residual = [i for i, r in enumerate(runs) if any(b["has_shortcut"] for b in r["blocks"])]
    plain = [i for i, r in enumerate(runs) if r["blocks"] and i not in residual]
    shown = residual or plain
    width = 0.8 / max(len(shown), 1)
    for k, i in enumerate(shown):
      blocks = runs[i]["blocks"]
      x = xs[i] + (k - (len(shown) - 1) / 2) * width
      if residual:
        ax.bar(x, [b["shortcut_frac"] or 0.0 for b in blocks], width=width * 0.92,
               color=colors[i], alpha=0.85)
      else:  # no shortcut anywhere: the branch carries everything
        ax.bar(x, np.ones(len(blocks)), width=width * 0.92, facecolor="white",
               edgecolor=colors[i], hatch="///", linewidth=0.6)
    ax.axhline(0.5, color="0.5", linewidth=0.8, linestyle="--")
    ax.set_ylim(0, 1.0)
    ax.set_ylabel(r"shortcut share $\|s\|^2 / (\|s\|^2 + \|b\|^2)$")
    ax.set_xlabel("block (forward order)")
    _layer_ticks(ax, names)
    handles = _run_handles([labels[i] for i in shown], [colors[i] for i in shown])
    if not residual:
      handles.append(Patch(facecolor="white", edgecolor="0.35", hatch="///",
                           label="no shortcuts (branch: 100%)"))
    handles += [Patch(facecolor="none", edgecolor="none",
                      label=f"{label}: no shortcuts (branch: 100%)")
                for label in dict.fromkeys(labels[i] for i in plain) if residual]
    _side_legend(ax, handles)
    ax.set_title(f"Block output s + b: energy in the shortcut s vs the branch b (C5)\n"
                 f"{layers.figure_title(runs)}")
    fig.tight_layout()
  return fig


