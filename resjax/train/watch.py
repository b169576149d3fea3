"""Watching units while they train: the loop's hook for probes and resets during training.

With `train.probe_every=K` (> 0) the loop calls `Watch` at step 0 (or the step
a run resumes from, unless probes.jsonl already holds it) and after every
K-th step: one compiled call (`probes.training.program`, per compiled call of
a grid) probes every net and every activation layer on a fixed batch of
`train.probe_batch` training examples (drawn once from `data.seed`; the
training split if smaller), with ReDo's dormancy threshold `train.dormant_tau`.
The results stay on the device until the loop next waits for it (logging,
evaluation, saving); then each net's rows go to probes.jsonl and TensorBoard,
with the unit turnover since the previous probe and since the first.

With `train.reset_dead_every=K` (> 0, per net: a grid axis too) every K-th
step then ends with the reset of the dormant units (`train.reset`, one jitted
call per compiled call, on the same batch); how many units each layer reset
goes to probes.jsonl as `reset`.

Resuming: probes.jsonl is rewound to the checkpoint's step with metrics.jsonl
(`metrics.Writer`), and the turnover record is rebuilt from the rows kept
(each row lists its dead units), so a run killed at any point writes every
row once and the same numbers as an uninterrupted one. Rows are written
before the checkpoint of their step is saved.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from resjax import data
from resjax import errors
from resjax import metrics
from resjax import models
from resjax import program_cache
from resjax import sharding
from resjax.grid import spec as grid_spec
from resjax.probes import training
from resjax.train import reset
from resjax.train import state as train_state

# Separates the probe batch's draw from the training batches' (data.train_indices).
PROBE_STREAM = 0x70726F62
# The fields of probes.jsonl that TensorBoard gets (metrics.Writer).
TENSORBOARD = {metrics.PROBES_FILE: training.SCALARS + ("reset",)}


def probe_split(split: data.Split, size: int, seed: int) -> data.Split:
  """`size` examples of `split` (all of it if smaller), drawn once from `seed`."""
  order = np.random.default_rng([int(seed), PROBE_STREAM]).permutation(len(split))
  rows = np.sort(order[:min(int(size), len(split))])
  return data.Split(split.inputs[rows], split.labels[rows])


def _put(tree: Any, where: jax.sharding.Sharding) -> Any:
  """Host arrays (every process holds them whole) as global arrays with sharding `where`."""
  return jax.tree.map(lambda x: jax.make_array_from_callback(
      np.shape(x), where, lambda i, x=np.asarray(x): x[i]), tree)


def _on(device: jax.Device, tree: Any) -> Any:
  """`tree`'s arrays on `device` (a replicated array: this process's copy)."""
  def one(a):
    if isinstance(a, jax.Array) and a.is_fully_replicated:
      a = a.addressable_data(0)
    return jax.device_put(a, device)
  return jax.tree.map(one, tree)


def _own_layers(config: ml_collections.ConfigDict, ds: data.Dataset) -> list[tuple[str, int]]:
  """The activation layers (name, units) of `config`'s model at its own size."""
  model = train_state.build_model(config, ds.num_classes)
  return training.sown_layers(model, None, jax.ShapeDtypeStruct((1, *ds.input_shape),
                                                                 np.float32))


def nets_of(configs: Sequence[ml_collections.ConfigDict], members: Sequence[int], state: Any,
            padded: ml_collections.ConfigDict | None, ds: data.Dataset
            ) -> tuple[list[training.Net], list[tuple[str, int]]]:
  """The nets `members` of one compiled call (net k = configs[k]) as
  `training.Net`s, and the taps of the call's model (`padded`: its config;
  None for a single run)."""
  model = state.apply_fn.__self__
  x = jax.ShapeDtypeStruct((1, *ds.input_shape), np.float32)
  arrays = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1 if padded else 0:], a.dtype),
                        state.variables)
  taps = training.sown_layers(model, arrays, x)
  have = dict(taps)
  seen: dict[str, list[tuple[str, int]]] = {}
  out = []
  for k in members:
    own = configs[k].model
    key = json.dumps(own.to_dict(), sort_keys=True, default=str)
    if key not in seen:
      seen[key] = _own_layers(configs[k], ds)
    layers = []
    for name, c in seen[key]:
      tap = name if padded is None else models.tap_in_padded(own.name, name, own, padded.model)
      errors.check(tap in have and have[tap] >= c, f"probes: layer {name} of net {k} has no "
                   f"tap in the grid's padded model ({tap})")
      layers.append((name, tap, c))
    out.append(training.Net(k, tuple(layers)))
  return out, taps


