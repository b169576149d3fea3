"""A grid's mesh and its vmapped / sharded steps: the single run's pure steps over stacked nets."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from resjax import errors
from resjax import sharding
from resjax.grid import spec
from resjax.grid import state as grid_state
from resjax.train import mesh as train_mesh
from resjax.train import steps as train_steps


# CPU host devices. A grid's nets are split over k devices along 'grid' (each
# device trains whole nets) only while each device keeps at least
# MIN_HOST_GRID_FLOPS forward FLOPs per step (the padded net's forward FLOPs per
# example x batch x nets per device: `grid_work`), unless the nets use each
# weight at many positions of an example (convolutions: more than
# MIN_CONV_FLOPS_PER_PARAM forward FLOPs per parameter per example, against
# about 2 for dense layers): vmapped over nets on one device those run as
# grouped convolutions, several times slower per net (docs/performance.md,
# "Layouts"), so they are split as far as the nets divide. Measured by
# `python -m launch.bench grid_devices` and with 8 dense MLPs (width x depth 4)
# alongside (docs/performance.md, "Grids"): CPU ms per step at 1 / 2 / 4 / 8
# devices [forward MFLOPs per step at 1 device; FLOPs per parameter per
# example] and the count this picks:
#
#   32 MLPs (spirals, widths 4-32, depths 2, 4), batch 32 [7.2; 2]  1.8 / 1.8 / 2.1 / 2.8  -> 1
#   the same 32 MLPs, batch 128 [29; 2]                              4.6 / 5.7 / 5.2 / 5.7  -> 1
#   8 MLPs 256 x 4, batch 128 [407; 2]                               30 / 30 / 27 / 32      -> 4
#   8 MLPs 512 x 4, batch 256 [3240; 2]                              172 / 147 / 142 / 158  -> 8
#   8 tiny ResNet-8s (digits), batch 32 [17; 26]                     20 / 26 / 24 / 16      -> 8
#   8 inverted-residual nets (digits, width 8), batch 32 [190; 115]  534 / 385 / 279 / 227  -> 8
MIN_HOST_GRID_FLOPS = 64e6
MIN_CONV_FLOPS_PER_PARAM = 8.0


def _call_flops(config: ml_collections.ConfigDict, input_shape, num_classes: int,
                members: Sequence[int]) -> tuple[float, int]:
  """(Forward FLOPs per example, parameters) of the padded net of the nets `members`."""
  return train_mesh.forward_flops(spec.padded_config(config, members), input_shape, num_classes)


def _work(config: ml_collections.ConfigDict, members: Sequence[int], flops: float,
          n_params: int) -> tuple[float, float]:
  return flops * int(config.data.batch_size) * len(members), flops / max(n_params, 1)


def grid_work(config: ml_collections.ConfigDict, input_shape, num_classes: int,
              members: Sequence[int]) -> tuple[float, float]:
  """(Forward FLOPs of one training step of the nets `members` on one device,
  forward FLOPs per parameter per example of their padded net)."""
  return _work(config, members, *_call_flops(config, input_shape, num_classes, members))


def _host_rows(config: ml_collections.ConfigDict, calls: Sequence[Sequence[int]],
               flops: Sequence[tuple[float, int]], rows: int, min_host_flops: float) -> int:
  """The largest divisor of `rows` whose host devices each keep `min_host_flops`
  forward FLOPs per step in every call (all of `rows` for convolutional nets);
  `flops`: each call's `_call_flops`."""
  works = [_work(config, m, *f) for m, f in zip(calls, flops)]
  if min(per_param for _, per_param in works) > MIN_CONV_FLOPS_PER_PARAM:
    return rows
  work = min(w for w, _ in works)
  return max(k for k in range(1, rows + 1)
             if rows % k == 0 and (k == 1 or work / k >= min_host_flops))


def grid_training_mesh(config: ml_collections.ConfigDict, input_shape, num_classes: int,
                       num_nets: int, devices=None,
                       min_host_flops: float = MIN_HOST_GRID_FLOPS) -> jax.sharding.Mesh:
  """The mesh of a grid ('grid', 'data').

  When the nets can be split over the devices (a divisor > 1 of every call's
  net count that the devices allow), each device trains whole nets: mesh (k,
  1), k the largest such divisor; on CPU host devices, for dense nets, the
  largest whose devices each keep `min_host_flops` forward FLOPs per step in
  every call (MIN_HOST_GRID_FLOPS, see above: light nets pay more for the
  devices' dispatch than the split gains). Otherwise all nets share every
  device and their batch is split as a single run's would be
  (`train.data_mesh`: every accelerator, or as many CPU host devices as the
  model keeps busy): mesh (1, devices).
  """
  devices = jax.devices() if devices is None else list(devices)
  cpu = devices[0].platform == "cpu"
  calls = spec.calls(config)
  rows = spec.grid_size(num_nets, len(devices))
  for members in calls:
    rows = spec.grid_size(math.gcd(rows, len(members)), len(devices))
  flops = []  # Each call's `_call_flops` (each traces its padded net), where the CPU needs them.
  if rows > 1 and cpu:
    flops = [_call_flops(config, input_shape, num_classes, m) for m in calls]
    rows = _host_rows(config, calls, flops, rows, min_host_flops)
  if rows > 1:  # Each device trains whole nets (see jit_steps).
    return sharding.grid_mesh(devices[:rows], rows)
  per_net = devices
  if cpu:
    f, n_params = flops[0] if flops else _call_flops(config, input_shape, num_classes, calls[0])
    per_net = sharding.data_devices(int(config.data.batch_size), f, n_params, per_net)
  batch = int(config.data.batch_size)
  width = len(per_net)
  while batch % width:
    width -= 1
  return sharding.grid_mesh(devices[:width], 1)


