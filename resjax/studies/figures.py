"""What the studies' figures share: colours, labels, drawing a table's series, the footer.

Figures are drawn from a study's tables alone (study.json), in the one plot
style (resjax.plotting.style): no pyplot, no global rcParams.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from resjax.plotting import style

COLORS = {"plain": "#c0392b", "residual": "#1f5fa8", "relu": "#c0392b", "linear": "#2e8b57",
          "relu6": "#d2691e"}
LABELS = {"plain": "plain", "residual": "residual", "relu": "ReLU", "linear": "linear",
          "relu6": "ReLU6"}


def arr(values: Sequence[Any]) -> np.ndarray:
  """Floats from JSON values (null -> NaN)."""
  return np.asarray([np.nan if v is None else v for v in values], np.float64)


def triples(s: dict[str, list], scale: float = 1.0) -> list[tuple[float, float, float]]:
  """(mean, lo, hi) per x of a series (tables.series), times `scale`."""
  return list(zip(*(scale * arr(s[k]) for k in ("mean", "lo", "hi"))))


def line(ax, s: dict[str, list], *, color, label=None, scale: float = 1.0, ls: str = "-",
         marker: str | None = "o", alpha: float = 0.18, fill: bool = True) -> None:
  """A series as a mean line with its 95% interval as a band (or error bars)."""
  style.band(ax, arr(s["x"]), triples(s, scale), color=color, label=label, ls=ls,
             marker=marker, alpha=alpha, fill=fill)


def int_locator():
  """Integer ticks (layer numbers)."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top  (slow; figures only)
  return ticker.MaxNLocator(integer=True)


def finish(fig, title: str, note: str) -> None:
  """The suptitle, a tight layout and the grey note under the panels."""
  fig.suptitle(title, fontsize=11, y=1.0)
  fig.tight_layout()
  fig.text(0.5, -0.01, note, ha="center", va="top", fontsize=7.5, color="0.35")


def footer(tables: dict, log_note: bool = False, extra: str = "") -> str:
  """The usual note: seeds per point and which intervals are drawn."""
  return (f"{tables['config']['seeds']} seeds per point; bands and bars: 95% intervals over "
          "seeds (t-intervals" + ("; on log axes, geometric means with t-intervals of the logs"
                                  if log_note else "") + ")" + extra)