class Watch:
  """The probes and resets of one training run: built once, called by the loop."""

  def __init__(self, config: ml_collections.ConfigDict, ds: data.Dataset, nets: Any,
               state: Any, mesh: jax.sharding.Mesh, lead: bool = True):
    train = config.train
    self.every = int(train.get("probe_every", 0))
    self.tau = float(train.get("dormant_tau", 0.1))
    self.grid = hasattr(nets, "configs")
    self.lead = lead
    self.device = jax.local_devices()[0]
    seed = int(config.data.get("seed", 0))
    self.split = probe_split(ds.train, int(train.get("probe_batch", 256)), seed)
    self.inputs = jax.device_put(np.asarray(self.split.inputs), self.device)
    self.labels = jax.device_put(np.asarray(self.split.labels, np.int32), self.device)
    # Probes and resets run every K steps: on the CPU, as for init, XLA's
    # backend optimizations cost more compile time than they save.
    options = program_cache.cpu_options(train_state.INIT_COMPILER_OPTIONS, self.device.platform)
    configs = nets.configs if self.grid else [config]
    self.probes = []  # Per compiled call: (program, nets, units on the device).
    self.resets = []  # Per compiled call: _Resets, or None when none of its nets resets.
    states = state.states if self.grid else (state,)
    for i, s in enumerate(states):
      members = nets.calls[i] if self.grid else [0]
      padded = grid_spec.padded_config(config, members) if self.grid else None
      found, taps = nets_of(configs, members, s, padded, ds)
      if self.every > 0:
        units = (jax.device_put(training.units_masks(found, taps), self.device)
                 if self.grid else None)
        self.probes.append((training.program(s.apply_fn.__self__, s.preprocess, self.grid,
                                             options), found, units))
      self.resets.append(_Resets.of(configs, members, s, padded, dict(taps), ds, mesh,
                                    self.tau, self.grid, options))
    self.probe_inputs = _put(np.asarray(self.split.inputs), sharding.replicated(mesh))
    self.turnover = training.Turnover()
    self.done: set[int] = set()  # Steps probes.jsonl holds.
    self.pending: dict[int, dict[str, Any]] = {}

  @classmethod
  def of(cls, config: ml_collections.ConfigDict, ds: data.Dataset, nets: Any, state: Any,
         mesh: jax.sharding.Mesh, lead: bool = True) -> "Watch | None":
    """The run's watch, or None when it neither probes nor resets."""
    configs = nets.configs if hasattr(nets, "configs") else [config]
    if int(config.train.get("probe_every", 0)) <= 0 and not any(map(reset.every, configs)):
      return None
    return cls(config, ds, nets, state, mesh, lead)

  def describe(self) -> str:
    what = []
    if self.every > 0:
      what.append(f"probes every {self.every} steps")
    periods = sorted({int(p) for r in self.resets if r for p in r.periods if p})
    if periods:
      what.append(f"dormant units reset every {'/'.join(map(str, periods))} steps (ReDo)")
    return (f"{' and '.join(what)} on {len(self.split)} training examples (dormant: ReDo "
            f"score <= {self.tau:g}) -> {metrics.PROBES_FILE}")

  def resume(self, kept: Sequence[dict]) -> None:
    """Picks up the probe rows kept in probes.jsonl (a resumed run)."""
    self.turnover = training.Turnover.replay(kept)
    self.done = {int(r["step"]) for r in kept if "dead_units" in r}

  def begin(self, state: Any, step: int) -> None:
    """The probe of the state the run starts from (step 0, or a resumed step
    that probes.jsonl lacks)."""
    if self.every > 0 and step % self.every == 0 and step not in self.done:
      self._probe(state, step)

  def after_step(self, state: Any, step: int) -> Any:
    """After training step `step`: the probe when it is due, then the resets
    (the probe sees the state as trained; the checkpoint, the state reset)."""
    if self.every > 0 and step % self.every == 0:
      self._probe(state, step)
    due = [r is not None and r.due(step) for r in self.resets]
    if not any(due):
      return state
    states = list(state.states if self.grid else (state,))
    counts = []
    for i, r in enumerate(self.resets):
      if due[i]:
        states[i], out = r(states[i], step, self.probe_inputs)
        counts.append((i, out))
    self.pending.setdefault(step, {})["reset"] = counts
    return type(state)(tuple(states)) if self.grid else states[0]

  def _probe(self, state: Any, step: int) -> None:
    """Starts the probe of every net (only process 0 writes rows: only it probes)."""
    if not self.lead:
      return
    states = state.states if self.grid else (state,)
    outs = tuple(fn(_on(self.device, s.variables), units, self.inputs, self.labels)
                 for (fn, _, units), s in zip(self.probes, states))
    self.pending.setdefault(step, {})["probe"] = outs

  def flush(self, writer: metrics.Writer) -> None:
    """Fetches the probes and reset counts since the last flush and writes their rows."""
    pending, self.pending = self.pending, {}
    if not writer.enabled:
      return
    for step in sorted(pending):
      rows: dict[tuple[int, str], dict] = {}
      for (_, found, _), sums in zip(self.probes, jax.device_get(pending[step].get("probe", ()))):
        for r in training.layer_rows(sums, found, self.tau):
          rows[(r.net, r.layer)] = {**r.fields, **self.turnover.update(r.net, r.layer,
                                                                      r.dead_units),
                                    "dead_units": r.dead_units}
          self.done.add(step)
      for i, counts in jax.device_get(pending[step].get("reset", [])):
        for net, layer, n in self.resets[i].rows(counts, step):
          rows.setdefault((net, layer), {})["reset"] = n
      writer.write_rows([metrics.row(step, fields, net if self.grid else None, layer)
                         for (net, layer), fields in rows.items()], metrics.PROBES_FILE)


