"""The training mesh of a single run: how many devices share its batch."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from resjax import models
from resjax import sharding
from resjax.grid import spec as grid_spec
from resjax.kernels import onednn
from resjax.train.state import build_model


def forward_flops(config: ml_collections.ConfigDict, input_shape,
                  num_classes: int) -> tuple[float, int]:
  """(FLOPs of one example's forward pass, by XLA's cost analysis; parameters)."""
  model = build_model(config, num_classes)
  if getattr(model, "conv_impl", "xla") != "xla":  # Custom calls count no FLOPs.
    model = model.clone(conv_impl="xla")
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  variables = jax.eval_shape(
      lambda x: model.init({"params": jax.random.PRNGKey(0)}, x, train=False), x)
  cost = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", 0.0)), models.param_count(variables["params"])


def data_mesh(config: ml_collections.ConfigDict, input_shape, num_classes: int,
              devices=None) -> jax.sharding.Mesh:
  """The training mesh for `config`: see `sharding.data_devices`."""
  devices = jax.devices() if devices is None else list(devices)
  if devices[0].platform != "cpu":  # Every accelerator; no need to count FLOPs.
    return sharding.make_mesh(devices)
  flops, n_params = forward_flops(config, input_shape, num_classes)
  return sharding.make_mesh(sharding.data_devices(
      int(config.data.batch_size), flops, n_params, devices,
      threaded_kernels=threaded_kernels(config)))


def trains_on_one_host_device(config: ml_collections.ConfigDict) -> bool:
  """Whether a single run of `config` (not a grid) trains on one CPU host device
  whatever the machine: its model convolves with oneDNN (`threaded_kernels`)."""
  return not grid_spec.is_grid(config) and threaded_kernels(config)


def threaded_kernels(config: ml_collections.ConfigDict) -> bool:
  """Whether the model convolves with oneDNN, whose calls use every core themselves
  (`model.conv_impl`, a field only the families that convolve with it have)."""
  return config.model.get("conv_impl") == "onednn" and onednn.available()


def describe_mesh(mesh: jax.sharding.Mesh) -> str:
  """The devices of `mesh` in words, for the run's first line."""
  n, total = sharding.num_shards(mesh), jax.device_count()
  if sharding.is_grid(mesh):
    rows = mesh.shape[sharding.GRID_AXIS]
    return (f"{rows * n} of {total} devices ({rows} along the nets x {n} along each "
            "net's batch: resjax/grid/steps.py grid_training_mesh)")
  if n == total or mesh.devices.flat[0].platform != "cpu":
    return f"{n} device{'s' if n > 1 else ''}"
  return f"{n} of {total} host devices (chosen for this model and batch: resjax/sharding.py)"
