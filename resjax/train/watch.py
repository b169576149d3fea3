"""Watching units while they train: the loop's hook for probes during training.

With `train.probe_every=K` (> 0) the loop calls `Watch` at step 0 (or the step
a run resumes from, unless probes.jsonl already holds it) and after every
K-th step: one compiled call (`probes.training.program`, per compiled call of
a grid) probes every net and every activation layer on a fixed batch of
`train.probe_batch` training examples (drawn once from `data.seed`; the
training split if smaller), with ReDo's dormancy threshold `train.dormant_tau`.
The results stay on the device until the loop next waits for it (logging,
evaluation, saving); then each net's rows go to probes.jsonl and TensorBoard,
with the unit turnover since the previous probe and since the first.

Resuming: probes.jsonl is rewound to the checkpoint's step with metrics.jsonl
(`metrics.Writer`), and the turnover record is rebuilt from the rows kept
(each row lists its dead units), so a run killed at any point writes every
row once and the same numbers as an uninterrupted one. Rows are written
before the checkpoint of their step is saved.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from resjax import data
from resjax import errors
from resjax import metrics
from resjax import models
from resjax.grid import spec as grid_spec
from resjax.probes import training
from resjax.train import state as train_state

# Separates the probe batch's draw from the training batches' (data.train_indices).
PROBE_STREAM = 0x70726F62
# The fields of probes.jsonl that TensorBoard gets (metrics.Writer).
TENSORBOARD = {metrics.PROBES_FILE: training.SCALARS}


def probe_split(split: data.Split, size: int, seed: int) -> data.Split:
  """`size` examples of `split` (all of it if smaller), drawn once from `seed`."""
  order = np.random.default_rng([int(seed), PROBE_STREAM]).permutation(len(split))
  rows = np.sort(order[:min(int(size), len(split))])
  return data.Split(split.inputs[rows], split.labels[rows])


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
  """The probes of one training run: built once, called by the loop."""

  def __init__(self, config: ml_collections.ConfigDict, ds: data.Dataset, nets: Any,
               state: Any, lead: bool = True):
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
    # A probe runs every K steps: on the CPU, as for init, XLA's backend
    # optimizations cost more compile time than they save.
    options = train_state.INIT_COMPILER_OPTIONS if self.device.platform == "cpu" else None
    self.calls = []  # (program, nets, units on the device) per compiled call
    states = state.states if self.grid else (state,)
    for i, s in enumerate(states):
      if self.grid:
        members = nets.calls[i]
        padded = grid_spec.padded_config(config, members)
        found, taps = nets_of(nets.configs, members, s, padded, ds)
        units = jax.device_put(training.units_masks(found, taps), self.device)
      else:
        (found, _), units = nets_of([config], [0], s, None, ds), None
      self.calls.append((training.program(s.apply_fn.__self__, s.preprocess, self.grid,
                                          options), found, units))
    self.turnover = training.Turnover()
    self.done: set[int] = set()  # Steps probes.jsonl holds.
    self.pending: list[tuple[int, tuple]] = []

  @classmethod
  def of(cls, config: ml_collections.ConfigDict, ds: data.Dataset, nets: Any, state: Any,
         lead: bool = True) -> "Watch | None":
    """The run's watch, or None when it neither probes nor resets."""
    if int(config.train.get("probe_every", 0)) <= 0:
      return None
    return cls(config, ds, nets, state, lead)

  def describe(self) -> str:
    return (f"probes every {self.every} steps on {len(self.split)} training examples "
            f"(dormant: ReDo score <= {self.tau:g}) -> {metrics.PROBES_FILE}")

  def resume(self, kept: Sequence[dict]) -> None:
    """Picks up the probe rows kept in probes.jsonl (a resumed run)."""
    self.turnover = training.Turnover.replay(kept)
    self.done = {int(r["step"]) for r in kept if "dead_units" in r}

  def begin(self, state: Any, step: int) -> None:
    """The probe of the state the run starts from (step 0, or a resumed step
    that probes.jsonl lacks)."""
    if step % self.every == 0 and step not in self.done:
      self._probe(state, step)

  def after_step(self, state: Any, step: int) -> Any:
    """What happens after training step `step`: the probe when it is due."""
    if step % self.every == 0:
      self._probe(state, step)
    return state

  def _probe(self, state: Any, step: int) -> None:
    """Starts the probe of every net (only process 0 writes rows: only it probes)."""
    if not self.lead:
      return
    states = state.states if self.grid else (state,)
    outs = tuple(fn(_on(self.device, s.variables), units, self.inputs, self.labels)
                 for (fn, _, units), s in zip(self.calls, states))
    self.pending.append((step, outs))

  def flush(self, writer: metrics.Writer) -> None:
    """Fetches the probes taken since the last flush and writes their rows."""
    pending, self.pending = self.pending, []
    if not writer.enabled:
      return
    for step, outs in pending:
      fetched = jax.device_get(outs)
      rows = []
      for (_, found, _), sums in zip(self.calls, fetched):
        for r in training.layer_rows(sums, found, self.tau):
          fields = {**r.fields, **self.turnover.update(r.net, r.layer, r.dead_units),
                    "dead_units": r.dead_units}
          rows.append(metrics.row(step, fields, r.net if self.grid else None, r.layer))
      writer.write_rows(rows, metrics.PROBES_FILE)
      self.done.add(step)