@dataclasses.dataclass
class _Resets:
  """The resets of one compiled call (`reset.program`) and what they need."""
  program: Any
  periods: np.ndarray  # [nets]: each net's train.reset_dead_every
  nets: list[int]      # grid indices of the call's nets
  names: list          # per net and slot: the net's own layer (None: not its layer)
  aux: Any             # per-net arrays on the mesh
  sharding: Any        # of arrays with a leading net axis

  @classmethod
  def of(cls, configs, members, state, padded, taps, ds, mesh, tau, stacked,
         options) -> "_Resets | None":
    periods = np.asarray([reset.every(configs[k]) for k in members])
    if not periods.any():
      return None
    slots, aux, names = reset.plan(configs, members, padded.model if padded else None,
                                   int(np.prod(ds.input_shape)), taps)
    nets = sharding.net_sharding(mesh) if stacked else sharding.replicated(mesh)
    program = reset.program(state.apply_fn.__self__, slots, tau, state.preprocess, stacked,
                            jax.tree.map(lambda a: a.sharding, state), nets, options)
    return cls(program, periods, list(members), names, _put(aux, nets), nets)

  def due(self, step: int) -> bool:
    return bool(np.any((self.periods > 0) & (step % np.maximum(self.periods, 1) == 0)))

  def __call__(self, state: Any, step: int, inputs: jax.Array) -> tuple[Any, jax.Array]:
    do = (self.periods > 0) & (step % np.maximum(self.periods, 1) == 0)
    return self.program(state, _put(do, self.sharding), self.aux, inputs)

  def rows(self, counts: np.ndarray, step: int) -> list[tuple[int, str, int]]:
    """(net, own layer, units reset) of each net that reset at `step`."""
    out = []
    for i, k in enumerate(self.nets):
      if self.periods[i] > 0 and step % self.periods[i] == 0:
        out += [(k, name, int(counts[i, t])) for t, name in enumerate(self.names[i]) if name]
    return out
