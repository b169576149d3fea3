"""Mesh and shardings: batch split over 'data', parameters replicated."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resjax import sharding


def test_mesh_spans_all_devices():
  mesh = sharding.make_mesh()
  assert mesh.axis_names == ("data",)
  assert sharding.num_shards(mesh) == jax.device_count() == 8
  assert sharding.num_shards(sharding.make_mesh(jax.devices()[:2])) == 2


def test_to_global_splits_the_batch_over_devices():
  mesh = sharding.make_mesh()
  local = {"inputs": np.arange(16 * 3, dtype=np.float32).reshape(16, 3),
           "labels": np.arange(16, dtype=np.int32)}
  batch = sharding.to_global(local, mesh)
  x = batch["inputs"]
  assert x.shape == (16, 3) and x.sharding == sharding.batch_sharding(mesh)
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start)
  assert len(shards) == 8
  for i, shard in enumerate(shards):
    assert shard.data.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(shard.data), local["inputs"][2 * i:2 * i + 2])
  np.testing.assert_array_equal(np.asarray(batch["labels"]), local["labels"])


def test_batch_must_divide_over_the_mesh():
  with pytest.raises(ValueError):
    sharding.to_global({"x": np.zeros((6, 2))}, sharding.make_mesh())


def test_replicated_is_a_full_copy_everywhere():
  mesh = sharding.make_mesh()
  w = jax.device_put(jnp.arange(5.0), sharding.replicated(mesh))
  assert len(w.addressable_shards) == 8
  for shard in w.addressable_shards:
    np.testing.assert_array_equal(np.asarray(shard.data), np.arange(5.0))


def test_sharded_sum_equals_unsharded():
  mesh = sharding.make_mesh()
  x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
  total = jax.jit(lambda b: b["x"].mean(0), out_shardings=sharding.replicated(mesh))(
      sharding.to_global({"x": x}, mesh))
  np.testing.assert_allclose(np.asarray(total), x.mean(0), rtol=1e-6, atol=1e-7)
