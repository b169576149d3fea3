"""Rebuilding a training state (or net k of a grid) from a workdir's checkpoint.

The Orbax I/O is resjax/checkpoints/io.py; this module knows how a state is
built (resjax/train, resjax/grid) and restores the saved arrays into it. It is
also `resjax.checkpoints.load`.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator, Sequence

import jax
import ml_collections

from resjax import errors, schema
from resjax import sharding
from resjax.checkpoints import io as ckpt
from resjax.grid import spec as grid_spec
from resjax.grid import padding as grid_padding
from resjax.grid import state as grid_state
from resjax.train import optimizer as train_optimizer
from resjax.train import state as train_state


# The arguments of `load` (and `checkpoints.load`).
RULES = {
    "workdir": schema.Rule("path", fix="pass the workdir of a training run"),
    "step": schema.Int(0, none_ok=True, fix="pass an integer step number >= 0 or None"),
    "net": schema.Int(0, none_ok=True, fix="pass an integer net index >= 0 or None"),
}


def _check_args(workdir: Any, step: Any, net: Any) -> None:
  schema.check({"workdir": workdir, "step": step, "net": net}, RULES)


def _abstract(config: ml_collections.ConfigDict, facts: dict, mesh: jax.sharding.Mesh,
              net: int | None, workdir: str) -> Any:
  """The abstract state the checkpoint of `config` restores into."""
  if grid_spec.is_grid(config):
    _check_net(config, net, workdir)
    grid_mesh = sharding.grid_mesh(mesh.devices.flat, 1)
    return grid_state.abstract_grid_state(config, grid_mesh, **facts)
  errors.check(net in (None, 0), f"net={net!r}: {os.path.abspath(workdir)} holds a "
               "single run, not a grid; leave net out")
  return train_state.abstract_train_state(config, mesh, **facts)


def _check_net(config: ml_collections.ConfigDict, net: int | None, workdir: str) -> None:
  count = len(grid_spec.nets(config))
  errors.check(net is None or 0 <= net < count,
               f"net={net!r} is not a net of the grid in {os.path.abspath(workdir)}; "
               f"use 0..{count - 1}")


def _load_fix(steps: Sequence[int], step: int) -> str:
  """What to do when checkpoint `step` cannot be loaded: load an earlier one."""
  earlier = [s for s in sorted(steps) if s < step]
  if earlier:
    return (f"load an earlier checkpoint: step={earlier[-1]} (launch.analyze: "
            f"--step={earlier[-1]})")
  return ("it is the run's first checkpoint: train the run again (launch.train --fresh "
          "moves this one aside)")


def _restored(workdir: str, step: int | None, devices: Sequence[jax.Device] | None,
              net: int | None) -> tuple[ml_collections.ConfigDict, dict, jax.sharding.Mesh, Any]:
  """(config, dataset facts, mesh, restored state) of checkpoint `step` (default: latest)."""
  path = ckpt.directory(workdir)
  errors.check(os.path.isdir(path), f"no checkpoints in {os.path.abspath(workdir)} "
               "(expected a checkpoints/ folder); pass the --workdir of a training run")
  try:
    mngr = ckpt.manager(workdir, read_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.ConfigError(f"{path} cannot be read ({type(e).__name__}: "
                             f"{errors.first_line(e)[:200]})") from None
  try:
    steps = list(mngr.all_steps())
    errors.check(bool(steps), f"{path} holds no complete checkpoint; train first or pass "
                 "another workdir")
    step = max(steps) if step is None else step
    errors.check(step in steps, f"step={step} has no checkpoint in {path}; available: "
                 f"{', '.join(map(str, sorted(steps)))}")
    fix = _load_fix(steps, step)
    meta = ckpt.read_meta(mngr, step, fix=fix)
    try:
      config = ml_collections.ConfigDict(meta["config"])
      ds = meta["dataset"]
      facts = dict(input_shape=tuple(ds["input_shape"]), num_classes=int(ds["num_classes"]),
                   mean=ds["mean"], std=ds["std"])
      mesh = sharding.make_mesh(devices)
      abstract = _abstract(config, facts, mesh, net, workdir)
    except errors.ConfigError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise ckpt.unreadable(mngr, step, e, fix) from None
    return config, facts, mesh, ckpt.restore(mngr, abstract, step, fix=fix)
  finally:
    mngr.close()


def load(workdir: str, step: int | None = None,
         devices: Sequence[jax.Device] | None = None,
         net: int | None = None) -> tuple[ml_collections.ConfigDict, Any]:
  """(config, TrainState) of checkpoint `step` (default: the latest) in `workdir`.

  The state is rebuilt from the config saved with the checkpoint and restored
  replicated over `devices` (default: all devices of this process's JAX), so a
  checkpoint written on 8 devices loads on 1 and vice versa. A missing, empty
  or unreadable workdir raises one-line ConfigError.

  A grid run (config.grid) holds the stacked state of all its nets: `net=k`
  returns net k alone, cut back to its own size, with its own config (the
  single run with its settings), as an ordinary single-net state; without
  `net` the stacked state and the grid's config are returned.
  """
  _check_args(workdir, step, net)
  config, facts, mesh, state = _restored(workdir, step, devices, net)
  if not grid_spec.is_grid(config) or net is None:
    return config, state
  return _own(config, facts, mesh, state, net, {})


def load_nets(workdir: str, nets: Sequence[int] | None = None, step: int | None = None,
              devices: Sequence[jax.Device] | None = None
              ) -> Iterator[tuple[ml_collections.ConfigDict, Any]]:
  """(config, TrainState) of each net k in `nets` (default: every net) of the grid run
  in `workdir`, in order, each as `load(workdir, step, devices, net=k)` returns it, from
  one restore of the checkpoint (a grid's nets analysed one after another).

  The checkpoint is restored, and every argument checked, before this returns; each
  net's state is cut out when the iterator reaches it.
  """
  _check_args(workdir, step, None)
  for k in nets or ():
    _check_args(workdir, step, k)
  config, facts, mesh, state = _restored(workdir, step, devices, None)
  errors.check(grid_spec.is_grid(config), f"{os.path.abspath(workdir)} holds a single run, "
               "not a grid; load it with checkpoints.load(workdir)")
  return _cut(config, facts, mesh, state, nets, workdir)


def load_each(workdir: str, step: int | None = None,
              devices: Sequence[jax.Device] | None = None
              ) -> tuple[ml_collections.ConfigDict, Iterator[tuple[ml_collections.ConfigDict, Any]]]:
  """(the run's config, its nets): a single run's one (config, state), or every net of
  a grid as `load_nets` gives it; the checkpoint is restored once either way."""
  _check_args(workdir, step, None)
  config, facts, mesh, state = _restored(workdir, step, devices, None)
  if not grid_spec.is_grid(config):
    return config, iter([(config, state)])
  return config, _cut(config, facts, mesh, state, None, workdir)


def _cut(config: ml_collections.ConfigDict, facts: dict, mesh: jax.sharding.Mesh, state: Any,
         nets: Sequence[int] | None, workdir: str
         ) -> Iterator[tuple[ml_collections.ConfigDict, Any]]:
  """Nets `nets` (default: all) of the restored grid `state`, each checked now and cut
  out when the iterator reaches it."""
  state = jax.device_get(state)  # Fetched once; each net is sliced on the host.
  nets = range(len(grid_spec.nets(config))) if nets is None else list(nets)
  for k in nets:
    _check_net(config, k, workdir)
  abstract: dict[str, Any] = {}  # Nets that differ only in their seed share their shapes.
  return (_own(config, facts, mesh, state, k, abstract) for k in nets)


def _own(config: ml_collections.ConfigDict, facts: dict, mesh: jax.sharding.Mesh, state: Any,
         net: int, abstract: dict[str, Any]) -> tuple[ml_collections.ConfigDict, Any]:
  """Net `net` of the restored grid `state`, cut back to its own size."""
  own_config = grid_spec.nets(config)[net]
  shape_key = json.dumps({k: v for k, v in own_config.to_dict().items() if k != "seed"},
                         sort_keys=True, default=str)
  if shape_key not in abstract:
    abstract[shape_key] = train_state.abstract_train_state(own_config, mesh, **facts)
  own = abstract[shape_key]
  arrays = grid_padding.crop(jax.device_get(state.net_arrays(config, net)), own.arrays())
  arrays = jax.tree.map(lambda a, like: jax.device_put(a, like.sharding), arrays, own.arrays())
  hparams = {k: jax.device_put(v, sharding.replicated(mesh))
             for k, v in train_optimizer.hyperparams(own_config.opt).items()}
  return own_config, own.replace(**arrays, hparams=hparams)
