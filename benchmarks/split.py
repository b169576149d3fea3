"""Step time on 1, 2, 4, 8 CPU host devices, and the count `train.data_mesh` picks.

  python -m launch.bench split [--quick]

For each model (CIFAR-sized ResNets at two batch sizes, ResNet-20 on 8x8
digits, two MLPs on spirals), one process builds the train step on meshes of
1, 2, 4 and 8 of its host devices and times them in alternating rounds (the
median ms per step). This is the measurement behind the rule in
`resjax.sharding.data_devices`.
"""
from __future__ import annotations

import statistics
from typing import Any

import jax
import ml_collections

from configs import embedded
from resjax import sharding
from resjax import train
from benchmarks import train as bench_train


def _models(quick: bool) -> dict[str, ml_collections.ConfigDict]:
  if quick:
    mlp = embedded.get_config("tiny_mlp")
    return {"ResNet-6 (8, 16), CIFAR, batch 32": bench_train._config(  # pylint: disable=protected-access
        6, False, 32, bench_train.QUICK_WIDTHS), "MLP 2 x 8, spirals, batch 32": mlp}
  wide = embedded.get_config("spirals_resmlp")
  wide.model.width, wide.model.depth = 1024, 8
  cifar = bench_train._config  # pylint: disable=protected-access
  return {
      "ResNet-20, CIFAR, batch 128": cifar(20, False, 128, (16, 32, 64)),
      "ResNet-20, CIFAR, batch 32": cifar(20, False, 32, (16, 32, 64)),
      "ResNet-6 (8, 16), CIFAR, batch 128": cifar(6, False, 128, bench_train.QUICK_WIDTHS),
      "ResNet-6 (8, 16), CIFAR, batch 32": cifar(6, False, 32, bench_train.QUICK_WIDTHS),
      "ResNet-20, digits 8x8, batch 128": embedded.get_config("digits_resnet20"),
      "MLP 8 x 1024, spirals, batch 128": wide,
      "MLP 24 x 16, spirals, batch 128": embedded.get_config("spirals_resmlp"),
  }


def _step(config: ml_collections.ConfigDict, devices) -> tuple[Any, int]:
  """(one blocking step on a fixed batch, the count data_mesh picks) for `config`."""
  if config.data.name not in ("spirals", "digits"):  # CIFAR-sized synthetic batches.
    step, _, _ = bench_train.resjax_step(config, devices)
    picked = train.data_mesh(config, bench_train.IMAGE_SHAPE, bench_train.NUM_CLASSES)
    return step, sharding.num_shards(picked)
  ds = train.load_data(config)
  mesh = sharding.make_mesh(devices)
  state = train.create_train_state(config, mesh, ds.input_shape, ds.num_classes,
                                   mean=ds.mean, std=ds.std)
  p_train, _ = train.jit_steps(state, mesh)
  batch = sharding.to_global(train.host_batch(ds.train, 0, seed=config.seed,
                                              global_batch=config.data.batch_size), mesh)
  box = {"state": state}

  def step():
    box["state"], m = p_train(box["state"], batch)
    jax.block_until_ready(m["loss"])

  step()
  picked = train.data_mesh(config, ds.input_shape, ds.num_classes)
  return step, sharding.num_shards(picked)


def run(quick: bool = False) -> dict[str, Any]:
  """Prints ms per step per device count for each model; returns the figures."""
  counts = [k for k in (1, 2, 4, 8) if k <= jax.local_device_count()]
  rounds = 1 if quick else 3
  figures: dict[str, Any] = {"counts": counts, "models": {}}
  print(f"ms per train step on {' / '.join(map(str, counts))} host devices "
        f"(median, {rounds} alternating rounds), and the count train.data_mesh picks")
  for name, config in _models(quick).items():
    timers, picked = [], None
    for k in counts:
      step, picked = _step(config, jax.devices()[:k])
      timers.append(bench_train.Timer(str(k), step))
    heavy = config.data.name not in ("spirals",) and not quick
    bench_train.interleave(timers, rounds, 3 if heavy else 20)
    ms = [1e3 * statistics.median(t.wall) for t in timers]
    figures["models"][name] = {"ms": ms, "picked": picked}
    print(f"  {name:36s} {' / '.join(f'{v:.1f}' for v in ms)}  -> {picked}", flush=True)
  return figures
