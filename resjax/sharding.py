"""Device mesh and shardings: the batch is split over 'data', parameters are replicated.

One mesh axis, 'data', spans the training devices of every process. A host
builds only its own rows of the global batch; `to_global` stitches the rows of
all hosts into one `jax.Array` sharded along the batch dimension.

On accelerators training uses every device. On the CPU the devices are host
devices (`launch.platform` splits the cores into several) and a split pays only
when each device has enough work: every step all-reduces the gradients
across the host devices, which costs time in proportion to the parameters,
and each op has a fixed cost, while the gain (smaller working sets, both
cores busy) grows with the arithmetic. `data_devices` picks the count.
Measured by `python -m launch.bench split` on a quiet 2-core Intel Xeon
(2026-12-06, load 1.0 at the start; oneDNN convolutions for the CIFAR
ResNets, `launch.memory` in place), ms per step at 1 / 2 / 4 / 8 devices:

  ResNet-20, CIFAR, batch 128 (oneDNN)  248 / 269 / 289 / 369
  ResNet-20, CIFAR, batch 32 (oneDNN)   87 / 120 / 161 / 196
  ResNet-6 (8, 16), batch 128 (oneDNN)  45 / 52 / 73 / 106
  ResNet-6 (8, 16), batch 32 (oneDNN)   21 / 28 / 52 / 88
  ResNet-20, digits 8x8 (XLA)           62 / 73 / 80 / 115
  MLP 8 x 1024, spirals                 50 / 223 / 439 / 857
  MLP 24 x 16, spirals                  1.9 / 4.3 / 11 / 19

A oneDNN convolution runs on every core by itself (its own OpenMP threads),
so models that convolve with oneDNN train on one host device. XLA's own
convolution still gains from a split: ResNet-20 at batch 128 with
`model.conv_impl='xla'` took 630 ms per step on 1 device and 550 on 8 (same
machine and day, load 3-4). For those, the FLOP rule below applies, from an
earlier measurement (2-core Xeon shared with other jobs, load 1.4-5.5, XLA's
convolution; in brackets forward FLOPs per parameter per step at 1 device):

  ResNet-20, CIFAR, batch 128 [35k]   1320 / 1055 / 932 / 912    -> 8
  ResNet-20, CIFAR, batch 32 [8.9k]   296 / 256 / 218 / 286      -> 4
  ResNet-20, digits 8x8 [1.6k]        139 / 131 / 135 / 220      -> 1
  MLP 8 x 1024, spirals [256]         98 / 295 / 550 / 999       -> 1
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
GRID_AXIS = "grid"  # Nets of a grid (resjax/grid/), when a run trains several.
# Host devices are added while every device keeps at least this many forward
# FLOPs per parameter per step and this many examples (see the table above).
MIN_HOST_FLOPS_PER_PARAM = 1000.0
MIN_HOST_EXAMPLES = 8


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: all global devices)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_devices(batch: int, flops_per_example: float, num_params: int,
                 devices: Sequence[jax.Device] | None = None, *,
                 threaded_kernels: bool = False) -> list[jax.Device]:
  """The devices to split a training batch of `batch` examples over.

  Accelerators: all of `devices` (default: every global device). CPU host
  devices: the same number k (a power of two) of each process's devices, the
  largest k whose devices each get an equal share of the batch, of at least
  MIN_HOST_EXAMPLES examples and MIN_HOST_FLOPS_PER_PARAM forward FLOPs per
  parameter; at least one each. `threaded_kernels` (the model's heavy ops
  run on every core by themselves, as oneDNN's convolutions do): one each.
  """
  devices = jax.devices() if devices is None else list(devices)
  if devices[0].platform != "cpu":
    return devices
  local: dict[int, list[jax.Device]] = {}
  for d in devices:
    local.setdefault(d.process_index, []).append(d)
  per_process = min(len(v) for v in local.values())
  work = float(flops_per_example) * batch / max(int(num_params), 1)

  def fits(k: int) -> bool:
    shards = k * len(local)
    return (k <= per_process and batch % shards == 0 and batch // shards >= MIN_HOST_EXAMPLES
            and work / shards >= MIN_HOST_FLOPS_PER_PARAM)

  k = 1
  while not threaded_kernels and fits(2 * k):
    k *= 2
  return [d for d in devices if local[d.process_index].index(d) < k]


def grid_mesh(devices: Sequence[jax.Device], nets_axis: int) -> Mesh:
  """A 2-D mesh ('grid', 'data'): `nets_axis` rows of devices, each splitting a batch."""
  devices = list(devices)
  per_net = len(devices) // nets_axis
  return Mesh(np.asarray(devices[:nets_axis * per_net]).reshape(nets_axis, per_net),
              (GRID_AXIS, DATA_AXIS))


def is_grid(mesh: Mesh) -> bool:
  """Whether `mesh` has a 'grid' axis (its arrays carry a leading net axis)."""
  return GRID_AXIS in mesh.axis_names


def net_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (net) dimension split over 'grid', the rest whole."""
  return NamedSharding(mesh, PartitionSpec(GRID_AXIS))


def net_batch_sharding(mesh: Mesh) -> NamedSharding:
  """[net, batch, ...]: nets over 'grid', each net's batch over 'data'."""
  return NamedSharding(mesh, PartitionSpec(GRID_AXIS, DATA_AXIS))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over 'data', the rest whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device of the mesh."""
  return NamedSharding(mesh, PartitionSpec())


def num_shards(mesh: Mesh) -> int:
  """How many pieces the batch is split into (the size of the 'data' axis)."""
  return mesh.shape[DATA_AXIS]


def to_global(local_tree: Any, mesh: Mesh, sharding: NamedSharding | None = None) -> Any:
  """Turns this process's rows (NumPy, batch first) into global sharded arrays.

  With one process the local rows are the whole batch. With several, every
  process passes its own equal-sized slice (see `data.local_rows`) and the
  result has `process_count` times as many rows. `sharding` defaults to
  `batch_sharding(mesh)`.
  """
  sharding = batch_sharding(mesh) if sharding is None else sharding
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_tree)
