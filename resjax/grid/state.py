"""A grid's state: every net initialized by the single run's code, padded, stacked.

Net k starts from exactly the state its single run starts from
(`train.init_fn` at its own size), padded into its call's model; its gates,
hyper-parameters and unit mask ride along. Each compiled call (`spec.calls`)
holds one stacked TrainState, sharded over the mesh's 'grid' axis.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np

from resjax import merged_draws, program_cache, sharding
from resjax.grid import spec
from resjax.grid import padding
from resjax.train import optimizer as train_optimizer
from resjax.train import state as train_state


def stacked_abstract(config, input_shape, num_classes, mean, std,
                     members) -> train_state.TrainState:
  """The padded single-net abstract state of the nets `members` (no net axis)."""
  init = train_state.init_fn(spec.padded_config(config, members), tuple(input_shape),
                             num_classes, mean, std)
  big = train_state.init_shapes(init)
  if spec.needs_mask(config):
    big = big.replace(mask=big.params)
  return big


@dataclasses.dataclass(frozen=True)
class GridCalls:
  """A grid's state: one stacked TrainState per compiled call (`grid.calls`).

  Behaves like a TrainState where the loop and the checkpoints need it: one
  step, the arrays to save (a single call's arrays as they are; several
  calls' under 'call0', 'call1', ...), `replace` with restored arrays.
  """
  states: tuple

  @property
  def step(self) -> jax.Array:
    return self.states[0].step

  @property
  def params(self) -> tuple:
    return tuple(s.params for s in self.states)

  def arrays(self) -> dict:
    if len(self.states) == 1:
      return self.states[0].arrays()
    return {f"call{i}": s.arrays() for i, s in enumerate(self.states)}

  def replace(self, **arrays) -> "GridCalls":
    if len(self.states) == 1:
      return GridCalls((self.states[0].replace(**arrays),))
    return GridCalls(tuple(s.replace(**arrays[f"call{i}"]) for i, s in enumerate(self.states)))

  def net_arrays(self, config: ml_collections.ConfigDict, k: int) -> dict:
    """Net k's slice of the checkpointed arrays (padded to its call's model)."""
    for i, members in enumerate(spec.calls(config)):
      if k in members:
        return jax.tree.map(lambda a, j=members.index(k): a[j], self.states[i].arrays())
    raise IndexError(k)


def abstract_grid_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                        input_shape, num_classes: int, *, mean=None, std=None) -> GridCalls:
  """A grid's stacked states as shapes with shardings (nets split over 'grid')."""
  shard = sharding.net_sharding(mesh)
  states = []
  for members in spec.calls(config):
    big = stacked_abstract(config, input_shape, num_classes, mean, std, members)
    states.append(jax.tree.map(
        lambda a, k=len(members): jax.ShapeDtypeStruct((k, *a.shape), a.dtype, sharding=shard),
        big))
  return GridCalls(tuple(states))


@dataclasses.dataclass(frozen=True)
class InitProgram:
  """The one program that initializes a grid's nets: `fn(seeds)` gives, per
  model (`members[i]`, the nets sharing it), the stacked arrays of its nets;
  `closure` names what the trace depends on besides `seeds`."""
  fn: Any
  seeds: list
  members: list
  closure: str


def init_program(nets: Sequence[ml_collections.ConfigDict], input_shape, num_classes: int,
                 *, mean=None, std=None) -> InitProgram:
  """The initial states' program of `nets`, vmapping the init of each model over
  the seeds of the nets that share it (one program, not one per model)."""
  groups: dict[str, list[int]] = {}
  for k, net in enumerate(nets):
    groups.setdefault(json.dumps(net.model.to_dict(), sort_keys=True, default=str),
                      []).append(k)
  members_of = list(groups.values())
  inits = [jax.vmap(train_state.init_fn(nets[m[0]], tuple(input_shape), num_classes, mean, std))
           for m in members_of]
  # Models that share their seeds (a grid crossing seeds with sizes) get the
  # same input: XLA then derives each seed's keys once for all of them (the
  # 32-MLP grid's init compiled in 1.7 s against 2.9).
  index: dict[tuple[int, ...], int] = {}  # Each distinct seed tuple, in order of first use.
  seeds_of = [index.setdefault(tuple(int(nets[k].seed) for k in members), len(index))
              for members in members_of]

  def init_all(seeds):
    keys = [jax.vmap(train_state.rngs)(s) for s in seeds]
    return [_kept(init(*keys[i])) for init, i in zip(inits, seeds_of)]

  closure = json.dumps([[json.loads(nets[m[0]].to_json_best_effort()) for m in members_of],
                        seeds_of, list(input_shape), num_classes, _floats(mean), _floats(std)],
                       sort_keys=True, default=str)
  return InitProgram(init_all, [np.asarray(t, np.uint32) for t in index], members_of, closure)


