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


# A child process imports every resjax module and calls the public API (training
# writes checkpoints, metrics and TensorBoard events, a restore and a tiny sweep
# read them back), then checks the process is as it was: no hook, no signal
# handler, no sys.modules edit, no file descriptor moved, no logging filter.
UNCHANGED = r"""
import importlib, logging, os, pkgutil, signal, sys, tempfile

def state():
  fds = [(s.st_dev, s.st_ino, s.st_mode) for s in map(os.fstat, (0, 1, 2))]
  absl = logging.getLogger("absl")
  return {"unraisablehook": sys.unraisablehook, "excepthook": sys.excepthook,
          "SIGINT": signal.getsignal(signal.SIGINT), "SIGTERM": signal.getsignal(signal.SIGTERM),
          # No stub in place of torch (a real import of it, where installed, is fine).
          "torch stub": "torch" in sys.modules and not getattr(sys.modules["torch"], "__file__",
                                                               None), "fds": fds,
          "wakeup_fd": signal.set_wakeup_fd(-1), "absl filters": list(absl.filters),
          "root filters": list(logging.getLogger().filters),
          "umask": [l for l in open("/proc/self/status") if l.startswith("Umask")]}

before = state()
import resjax
for m in pkgutil.walk_packages(resjax.__path__, "resjax."):
  if not m.name.rsplit(".", 1)[-1].startswith("_"):  # The oneDNN .so loads through its module.
    importlib.import_module(m.name)
from configs import collapse as collapse_configs, embedded
from resjax import checkpoints, collapse, train
config = embedded.get_config("tiny_mlp")
config.train.steps = 2
workdir = tempfile.mkdtemp()
train.train_and_evaluate(config, workdir)
checkpoints.load(workdir)
sweep = collapse_configs.get_config("quick")
sweep.activations, sweep.dims, sweep.seeds, sweep.manifold.points = ("relu",), (2,), 2, 20
collapse.sweep(sweep)
after = state()
changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
assert not changed, changed
print("unchanged:", ", ".join(before))
"""


def test_the_library_leaves_the_process_as_it_was():
  import os
  import subprocess
  import sys
  from helpers import ROOT
  proc = subprocess.run([sys.executable, "-c", UNCHANGED], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "unchanged: unraisablehook" in proc.stdout, proc.stdout[-2000:]


def test_benchmarks_are_not_installed():
  """pyproject's package list takes resjax, launch and configs, never benchmarks/."""
  import os
  import tomllib
  import setuptools
  from helpers import ROOT
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    include = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
  found = setuptools.find_packages(ROOT, include=include)
  assert "resjax" in found and "launch" in found and "configs" in found
  assert not [p for p in found if p.split(".")[0] in ("benchmarks", "tests")], found
  assert os.path.isfile(os.path.join(ROOT, "benchmarks", "collapse.py"))
