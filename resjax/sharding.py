"""Device mesh and shardings: the batch is split over 'data', parameters are replicated.

One mesh axis, 'data', spans every device of every process. A host builds only
its own rows of the global batch; `to_global` stitches the rows of all hosts into
one `jax.Array` sharded along the batch dimension.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: all global devices)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over 'data', the rest whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device of the mesh."""
  return NamedSharding(mesh, PartitionSpec())


def num_shards(mesh: Mesh) -> int:
  """How many pieces the batch is split into (the size of the 'data' axis)."""
  return mesh.shape[DATA_AXIS]


def to_global(local_tree: Any, mesh: Mesh) -> Any:
  """Turns this process's rows (NumPy, batch first) into global sharded arrays.

  With one process the local rows are the whole batch. With several, every
  process passes its own equal-sized slice (see `data.local_rows`) and the
  result has `process_count` times as many rows.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_tree)
