"""How many CPU host devices a grid's nets should be split over.

  python -m launch.bench grid_devices [--quick]

CPU seconds (`time.process_time`, all threads of the process) and wall
milliseconds per step of a grid's compiled train step with its nets split
over 1, 2, 4 and 8 host devices along 'grid' (each device trains whole nets,
one batch per net), for (a) the 32-MLP grid of `launch.bench grid`, at its
batch 32 and at 128, (b) 8 seeds of dense MLPs 256 x 4 (batch 128) and 512 x 4
(batch 256), (c) 8 seeds of the `tiny` digits ResNet and (d) 8 seeds of the
bottleneck study's inverted-residual net at bottleneck width 8. The device
counts are timed in turn within each round (the machine is shared); the
forward work (`grid.grid_work`: MFLOPs per step on one device, FLOPs per
parameter per example) printed beside them is what the rule of
`grid.grid_training_mesh` reads. --quick times (a) at batch 32 and (c) on
1 and 2 devices, for a smoke test.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import numpy as np

from benchmarks import grid as bench_grid
from configs import embedded, study
from resjax import grid, sharding, train
from resjax.grid import spec

COUNTS = (1, 2, 4, 8)


def _configs(quick: bool) -> dict[str, ml_collections.ConfigDict]:
  mlp = bench_grid.mlp_config(quick)
  tiny = embedded.get_config("tiny")
  tiny.grid.seeds = tuple(range(8))
  if quick:  # One dense and one conv grid.
    return {"32 MLPs (bench grid)": mlp, "8 tiny ResNets (digits)": tiny}
  mlp128 = bench_grid.mlp_config(quick)
  mlp128.data.batch_size = 128
  out = {"32 MLPs (bench grid)": mlp, "32 MLPs, batch 128": mlp128}
  for width, batch in ((256, 128), (512, 256)):
    dense = bench_grid.mlp_config(quick)
    dense.grid = spec.config_group()
    dense.grid.seeds = tuple(range(8))
    dense.model.width, dense.model.depth, dense.data.batch_size = width, 4, batch
    out[f"8 MLPs {width} x 4, batch {batch}"] = dense
  invres = study.bottleneck()["invres"]
  invres.grid = spec.config_group()
  invres.grid.seeds = tuple(range(8))
  return {**out, "8 tiny ResNets (digits)": tiny, "8 invres, width 8 (digits)": invres}


def _stepper(config: ml_collections.ConfigDict, ds, k: int):
  """A function running `n` steps of the grid split over `k` devices."""
  mesh = sharding.grid_mesh(jax.devices()[:k], k)
  nets = grid.nets(config)
  state = grid.create_grid_state(config, mesh, ds.input_shape, ds.num_classes,
                                 mean=ds.mean, std=ds.std)
  p_train, _ = grid.jit_steps(state, mesh, shared_batch=False,
                              layout=grid.layout(config, "cpu"))
  rows = [train.host_batch(ds.train, 0, seed=n.seed, global_batch=int(config.data.batch_size))
          for n in nets]
  batch = [sharding.to_global(grid.stack(rows), mesh, sharding.net_batch_sharding(mesh))]
  box = [state]

  def steps(n: int) -> None:
    s = box[0]
    for _ in range(n):
      s, m = p_train(s, batch)
    jax.block_until_ready(m)
    box[0] = s

  steps(2)  # Compile and warm up.
  return steps


def run(quick: bool = False) -> dict[str, Any]:
  """CPU ms and wall ms per step at 1/2/4/8 devices along 'grid', per grid (the
  median of 3 rounds of at least 20 steps and about 0.2 s each)."""
  counts = [k for k in (COUNTS[:2] if quick else COUNTS) if k <= jax.device_count()]
  n_steps, rounds = (3, 1) if quick else (20, 3)
  out = {}
  print(f"{'grid, ms per step (CPU / wall)':<30}" + "".join(f"{k:>16}" for k in counts)
        + "   MFLOP at 1, FLOP/param")
  for name, config in _configs(quick).items():
    ds = train.load_data(config)
    nets = len(grid.nets(config))
    work, per_param = grid.grid_work(config, ds.input_shape, ds.num_classes, range(nets))
    steppers = {k: _stepper(config, ds, k) for k in counts if nets % k == 0}
    t0 = time.perf_counter()
    steppers[1](1)
    n = n_steps if quick else max(n_steps, int(0.2 / (time.perf_counter() - t0)))  # >= ~0.2 s.
    cpu = {k: [] for k in steppers}
    wall = {k: [] for k in steppers}
    for _ in range(rounds):
      for k, steps in steppers.items():
        c0, w0 = time.process_time(), time.perf_counter()
        steps(n)
        cpu[k].append((time.process_time() - c0) / n * 1e3)
        wall[k].append((time.perf_counter() - w0) / n * 1e3)
    row = {k: {"cpu_ms": float(np.median(cpu[k])), "wall_ms": float(np.median(wall[k])),
               "cpu_ms_all": cpu[k]} for k in steppers}
    out[name] = {"per_devices": row, "forward_flops_at_1": work,
                 "forward_flops_per_param_per_example": per_param}
    print(f"{name:<30}" + "".join(f"{row[k]['cpu_ms']:>8.1f} /{row[k]['wall_ms']:>6.1f}"
                                  for k in steppers) + f"   {work / 1e6:.1f}, {per_param:.0f}")
  return out
