"""How a grid's nets share one device: vmapped, or one after another in one program.

  python -m launch.bench layouts [--quick]

Per net-step on one device, for 8 nets of each of an MLP, a digits ResNet
and the inverted-residual family (--quick: 2 nets of the first two), a grid
over the rate, so the nets share their batch: (a) vmapped (`jax.vmap` of the
single run's step), (b) one after another inside the same compiled program
(`lax.map`), and (c) one net alone. `train.grid_layout='auto'` follows `grid.spec.LAYOUT_RULE`,
which this table is there to check; launch/gpu_check.sh runs it on a GPU.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections

from configs import embedded
from resjax import grid, sharding, train


def _step_ms(p_train, state, batch, steps: int) -> float:
  """Milliseconds per call of `p_train` after two warm-up calls."""
  for _ in range(2):
    state, m = p_train(state, batch)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = p_train(state, batch)
  jax.block_until_ready(m)
  return (time.perf_counter() - t0) / steps * 1e3


def layout_times(config: ml_collections.ConfigDict, ds, steps: int) -> dict[str, float]:
  """ms per net-step on one device: the grid's nets vmapped, one after another
  (`lax.map`), and one net alone. The grid varies the rate (one shared batch)."""
  device = jax.devices()[:1]
  mesh = sharding.grid_mesh(device, 1)
  nets = grid.nets(config)
  batch = sharding.to_global(train.host_batch(ds.train, 0, seed=0,
                                              global_batch=int(config.data.batch_size)), mesh)
  out = {}
  for layout in ("vmap", "map"):
    state = grid.create_grid_state(config, mesh, ds.input_shape, ds.num_classes,
                                   mean=ds.mean, std=ds.std)
    p_train, _ = grid.jit_steps(state, mesh, shared_batch=True, layout=layout)
    out[layout] = _step_ms(p_train, state, [batch], steps) / len(nets)
  one_mesh = sharding.make_mesh(device)
  state = train.create_train_state(nets[0], one_mesh, ds.input_shape, ds.num_classes,
                                   mean=ds.mean, std=ds.std)
  p_train, _ = train.jit_steps(state, one_mesh)
  out["alone"] = _step_ms(p_train, state, sharding.to_global(
      train.host_batch(ds.train, 0, seed=0, global_batch=int(config.data.batch_size)),
      one_mesh), steps)
  return out


def run(quick: bool = False) -> dict[str, Any]:
  """Per-family layout table: vmapped vs one after another vs alone, one CPU device."""
  lrs = (1e-3, 2e-3) if quick else tuple(1e-3 * (k + 1) for k in range(8))
  mlp = embedded.get_config("spirals_mlp")
  mlp.model.width, mlp.model.depth, mlp.data.batch_size = 32, 4, 128
  digits = embedded.get_config("digits_resnet20")
  digits.model.depth = 8 if quick else 20
  invres = embedded.get_config("digits_resnet20")  # Digits data, the invres family.
  invres.model = ml_collections.ConfigDict(dict(
      name="invres", expansion=6, bottleneck="linear", bottleneck_bn_shift="learned",
      shortcut=True, activation="relu6"))
  invres.data.batch_size = 32
  out = {}
  print(f"{'one device, ms per net-step':<34}{'vmapped':>9}{'one after another':>19}"
        f"{'alone':>8}   auto picks")
  families = [("mlp 4x32 (spirals)", mlp), (f"resnet-{digits.model.depth} (digits)", digits)]
  if not quick:
    families.append(("invres (digits)", invres))
  for name, config in families:
    config.grid.opt.lr = lrs
    t = layout_times(config, train.load_data(config), 3 if quick else 20)
    t["auto"] = grid.layout(config, jax.devices()[0].platform)
    out[name] = t
    print(f"{name:<34}{t['vmap']:>9.2f}{t['map']:>19.2f}{t['alone']:>8.2f}   {t['auto']}")
  return out
