"""What a process pays before it computes: the import floor of every launcher.

  python -m launch.bench imports [--quick]
  RESJAX_BENCH_PYTHONS=/other/venv/bin/python python -m launch.bench imports

Each statement runs in a fresh child process (`python -c`), rounds
alternated, and the median wall and CPU seconds (user + system) are printed.
`numpy` + `ml_dtypes` against `numpy` alone is what ml_dtypes' registration of
its NumPy types costs every process that imports JAX. Interpreters listed in
RESJAX_BENCH_PYTHONS (colon-separated, e.g. a venv with other versions of
ml_dtypes or NumPy) are timed beside this one, statement by statement; a
statement that fails there shows '-'.
"""
from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks import train as bench_train
from resjax import errors

STATEMENTS = (
    ("numpy", "import numpy"),
    ("numpy + ml_dtypes", "import numpy, ml_dtypes"),
    ("jax", "import jax"),
    ("launch.sweep", "import launch.sweep"),
    ("launch.train", "import launch.train"),
)


def _versions(python: str) -> str:
  code = ("import importlib.metadata as m; print(' '.join(f'{p} {m.version(p)}' for p in "
          "('numpy', 'ml_dtypes', 'jax')))")
  done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
  return done.stdout.strip() if done.returncode == 0 else "versions unknown"


def _timed(python: str, code: str) -> tuple[float, float] | None:
  """Wall and CPU seconds of one `python -c code`; None if it fails."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  done = subprocess.run([python, "-c", code], capture_output=True, check=False)
  wall = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if done.returncode:
    return None
  return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run(quick: bool = False) -> dict[str, Any]:
  pythons = [sys.executable] + [p for p in os.environ.get("RESJAX_BENCH_PYTHONS", "").split(":")
                                if p]
  for python in pythons[1:]:
    errors.check(os.path.isfile(python) and os.access(python, os.X_OK),
                 f"RESJAX_BENCH_PYTHONS: {python} is not an executable file; list "
                 "interpreters by path, separated by ':'")
  rounds = 1 if quick else 5
  statements = STATEMENTS[:2] if quick else STATEMENTS
  times: dict[tuple[int, str], list[tuple[float, float]]] = {}
  failed: set[tuple[int, str]] = set()
  print(f"load average {bench_train.load_average()}; {rounds} rounds, "
        "fresh processes, medians")
  for _ in range(rounds):
    for i, python in enumerate(pythons):
      for name, code in statements:
        got = _timed(python, code)
        if got is None:
          failed.add((i, name))
        else:
          times.setdefault((i, name), []).append(got)
  figures: dict[str, Any] = {"pythons": []}
  for i, python in enumerate(pythons):
    versions = _versions(python)
    print(f"\n[{i}] {python}: {versions}")
    print(f"  {'import':20s} {'wall s':>7s} {'CPU s':>7s}")
    rows = {}
    for name, _ in statements:
      if (i, name) in failed or (i, name) not in times:
        print(f"  {name:20s} {'-':>7s} {'-':>7s}")
        continue
      wall = statistics.median(t[0] for t in times[(i, name)])
      cpu = statistics.median(t[1] for t in times[(i, name)])
      rows[name] = {"wall_s": wall, "cpu_s": cpu}
      print(f"  {name:20s} {wall:7.2f} {cpu:7.2f}")
    figures["pythons"].append({"python": python, "versions": versions, "imports": rows})
  return figures
