"""What an asynchronous checkpoint costs the training loop, measured in one process.

  python -m launch.bench checkpoint [--quick] [--out=FILE.json]

For each model: the median step time with no save running; the time
`checkpoints.save` blocks the loop (it returns once the arrays are copied off
the device); the median time of the steps that run while the save is written
in the background; when the checkpoint was seen complete (checked between
steps); a synchronous save (save + wait) for comparison; and a restore. The
overhead of one save is the blocking time plus the extra time of the steps it
overlaps; the last column spreads it over the config's checkpoint period.
Models: ResNet-20 on the 8x8 digits (0.27M parameters, batch 128) and a wide
MLP on spirals (8 x 1024 units, Adam: 75 MB per checkpoint); `--quick` uses a
tiny MLP.
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import jax
import ml_collections

from configs import embedded
from resjax import checkpoints, sharding, train


def _configs(quick: bool) -> dict[str, ml_collections.ConfigDict]:
  if quick:
    return {"tiny MLP": embedded.get_config("tiny_mlp")}
  wide = embedded.get_config("spirals_mlp")
  wide.model.width, wide.model.depth = 1024, 8
  return {"ResNet-20 digits": embedded.get_config("digits_resnet20"),
          "MLP 8x1024 spirals": wide}


def _dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, names in os.walk(path) for f in names)


def measure(config: ml_collections.ConfigDict, *, steps: int, saves: int) -> dict[str, Any]:
  """Timings (seconds) of training steps with and without a save in flight."""
  ds = train.load_data(config)
  mesh = sharding.make_mesh()
  state = train.create_train_state(config, mesh, ds.input_shape, ds.num_classes,
                                   mean=ds.mean, std=ds.std)
  p_train, _ = train.jit_steps(state, mesh)
  meta = train.checkpoint_meta(config, ds)
  batch_size = int(config.data.batch_size)
  i = 0

  def step():
    nonlocal state, i
    batch = sharding.to_global(
        train.host_batch(ds.train, i, seed=config.seed, global_batch=batch_size), mesh)
    tic = time.perf_counter()
    state, m = p_train(state, batch)
    jax.block_until_ready(m)
    i += 1
    return time.perf_counter() - tic

  for _ in range(3):  # Compile and warm up.
    step()
  idle = [step() for _ in range(steps)]
  workdir = tempfile.mkdtemp(prefix="resjax-bench-ckpt-")
  try:
    mngr = checkpoints.manager(workdir, keep=2)
    checkpoints.save(mngr, state, meta)  # The first save sets Orbax up: not timed.
    mngr.wait_until_finished()
    step()
    blocking, complete, in_flight, sync = [], [], [], []
    for _ in range(saves):
      tic = time.perf_counter()
      checkpoints.save(mngr, state, meta)
      blocking.append(time.perf_counter() - tic)
      while mngr.is_saving_in_progress():
        in_flight.append(step())
      mngr.wait_until_finished()
      complete.append(time.perf_counter() - tic)
      step()
    for _ in range(max(1, saves // 2)):
      tic = time.perf_counter()
      checkpoints.save(mngr, state, meta)
      mngr.wait_until_finished()
      sync.append(time.perf_counter() - tic)
      step()
    size = _dir_bytes(os.path.join(checkpoints.directory(workdir), str(mngr.latest_step())))
    tic = time.perf_counter()
    restored = checkpoints.restore(mngr, state)
    jax.block_until_ready(restored.params)
    restore_s = time.perf_counter() - tic
    mngr.close()
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  step_s = statistics.median(idle)
  flight_s = statistics.median(in_flight) if in_flight else float("nan")
  per_save = statistics.median(blocking) + sum(max(0.0, t - step_s) for t in in_flight) / saves
  return {"devices": sharding.num_shards(mesh), "checkpoint_mb": size / 2**20,
          "step_s": step_s, "step_in_flight_s": flight_s,
          "steps_in_flight_per_save": len(in_flight) / saves,
          "save_blocking_s": statistics.median(blocking),
          "save_complete_s": statistics.median(complete),
          "sync_save_s": statistics.median(sync), "restore_s": restore_s,
          "overhead_per_save_s": per_save,
          "overhead_at_checkpoint_every": per_save / (int(config.train.checkpoint_every) * step_s),
          "checkpoint_every": int(config.train.checkpoint_every)}


def run(quick: bool = False) -> dict[str, Any]:
  """Measures every model, prints a table, returns the figures."""
  steps, saves = (5, 2) if quick else (20, 6)
  results = {name: measure(config, steps=steps, saves=saves)
             for name, config in _configs(quick).items()}
  print(f"\ncheckpoint overhead ({jax.devices()[0].platform}, "
        f"{jax.device_count()} devices; medians; ms)")
  header = ("model", "MB", "step", "step+save", "blocks", "complete by", "sync save",
            "restore", "per save", "overhead")
  print(" | ".join(header))
  for name, r in results.items():
    ms = lambda s: f"{1000 * s:.1f}"
    print(" | ".join([name, f"{r['checkpoint_mb']:.1f}", ms(r["step_s"]),
                      ms(r["step_in_flight_s"]), ms(r["save_blocking_s"]),
                      ms(r["save_complete_s"]), ms(r["sync_save_s"]), ms(r["restore_s"]),
                      ms(r["overhead_per_save_s"]),
                      f"{100 * r['overhead_at_checkpoint_every']:.2f}% at every "
                      f"{r['checkpoint_every']} steps"]))
  return results