def initial_states(nets: Sequence[ml_collections.ConfigDict], input_shape, num_classes: int,
                   *, mean=None, std=None) -> list[train_state.TrainState]:
  """Each net's initial state at its own size (host NumPy leaves), as
  `train.create_train_state` makes it, on the default device, from one
  compiled program (`init_program`, its draws merged: `merged_draws`). The
  states are kept beside the program (`program_cache.outputs`): a rerun of
  the same nets reads them instead of computing them."""
  program = init_program(nets, input_shape, num_classes, mean=mean, std=std)
  platform = jax.devices()[0].platform
  stacked_all = program_cache.outputs(
      merged_draws.merged_draws(program.fn, platform), (program.seeds,), closure=program.closure,
      compiler_options=program_cache.cpu_options(train_state.INIT_COMPILER_OPTIONS, platform))
  out: list = [None] * len(nets)
  for members, stacked in zip(program.members, stacked_all):
    each = [jax.tree.map(lambda a, i=i: np.asarray(a[i]), stacked) for i in range(len(members))]
    # One model and optimizer per group, shared by its nets (as one traced init gave them).
    first = train_state.from_arrays(nets[members[0]], input_shape, num_classes, mean, std, each[0])
    for k, arrays in zip(members, each):
      out[k] = first.replace(**arrays)
  return out


def _kept(state: train_state.TrainState) -> dict:
  """The array fields `train_state.from_arrays` makes a state of again."""
  return {**state.arrays(), "hparams": state.hparams, "gates": state.gates}


def _floats(v) -> Optional[list[float]]:
  return None if v is None else [float(x) for x in np.ravel(v)]


def _put(tree: Any, shard: jax.sharding.NamedSharding) -> Any:
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(x.shape, shard, lambda idx, x=x: x[idx]), tree)


def create_grid_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                      input_shape, num_classes: int, *, mean=None, std=None) -> GridCalls:
  """The stacked states of every net of `config.grid` (net k = `grid.nets(config)[k]`),
  one per compiled call."""
  nets = spec.nets(config)
  own = initial_states(nets, input_shape, num_classes, mean=mean, std=std)
  return GridCalls(tuple(
      _stack_call([nets[k] for k in members], [own[k] for k in members],
                  stacked_abstract(config, input_shape, num_classes, mean, std, members), mesh)
      for members in spec.calls(config)))


def _stack_call(nets, own, big, mesh) -> train_state.TrainState:
  """The nets of one call padded into `big` and stacked, sharded over 'grid'."""
  fields = {name: [] for name in ("step", "params", "batch_stats", "opt_state", "rng",
                                  "hparams", "gates", "mask")}
  for net, state in zip(nets, own):
    for name, value in padding.pad(state.arrays(), big.arrays()).items():
      fields[name].append(value)
    fields["hparams"].append(train_optimizer.hyperparams(net.opt))
    fields["gates"].append(padding.gates(net.model.name, net.model, state.params, big.gates))
    if big.mask is not None:
      fields["mask"].append(padding.mask(state.params, big.params))
  shard = sharding.net_sharding(mesh)
  arrays = {name: _put(padding.stack(values), shard) for name, values in fields.items() if values}
  arrays.setdefault("mask", None)
  return big.replace(**arrays)
