"""What a researcher waits for: the main job and a grid as whole processes, beside PyTorch.

  python -m launch.bench startup [--quick]

Each round, in fresh processes, one after another:
  sweep, empty cache  `python -m launch.sweep` (the default sweep) with a new
                      compilation cache directory;
  sweep, warm cache   the same command again, the cache now filled;
  grid, empty cache   `python -m launch.train` with the 32-MLP grid of
                      `launch.bench grid` and a new cache;
  grid, warm cache    the same again;
  PyTorch             `python -m benchmarks.torch_mlp`: the same 32 nets, one
                      after another (with the `bench` extra).
Wall and CPU seconds (user + system) per round, then the medians against
the goals: the sweep within 8 s on an empty cache and 5 s on a warm one;
the grid at 2x and 3x PyTorch's wall time. The load average is printed
before and after: the figures mean something on a quiet machine only.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
from typing import Any

import numpy as np

from benchmarks import grid as bench_grid
from benchmarks import train as bench_train

GOALS = {"sweep_first": 8.0, "sweep_rerun": 5.0, "grid_first_x": 2.0, "grid_rerun_x": 3.0}


def _round(tmp: str, r: int, sweep_flags: list[str], grid_config, torch_job: str | None
           ) -> dict[str, tuple[float, float]]:
  out = {}
  for name in ("first", "rerun"):
    out[f"sweep_{name}"] = bench_grid.timed_process(
        [sys.executable, "-m", "launch.sweep", *sweep_flags,
         f"--workdir={os.path.join(tmp, f'sweep{r}{name}')}",
         f"--compilation_cache_dir={os.path.join(tmp, f'sweep_cache{r}')}"])
  for name in ("first", "rerun"):
    out[f"grid_{name}"] = bench_grid.timed_process(
        [sys.executable, "-m", "launch.train", *bench_grid.train_flags(grid_config),
         f"--workdir={os.path.join(tmp, f'grid{r}{name}')}",
         f"--compilation_cache_dir={os.path.join(tmp, f'grid_cache{r}')}"])
  if torch_job:
    out["torch"] = bench_grid.timed_process([sys.executable, "-m", "benchmarks.torch_mlp",
                                             torch_job])
  return out


def run(quick: bool = False) -> dict[str, Any]:
  rounds = 1 if quick else 3
  sweep_flags = (["--config=configs/collapse.py:quick", "--config.dims=1,2,3",
                  "--config.seeds=2", "--config.manifold.points=50",
                  "--config.figure.dims=2,3"] if quick else [])
  grid_config = bench_grid.mlp_config(quick)
  try:
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    has_torch = True
  except ImportError:
    has_torch = False
    print("PyTorch left out: torch is not installed (pip install -e '.[bench]')")
  print(f"load average before: {bench_train.load_average()}; {rounds} round(s), whole processes")
  times: dict[str, list[tuple[float, float]]] = {}
  with tempfile.TemporaryDirectory() as tmp:
    job = None
    if has_torch:
      x, y, _ = bench_grid.spirals(grid_config)
      job = os.path.join(tmp, "job.npz")
      np.savez(job, x=x, y=y, nets=bench_grid.net_shapes(grid_config),
               steps=int(grid_config.train.steps), batch=int(grid_config.data.batch_size),
               lr=float(grid_config.opt.lr))
    for r in range(rounds):
      for name, t in _round(tmp, r, sweep_flags, grid_config, job).items():
        times.setdefault(name, []).append(t)
      print(f"round {r + 1}: " + ", ".join(f"{n} {w:.1f} s ({c:.1f} CPU-s)"
                                           for n, ts in times.items() for w, c in ts[-1:]),
            flush=True)
  print(f"load average after: {bench_train.load_average()}")
  med = {n: statistics.median(w for w, _ in ts) for n, ts in times.items()}
  figures: dict[str, Any] = {"rounds": rounds, "wall_s": times, "median_wall_s": med}
  print(f"medians: sweep {med['sweep_first']:.1f} s empty cache (goal <= "
        f"{GOALS['sweep_first']:.0f} s), {med['sweep_rerun']:.1f} s warm (goal <= "
        f"{GOALS['sweep_rerun']:.0f} s)")
  line = f"         grid {med['grid_first']:.1f} s empty cache, {med['grid_rerun']:.1f} s warm"
  if "torch" in med:
    first, rerun = med["torch"] / med["grid_first"], med["torch"] / med["grid_rerun"]
    figures.update(grid_first_x=first, grid_rerun_x=rerun)
    line += (f"; PyTorch one net after another {med['torch']:.1f} s: {first:.2f}x (goal >= "
             f"{GOALS['grid_first_x']:.0f}x) / {rerun:.2f}x (goal >= {GOALS['grid_rerun_x']:.0f}x)")
  print(line)
  return figures
