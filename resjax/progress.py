"""The one progress reporter: done/total, rate and ETA, for the sweep, training, probes and studies.

The library never prints: a `Progress` hands each line to the `report`
callable it was given (absl logging by default); launchers pass their own.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional

from absl import logging


def format_duration(seconds: float) -> str:
  """'1h02m', '4m05s' or '12s' ('?' when unknown)."""
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(max(seconds, 0)))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  if h:
    return f"{h}h{m:02d}m"
  if m:
    return f"{m}m{s:02d}s"
  return f"{s}s"


class Progress:
  """Rate and ETA of `total` units of work, reported at most every `every` seconds.

  The rate is measured from the first `update` on, so a compile before the
  first finished unit does not count. `update(done)` returns the line it
  reported, or None when it stayed quiet.
  """

  def __init__(self, total: int, unit: str = "steps", *,
               report: Optional[Callable[[str], None]] = None, every: float = 2.0,
               clock: Callable[[], float] = time.perf_counter):
    self.total, self.unit, self.every, self.clock = int(total), unit, float(every), clock
    self.report = logging.info if report is None else report
    self.first: Optional[tuple[int, float]] = None
    self.last = -math.inf

  def rate(self, done: int) -> float:
    """Units per second since the first update (nan before a second one)."""
    if self.first is None or done <= self.first[0]:
      return math.nan
    return (done - self.first[0]) / max(self.clock() - self.first[1], 1e-9)

  def eta(self, done: int) -> float:
    """Seconds left at the current rate (nan while unknown)."""
    r = self.rate(done)
    return (self.total - done) / r if r > 0 else math.nan

  def line(self, done: int, extra: str = "") -> str:
    """'12/40 steps  3.1 steps/s  ETA 9s' with `extra` between count and rate."""
    width = len(str(self.total))
    r = self.rate(done)
    rate = f"{r:,.1f} {self.unit}/s" if math.isfinite(r) else f"- {self.unit}/s"
    extra = f"  {extra}" if extra else ""
    return (f"{done:>{width}}/{self.total} {self.unit}{extra}  {rate}"
            f"  ETA {format_duration(self.eta(done))}")

  def update(self, done: int, extra: str = "", *, force: bool = False) -> Optional[str]:
    """Records that `done` units are finished; reports a line when due (always at the end)."""
    now = self.clock()
    if self.first is None:
      self.first = (int(done), now)
      if not force and done < self.total:
        return None
    if not force and now - self.last < self.every and done < self.total:
      return None
    self.last = now
    text = self.line(done, extra)
    self.report(text)
    return text
