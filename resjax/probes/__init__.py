"""Per-layer probes of a trained network: where information dies.

Every model sows the tensor fed to each activation in the 'preacts' collection
and, in residual blocks, the two summands of the block output in 'shortcut' and
'branch'. The probes run the network over a whole evaluation set in jitted
batches sharded over a 'data' mesh axis, add up sufficient statistics on the
host in float64, and report per layer:

- dead fraction: units (channels of a conv) inactive on every input and every
  spatial position (claim C4); a unit is active where the activation's
  `active(z)` holds (for ReLU, z > 0);
- dormant fraction (ReDo, Sokar et al. 2023): a unit's mean |activation|
  divided by the mean over the layer's units is at or below a threshold;
- active fraction per input (share of the layer's neurons, all positions and
  channels, that are on duty) with its spread over inputs (MobileNetV2 Fig. 7);
- linear-region fraction (claim C7): the share of samples on which every
  neuron of the layer is on duty, so the layer acted linearly on them. For a
  dense layer a sample is an input; for a conv layer it is an (input,
  position) pair with all channels on duty, since every unit at every position
  on duty at once (`linear_frac_input`) is ~0 by construction;
- participation ratio (sum l)^2 / sum l^2 and entropy effective rank
  exp(-sum p log p), p = l / sum l (Roy & Vetterli 2007), of the eigenvalues l
  of the channel covariance (spatial positions pooled as samples), before and
  after the activation (C3); the participation ratio is never larger;
- per residual block, the share of the energy carried by the shortcut vs the
  branch (C5);
- per weight layer, the norm of the loss gradient on a few batches (C4).

BatchNorm: every activation statistic above runs the net in eval mode (running
averages), so each input is probed on its own, as the trained net classifies
it; the gradient norms run it in training mode (the statistics of each
gradient batch), as the optimizer saw it.

Modules: `statistics` (host-side float64 numbers and rows), `compiled` (the
jitted per-batch sums and gradient norms), `loop` (`probe`: the loop over batches);
`run` and `check_args` below probe a split of a `resjax.data.Dataset`.

Notebook use::

  config, state = checkpoints.load("runs/d20")      # any device count
  res = probes.run(state, None, train.load_data(config))  # training split by default
  print(res.table()); res.layer("stem")["dead_frac"]
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import numpy as np
from jax.sharding import Mesh

from resjax import activations, data, errors, schema, sharding
from resjax.probes.compiled import COLLECTIONS, Batch, flatten, variables_of
from resjax.probes.loop import probe
from resjax.probes.statistics import (HIST_BINS, LIST_FIELDS, Results, dormant_scores,
                                      entropy_rank, participation_ratio, table_rows)

__all__ = ["COLLECTIONS", "HIST_BINS", "LIST_FIELDS", "SPLITS", "Batch", "Results",
           "check_args", "dormant_scores", "entropy_rank", "flatten", "participation_ratio",
           "probe", "run", "table_rows", "variables_of"]

SPLITS = ("train", "test")


# The arguments of `run` (and `launch.analyze`'s flags of the same names).
RULES = {
    "split": schema.Choice(SPLITS),
    "batch_size": schema.POSITIVE,
    "dormant_threshold": schema.Float(0.0, 1.0, high_open=True),
    "grad_batches": schema.COUNT,
    "grad_batch_size": schema.POSITIVE,
    "max_examples": schema.Int(1, none_ok=True, fix="use an integer >= 1 or None"),
    "activation": schema.Choice(activations.names, none_ok=True,
                                fix="use an activation name or None"),
}


def check_args(*, split: str = "train", batch_size: int = 256, dormant_threshold: float = 0.1,
               grad_batches: int = 8, grad_batch_size: int = 64,
               max_examples: int | None = None, activation: str | None = None) -> None:
  """Raises ConfigError (one line) for a bad argument of `run`.

  `run` calls it, and so does `analysis.analyze` before restoring anything, so
  the API and `launch.analyze` (whose flags have these names) say the same.
  """
  args = dict(split=split, batch_size=batch_size, dormant_threshold=dormant_threshold,
              grad_batches=grad_batches, grad_batch_size=grad_batch_size,
              max_examples=max_examples, activation=activation)
  for field, rule in RULES.items():
    schema.check_value(field, args[field], rule)


def run(state: Any, model=None, dataset=None, *, split: str = "train",
        batch_size: int = 256, mesh: Mesh | None = None, dormant_threshold: float = 0.1,
        grad_batches: int = 8, grad_batch_size: int = 64, max_examples: int | None = None,
        activation: str | None = None,
        progress: Callable[[str], None] | None = None) -> Results:
  """Probes a trained network over a split of a `resjax.data.Dataset`.

  Args:
    state: a `train.TrainState` (e.g. from `checkpoints.load`) or a variables
      dict {'params', 'batch_stats'}.
    model: the flax module; default: the one behind `state.apply_fn`.
    dataset: the `data.Dataset` whose `split` is probed. Inputs are normalized
      by `state.preprocess` when the state has one (the run's own statistics),
      else by the dataset's mean and std; never augmented.
    split: 'train' (default: dead units are a property of the training
      inputs) or 'test'.
    batch_size: global batch, rounded up to a multiple of the device count; the
      last batch is padded and masked.
    grad_batches, grad_batch_size: the gradient norms average this many full
      batches from the start of the split (fewer if the split is small).
    max_examples: probe only the first examples of the split.
    Other arguments as in `probe`.

  Raises:
    ConfigError: a bad argument (`check_args`), with the message
      `launch.analyze` gives for the same value.
  """
  check_args(split=split, batch_size=batch_size, dormant_threshold=dormant_threshold,
             grad_batches=grad_batches, grad_batch_size=grad_batch_size,
             max_examples=max_examples, activation=activation)
  errors.check(dataset is not None, "pass the dataset to probe: run(state, model, dataset)")
  errors.check(isinstance(dataset, data.Dataset),
               f"dataset is a {type(dataset).__name__}; pass a resjax.data.Dataset "
               "(data.load(name) or train.load_data(config))")
  errors.check(hasattr(state, "params") or (isinstance(state, Mapping) and "params" in state),
               f"state is a {type(state).__name__}; pass a TrainState (checkpoints.load) "
               "or a variables dict with 'params'")
  if model is None:
    model = getattr(getattr(state, "apply_fn", None), "__self__", None)
    errors.check(model is not None, "pass the model: state has no apply_fn of a flax module")
  errors.check(callable(getattr(model, "apply", None)),
               f"model is a {type(model).__name__}; pass a flax module or None")
  part = getattr(dataset, split)
  if max_examples is not None:
    part = data.Split(part.inputs[:max_examples], part.labels[:max_examples])
  n = len(part)
  errors.check(n > 0, f"the {split} split of {dataset.name} is empty; nothing to probe")
  mesh = mesh or sharding.make_mesh()
  n_dev = sharding.num_shards(mesh)
  batch_size = -(-batch_size // n_dev) * n_dev
  preprocess = getattr(state, "preprocess", None)
  if preprocess is None:
    preprocess = functools.partial(_normalize, mean=tuple(np.ravel(dataset.mean).tolist()),
                                   std=tuple(np.ravel(dataset.std).tolist()))
  # Gradient batches are full (no padding): BatchNorm in training mode would
  # otherwise count padded rows in its statistics.
  gsize = max(min(grad_batch_size, n) // n_dev * n_dev, n_dev)
  count = min(grad_batches, max(n // gsize, 1))
  grad_split = data.Split(part.inputs[:count * gsize], part.labels[:count * gsize])
  res = probe(state, model, data.eval_batches(part, batch_size),
              grad_batches=list(data.eval_batches(grad_split, gsize)) if count else (),
              mesh=mesh, preprocess=preprocess, activation=activation,
              dormant_threshold=dormant_threshold,
              num_batches=data.num_eval_batches(n, batch_size), progress=progress)
  res.summary.update(split=split, dataset=dataset.name,
                     grad_batch_size=gsize if count else None)
  return res


def _normalize(x, *, mean, std):
  """The dataset's normalization (a module-level function, so `jitted` can hash it)."""
  return data.preprocess(x, mean, std)