def _over_nets(fn: Callable, layout: str, batched: bool) -> Callable:
  """`fn(state, batch)` over stacked nets: vmapped, or one net after another (`lax.map`).

  `batched`: the batch has a leading net axis too (one batch per net).
  """
  if layout == "vmap":
    return jax.vmap(fn, in_axes=(0, 0 if batched else None))
  if batched:
    return lambda states, batch: jax.lax.map(lambda sb: fn(*sb), (states, batch))
  return lambda states, batch: jax.lax.map(lambda s: fn(s, batch), states)


def jit_steps(state: Any, mesh: jax.sharding.Mesh, shared_batch: bool = True,
              layout: str = "vmap") -> tuple[Callable, Callable]:
  """(train_step, eval_step) of `train.steps` vmapped over stacked nets.

  On a grid mesh (`sharding.grid_mesh`) both are `jax.vmap` of the single
  run's steps over the stacked nets, split over 'grid'; the training batch is
  one for all nets (`shared_batch`, split over 'data') or one per net ([net,
  batch, ...]). Metrics and evaluation sums then carry a leading net axis. A
  `GridCalls` gets one program per call (`_jit_calls`); a 'data' mesh, the
  single run's `train.jit_steps`. `layout='map'` runs the nets of a device one
  after another inside the same program (`lax.map`) instead of vmapping them
  (`spec.layout` says which a grid uses).
  """
  if isinstance(state, grid_state.GridCalls):
    return _jit_calls(state, mesh, shared_batch, layout)
  if not sharding.is_grid(mesh):
    return train_steps.jit_steps(state, mesh)
  batch_s = sharding.batch_sharding(mesh)
  nets = sharding.net_sharding(mesh)
  state_s = jax.tree.map(lambda _: nets, state)
  train_batch_s = batch_s if shared_batch else sharding.net_batch_sharding(mesh)
  grid_step = _over_nets(train_steps.train_step, layout, batched=not shared_batch)
  grid_eval = _over_nets(train_steps.eval_step, layout, batched=False)
  if mesh.shape[sharding.GRID_AXIS] > 1:
    # Nets split over devices: each device runs the vmapped steps of its own
    # nets (shard_map). Left to the SPMD partitioner, vmapped convolutions
    # (whose nets XLA folds into the channels) were all-gathered across the
    # devices, and grouped ones gave wrong numbers.
    errors.check(mesh.shape[sharding.DATA_AXIS] == 1, "a grid split over devices keeps "
                 "each net's batch on one device")
    net_spec, whole = jax.sharding.PartitionSpec(sharding.GRID_AXIS), jax.sharding.PartitionSpec()
    grid_step = jax.shard_map(grid_step, mesh=mesh,
                              in_specs=(net_spec, whole if shared_batch else net_spec),
                              out_specs=(net_spec, net_spec))
    grid_eval = jax.shard_map(grid_eval, mesh=mesh, in_specs=(net_spec, whole),
                              out_specs=net_spec)
  options = train_steps.compiler_options(mesh)
  p_train = jax.jit(grid_step, in_shardings=(state_s, train_batch_s),
                    out_shardings=(state_s, nets), donate_argnums=0, compiler_options=options)
  p_eval = jax.jit(grid_eval, in_shardings=(state_s, batch_s), out_shardings=nets,
                   compiler_options=options)
  return p_train, p_eval


def _jit_calls(calls: grid_state.GridCalls, mesh: jax.sharding.Mesh,
               shared_batch: bool, layout: str) -> tuple[Callable, Callable]:
  """`jit_steps` for a grid of several calls: one program per call, run in turn.

  The training step takes one batch per call; metrics and evaluation sums come
  as a tuple with one dict per call, which `merge_calls` joins once fetched
  (joining them on the devices would make every device wait for every call).
  """
  fns = [jit_steps(s, mesh, shared_batch, layout) for s in calls.states]

  def p_train(state: grid_state.GridCalls,
              batches: Sequence[Any]) -> tuple[grid_state.GridCalls, tuple]:
    outs = [f(s, b) for (f, _), s, b in zip(fns, state.states, batches)]
    return grid_state.GridCalls(tuple(o[0] for o in outs)), tuple(o[1] for o in outs)

  def p_eval(state: grid_state.GridCalls, batch: Any) -> tuple:
    return tuple(f(s, batch) for (_, f), s in zip(fns, state.states))

  return p_train, p_eval


def merge_calls(fetched: Any) -> dict:
  """Fetched metrics of a grid's calls (a tuple of dicts) as one dict, nets in order."""
  if not isinstance(fetched, tuple):
    return fetched
  return {k: np.concatenate([np.asarray(part[k]).reshape(-1) for part in fetched])
          for k in fetched[0]}
