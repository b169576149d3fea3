"""Loading each net of a grid checkpoint: one restore per net vs one for all.

  python -m launch.bench restore [--quick] [--out=FILE.json]

A grid of 16 ResNets on the 8x8 digits (depths 8 and 14, plain and residual,
4 seeds; `--quick`: 4 nets) is trained for 2 steps; then, in alternating rounds
on one device, (a) `checkpoints.load(workdir, net=k)` for every k, what
analysing the nets one after another cost before, against (b)
`checkpoints.load_nets(workdir)`, which restores the checkpoint once and cuts
each net out on the host. Both give the same arrays (tests/test_grid.py).
"""
from __future__ import annotations

import contextlib
import io
import statistics
import tempfile
import time
from typing import Any

import jax

from configs import embedded
from resjax import checkpoints, grid, train


def _config(quick: bool):
  config = embedded.get_config("tiny")
  config.data.num_test = 1697  # 100 training images.
  config.train.steps = 2
  config.grid.seeds = (0, 1) if quick else (0, 1, 2, 3)
  config.grid.model.depth = (8,) if quick else (8, 14)
  config.grid.model.plain = (False, True)
  return config


def run(quick: bool = False) -> dict[str, Any]:
  """Prints seconds per round of each way and their ratio; returns the figures."""
  config = _config(quick)
  count = len(grid.nets(config))
  devices = jax.devices()[:1]
  rounds = 1 if quick else 3
  times: dict[str, list[float]] = {"each": [], "once": []}
  with tempfile.TemporaryDirectory() as workdir:
    with contextlib.redirect_stdout(io.StringIO()):
      train.train_and_evaluate(config, workdir)
    for _ in range(rounds):
      t0 = time.perf_counter()
      for k in range(count):
        checkpoints.load(workdir, net=k, devices=devices)
      times["each"].append(time.perf_counter() - t0)
      t0 = time.perf_counter()
      for _ in checkpoints.load_nets(workdir, devices=devices):
        pass
      times["once"].append(time.perf_counter() - t0)
  each, once = (statistics.median(times[k]) for k in ("each", "once"))
  print(f"{count} nets of a digits ResNet grid, median of {rounds} alternating round(s): "
        f"(a) one load per net {each:.2f} s, (b) load_nets {once:.2f} s: {each / once:.2f}x")
  return {"nets": count, "rounds": rounds, "each_s": each, "once_s": once,
          "times": times, "speedup": each / once}
