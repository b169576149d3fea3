"""Shared pieces of the house: the progress reporter, the plot style, the JSON conversion."""
from resjax import progress


class _Clock:
  def __init__(self):
    self.t = 100.0

  def __call__(self):
    return self.t


def test_rate_and_eta_leave_out_the_time_before_the_first_update():
  clock, lines = _Clock(), []
  p = progress.Progress(10, "chunks", report=lines.append, every=0.0, clock=clock)
  clock.t = 150.0  # A long compile before the first chunk finishes.
  assert p.update(1) is None and lines == []
  clock.t = 152.0
  line = p.update(5)
  assert p.rate(5) == 2.0 and p.eta(5) == 2.5
  assert line == " 5/10 chunks  2.0 chunks/s  ETA 2s" and lines == [line]


def test_quiet_between_reports_but_always_at_the_end():
  clock, lines = _Clock(), []
  p = progress.Progress(3, report=lines.append, every=10.0, clock=clock)
  p.update(1)
  clock.t += 1
  assert p.update(2, "loss 0.5") is not None  # First report after the start.
  clock.t += 1
  assert p.update(2) is None  # Within `every` seconds of the last one.
  clock.t += 1
  assert p.update(3).startswith("3/3 steps") and len(lines) == 2
  assert "loss 0.5" in lines[0]


def test_format_duration():
  assert [progress.format_duration(s) for s in (5, 65, 3725, float("nan"))] == [
      "5s", "1m05s", "1h02m", "?"]


def test_plot_style_leaves_global_matplotlib_state_alone():
  import matplotlib
  from resjax.plotting import style
  before = dict(matplotlib.rcParams)
  fig, ax = style.figure((3, 2))
  style.band(ax, [1, 2], [(1, 0.5, 1.5), (2, 1.5, 2.5)], color="r", label="x")
  assert dict(matplotlib.rcParams) == before
  assert ax.xaxis.label.get_fontsize() == style.RC["axes.labelsize"]


def test_one_json_conversion():
  import json
  import numpy as np
  from resjax import files
  obj = {"a": np.float32(np.nan), "b": [np.int64(3), np.array([1.0, np.inf])], "c": np.bool_(True),
         "d": (1.5, "x")}
  out = files.jsonable(obj)
  assert out == {"a": None, "b": [3, [1.0, None]], "c": True, "d": [1.5, "x"]}
  json.dumps(out, allow_nan=False)
