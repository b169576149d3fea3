"""Test setup: eight forced host devices, so the sharding code really runs."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# The launchers the tests start keep their compilation cache (under
# $XDG_CACHE_HOME by default) in a fresh directory, never in the user's.
_CACHE_HOME = tempfile.mkdtemp(prefix="resjax-tests-cache-")
atexit.register(shutil.rmtree, _CACHE_HOME, True)
os.environ["XDG_CACHE_HOME"] = _CACHE_HOME

import contextlib  # noqa: E402
from unittest import mock  # noqa: E402


@contextlib.contextmanager
def mock_tfds(num_examples: int):
  """`tfds.testing.mock_data`, with batched reads done item by item.

  tfds 4.9.10's mocked data source defines `__getitems__` without `self`;
  single-item reads work, so batched reads are routed through them.
  """
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core.data_sources import base
  with tfds.testing.mock_data(num_examples=num_examples,
                              policy=tfds.testing.MockPolicy.USE_CODE), \
      mock.patch.object(base.BaseDataSource, "__getitems__",
                        lambda self, keys: [self[k] for k in keys]):
    yield


def run_steps(config, devices, steps: int):
  """Losses of `steps` training steps of `config` and the final params, on a mesh
  over `devices` (every parameter checked to live on that mesh)."""
  import jax
  import numpy as np
  from resjax import sharding, train
  ds = train.load_data(config)
  mesh = sharding.make_mesh(devices)
  state = train.create_train_state(config, mesh, ds.input_shape, ds.num_classes,
                                   mean=ds.mean, std=ds.std)
  p_train, _ = train.jit_steps(state, mesh)
  losses = []
  for step in range(steps):
    local = train.host_batch(ds.train, step, seed=config.seed,
                             global_batch=config.data.batch_size)
    state, m = p_train(state, sharding.to_global(local, mesh))
    losses.append(m["loss"])
  assert all(p.sharding.mesh.size == len(devices) for p in jax.tree.leaves(state.params))
  return np.asarray(jax.device_get(losses)), jax.device_get(state.params)
