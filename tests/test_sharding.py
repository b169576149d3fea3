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


class _Device:
  """Stands in for a jax.Device: only the fields `data_devices` reads."""

  def __init__(self, platform: str, process_index: int):
    self.platform, self.process_index = platform, process_index


def _fake(platform: str, processes: int, per_process: int) -> list[_Device]:
  return [_Device(platform, p) for p in range(processes) for _ in range(per_process)]


@pytest.mark.parametrize("flops, params, batch, expect", [
    (75e6, 270e3, 128, 8),      # ResNet-20 on CIFAR: 35k FLOPs per parameter per step.
    (3.5e6, 270e3, 128, 1),     # ResNet-20 on 8x8 digits: 1.6k, splitting would not pay.
    (15e6, 7.4e6, 128, 1),      # A wide MLP: 256.
    (75e6, 270e3, 100, 4),      # 100 = 4 x 25 does not split over 8.
    (75e6, 270e3, 32, 4),       # At least 8 examples per device.
    (75e6, 270e3, 8, 1),
    (10e6, 270e3, 128, 4),      # 1.2k FLOPs per parameter per device at 4, 590 at 8.
])
def test_host_devices_follow_the_work_per_parameter(flops, params, batch, expect):
  devices = _fake("cpu", 1, 8)
  chosen = sharding.data_devices(batch, flops, params, devices)
  assert chosen == devices[:expect]


def test_models_that_convolve_with_onednn_train_on_one_host_device():
  devices = _fake("cpu", 1, 8)
  assert sharding.data_devices(128, 75e6, 270e3, devices) == devices
  assert sharding.data_devices(128, 75e6, 270e3, devices, threaded_kernels=True) == devices[:1]
  gpus = _fake("gpu", 1, 8)
  assert sharding.data_devices(128, 75e6, 270e3, gpus, threaded_kernels=True) == gpus


def test_accelerators_all_train_and_host_processes_split_alike():
  gpus = _fake("gpu", 2, 4)
  assert sharding.data_devices(128, 1.0, 10**9, gpus) == gpus  # However little work.
  cpus = _fake("cpu", 2, 4)
  chosen = sharding.data_devices(128, 75e6, 270e3, cpus)
  assert chosen == cpus[:4] + cpus[4:]  # Every device of each process: 8 in all.
  chosen = sharding.data_devices(128, 15e6, 7.4e6, cpus)
  assert chosen == [cpus[0], cpus[4]]  # One per process: the mesh spans both.
  one = _fake("cpu", 1, 1)
  assert sharding.data_devices(128, 75e6, 270e3, one) == one
