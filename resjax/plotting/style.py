"""The one plot style: paper-sized text, a light grid, pyplot-free figures.

Nothing here touches matplotlib's global state: `figure` builds a
`matplotlib.figure.Figure` (no GUI backend, nothing to close) inside
`matplotlib.rc_context(RC)`, and callers that draw later wrap their drawing
in `context()` so ticks and lines they add get the same style.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np

# Paper-sized text and a light grid.
RC = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linewidth": 0.5, "lines.linewidth": 1.5, "lines.markersize": 4,
}

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf",
           "#7f7f7f")


@contextlib.contextmanager
def context() -> Iterator[None]:
  """The style, for the duration of the block only."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (slow import; figures only)
  with matplotlib.rc_context(RC):
    yield


def figure(figsize: tuple[float, float], rows: int = 1, cols: int = 1, **subplots: Any):
  """A styled pyplot-free figure and its axes (`Figure.subplots(rows, cols, **subplots)`)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  with context():
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, **subplots)


def colors(n: int) -> list[str]:
  """`n` distinct colours, cycling through the palette."""
  return [PALETTE[i % len(PALETTE)] for i in range(n)]


def band(ax, x: Sequence[float], triples: Sequence[Sequence[float]], *, color: str, label: str,
         ls: str = "-", marker: str = "o", alpha: float = 0.18, fill: bool = True) -> None:
  """Mean line with its 95% interval (mean, lo, hi per x) as a band, or error bars."""
  x = np.asarray(x, np.float64)
  mean, lo, hi = (np.asarray([t[i] for t in triples], np.float64) for i in range(3))
  ax.plot(x, mean, ls=ls, marker=marker, color=color, label=label)
  ok = np.isfinite(lo) & np.isfinite(hi)
  if fill:
    ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=alpha, lw=0)
  else:
    ax.errorbar(x[ok], mean[ok], yerr=[mean[ok] - lo[ok], hi[ok] - mean[ok]], fmt="none",
                ecolor=color, capsize=2.5, lw=1)


def log2_axis(ax, ticks: Sequence[int]) -> None:
  """A base-2 log x axis labelled at `ticks`."""
  ax.set_xscale("log", base=2)
  ax.set_xticks(list(ticks))
  ax.set_xticklabels([str(t) for t in ticks])
  ax.minorticks_off()
