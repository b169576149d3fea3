"""The probes during training drawn against step: one panel per field and condition.

Rows of the figure are the fields (dead and dormant fraction, mean active
fraction per input, linear-region fraction, entropy ranks, mean cosine, srank), columns
the conditions (every run or grid condition of `analysis.trajectories.rows`);
each panel draws up to `MAX_LAYERS` layers spread over the depth, coloured
from shallow to deep, each as the mean over the condition's seeds with its
95% interval as a band.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from resjax.plotting import style

MAX_LAYERS = 6
LABELS = {"dead_frac": "dead fraction", "dormant_frac": "dormant fraction",
          "active_mean": "active fraction\nper input (mean)",
          "linear_frac": "linear-region\nfraction", "entropy_rank": "entropy rank",
          "entropy_rank_gram": "entropy rank\n(uncentred)", "cosine": "mean pairwise\ncosine",
          "srank": "srank ($\\delta$ = 0.01)"}


def shown_layers(layers: Sequence[str], most: int = MAX_LAYERS) -> list[str]:
  """At most `most` layers, evenly spread from the first to the last."""
  if len(layers) <= most:
    return list(layers)
  picks = np.unique(np.round(np.linspace(0, len(layers) - 1, most)).astype(int))
  return [layers[i] for i in picks]


def _panels(table: Sequence[dict]) -> list[tuple[str, str]]:
  """(run, condition) of each column, in the table's order."""
  return list(dict.fromkeys((r["run"], r["condition"]) for r in table))


def _column_title(run: str, condition: str, seeds: int, several_runs: bool) -> str:
  name = condition if condition != "all" else ""
  if several_runs:
    name = f"{run} {name}".strip()
  name = name.replace(" ", "\n") if len(name) > 28 else name
  return f"{name or run}\n({seeds} seed{'s' if seeds != 1 else ''})"


def plot_trajectories(table: Sequence[dict]):
  """The figure of `table` (rows of `analysis.trajectories.rows`, any runs)."""
  taus = {r.get("dormant_tau") for r in table}
  threshold = taus.pop() if len(taus) == 1 else None
  from matplotlib import cm  # pylint: disable=g-import-not-at-top
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  fields = [f for f in LABELS if all(f in r for r in table)]  # Older runs lack some.
  columns = _panels(table)
  legends: list = []
  several = len({run for run, _ in columns}) > 1
  width = 1.0 + 2.3 * len(columns)
  with style.context():
    fig, axes = style.figure((max(width, 4.2), 1.3 * len(fields) + 0.9), rows=len(fields),
                             cols=len(columns), sharex=True, sharey="row", squeeze=False)
    for c, (run, condition) in enumerate(columns):
      mine = [r for r in table if r["run"] == run and r["condition"] == condition]
      layers = list(dict.fromkeys(r["layer"] for r in mine))
      shown = shown_layers(layers)
      colors = cm.viridis(np.linspace(0.0, 0.9, len(shown)))
      for layer, color in zip(shown, colors):
        pts = sorted((r for r in mine if r["layer"] == layer), key=lambda r: r["step"])
        steps = [r["step"] for r in pts]
        for f, field in enumerate(fields):
          style.band(axes[f, c], steps, [(r[field], r[f"{field}_lo"], r[f"{field}_hi"])
                                         for r in pts], color=color, label=layer, marker="",
                     alpha=0.12)
      seeds = max(r["seeds"] for r in mine)
      axes[0, c].set_title(_column_title(run, condition, seeds, several), fontsize=9)
      axes[-1, c].set_xlabel("training step")
      legends.append(([Line2D([], [], color=color, label=layer)
                       for layer, color in zip(shown, colors)],
                      f"layer ({len(shown)} of {len(layers)}, forward order)"))
    for f, field in enumerate(fields):
      label = LABELS[field]
      if field == "dormant_frac" and threshold is not None:
        label = f"dormant fraction\n(score $\\leq$ {threshold:g})"
      axes[f, 0].set_ylabel(label)
      # The means set the scale; an interval of few seeds may leave the panel.
      top = float(np.nanmax([r[field] for r in table] + [0.05]))
      if field in ("dead_frac", "dormant_frac", "active_mean", "linear_frac", "cosine"):
        axes[f, 0].set_ylim(-0.03 * min(top, 1.0), min(1.0, 1.15 * top) + 0.02)
      else:
        axes[f, 0].set_ylim(0, 1.2 * top)
    fig.suptitle("Units during training: mean over seeds and 95% t-interval", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    same = all([h.get_label() for h in hs] == [h.get_label() for h in legends[0][0]]
               for hs, _ in legends)
    for c, (handles, title) in enumerate(legends[:1] if same else legends):
      where = (fig, (0.5, 0.0)) if same else (axes[-1, c], (0.5, -0.45))
      where[0].legend(handles=handles, title=title, fontsize=7, title_fontsize=7,
                      ncol=min(len(handles), 6 if same else 2), frameon=False,
                      loc="upper center", bbox_to_anchor=where[1])
  return fig
