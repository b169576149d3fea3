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
from resjax import metrics
from resjax import sharding
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


def _replicate(x: np.ndarray, mesh: jax.sharding.Mesh) -> jax.Array:
  """A host array as one copy on every device of `mesh` (every process holds it)."""
  return jax.make_array_from_callback(x.shape, sharding.replicated(mesh), lambda i: x[i])


def groups_of(configs: Sequence[ml_collections.ConfigDict], calls: Sequence[Sequence[int]],
              stacked: bool, ds: data.Dataset) -> list[list[training.Group]]:
  """Per compiled call, its nets grouped by their own model (net k = configs[k])."""
  out = []
  for members in calls:
    by_model: dict[str, list[int]] = {}
    for k in members:
      by_model.setdefault(json.dumps(configs[k].model.to_dict(), sort_keys=True, default=str),
                          []).append(k)
    groups = []
    for nets in by_model.values():
      config = configs[nets[0]]
      init = train_state.init_fn(config, tuple(ds.input_shape), ds.num_classes, ds.mean, ds.std)
      arrays = jax.eval_shape(init, *train_state.rngs(0)).arrays()
      groups.append(training.Group(
          tuple(nets), tuple(members.index(k) for k in nets) if stacked else None,
          train_state.build_model(config, ds.num_classes),
          {"params": arrays["params"], "batch_stats": arrays["batch_stats"]}))
    out.append(groups)
  return out


class Watch:
  """The probes of one training run: built once, called by the loop."""

  def __init__(self, config: ml_collections.ConfigDict, ds: data.Dataset, nets: Any,
               mesh: jax.sharding.Mesh, state: Any):
    train = config.train
    self.every = int(train.get("probe_every", 0))
    self.tau = float(train.get("dormant_tau", 0.1))
    self.grid = hasattr(nets, "configs")
    configs = nets.configs if self.grid else [config]
    calls = nets.calls if self.grid else [[0]]
    self.states = (lambda s: s.states) if self.grid else (lambda s: (s,))
    seed = int(config.data.get("seed", 0))
    self.split = probe_split(ds.train, int(train.get("probe_batch", 256)), seed)
    self.inputs = _replicate(np.asarray(self.split.inputs), mesh)
    self.labels = _replicate(np.asarray(self.split.labels, np.int32), mesh)
    self.groups = groups_of(configs, calls, self.grid, ds)
    prep = self.states(state)[0].preprocess
    self.programs = [training.program(g, prep, sharding.replicated(mesh)) for g in self.groups]
    self.turnover = training.Turnover()
    self.done: set[int] = set()  # Steps probes.jsonl holds.
    self.pending: list[tuple[int, tuple]] = []

  @classmethod
  def of(cls, config: ml_collections.ConfigDict, ds: data.Dataset, nets: Any,
         mesh: jax.sharding.Mesh, state: Any) -> "Watch | None":
    """The run's watch, or None when it neither probes nor resets."""
    if int(config.train.get("probe_every", 0)) <= 0:
      return None
    return cls(config, ds, nets, mesh, state)

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
    outs = tuple(fn(s.params, s.batch_stats, self.inputs, self.labels)
                 for fn, s in zip(self.programs, self.states(state)))
    self.pending.append((step, outs))

  def flush(self, writer: metrics.Writer) -> None:
    """Fetches the probes taken since the last flush and writes their rows."""
    pending, self.pending = self.pending, []
    if not writer.enabled:
      return
    for step, outs in pending:
      fetched = jax.device_get(outs)
      rows = []
      for groups, sums in zip(self.groups, fetched):
        for r in training.layer_rows(sums, groups, self.tau):
          fields = {**r.fields, **self.turnover.update(r.net, r.layer, r.dead_units),
                    "dead_units": r.dead_units}
          rows.append(metrics.row(step, fields, r.net if self.grid else None, r.layer))
      writer.write_rows(rows, metrics.PROBES_FILE)
      self.done.add(step)
