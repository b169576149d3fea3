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
  after the activation (C3); the participation ratio is never larger; after the
  activation also the entropy rank of the uncentred Gram matrix F^T F
  (`entropy_rank_gram_post`) and the mean pairwise cosine of the inputs'
  feature vectors (`cosine_post`): both see all inputs pointing one way (rank
  collapse, C5), which the centred covariance does not;
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

import jax
import numpy as np
from jax.sharding import Mesh

from resjax import activations, data, errors, schema, sharding
from resjax.probes.compiled import COLLECTIONS, Batch, flatten, variables_of
from resjax.probes.loop import probe
from resjax.probes.statistics import (HIST_BINS, LIST_FIELDS, Results, dormant_scores,
                                      entropy_rank, participation_ratio, table_rows)

__all__ = ["COLLECTIONS", "HIST_BINS", "LIST_FIELDS", "SPLITS", "Batch", "Results",
           "check_args", "dormant_scores", "entropy_rank", "flatten", "grad_sizes", "participation_ratio",
           "probe", "run", "table_rows", "variables_of"]

SPLITS = ("train", "test")
# Gradient norms by default: this many batches of this many examples, at most
# what the split holds (a value the caller sets is refused if the split is smaller).
GRAD_BATCHES, GRAD_BATCH_SIZE = 8, 64


# The arguments of `run` (and `launch.analyze`'s flags of the same names).
RULES = {
    "split": schema.Choice(SPLITS),
    "batch_size": schema.POSITIVE,
    "dormant_threshold": schema.Float(0.0, 1.0, high_open=True),
    "grad_batches": schema.Int(0, none_ok=True, fix=(
        f"use an integer >= 0, or None ({GRAD_BATCHES}, at most what the split holds)")),
    "grad_batch_size": schema.Int(1, none_ok=True, fix=(
        f"use an integer >= 1, or None ({GRAD_BATCH_SIZE}, at most the split)")),
    "max_examples": schema.Int(1, none_ok=True, fix="use an integer >= 1 or None"),
    "activation": schema.Choice(activations.names, none_ok=True,
                                fix="use an activation name or None"),
}


def check_args(*, split: str = "train", batch_size: int = 256, dormant_threshold: float = 0.1,
               grad_batches: int | None = None, grad_batch_size: int | None = None,
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


def grad_sizes(n: int, n_dev: int, grad_batches: int | None, grad_batch_size: int | None,
               where: str) -> tuple[int, int]:
  """(batches, examples per batch) of the gradient norms on a split of `n` examples.

  None takes the default (GRAD_BATCHES of GRAD_BATCH_SIZE), cut to what the
  split holds; a value set that the split cannot serve is a ConfigError (never
  cut). Batches are full and a multiple of the `n_dev` devices (rounded down,
  at least one per device). `where` names the split in messages.
  """
  if grad_batch_size is None:
    size = min(GRAD_BATCH_SIZE, n)
  else:
    errors.check(grad_batch_size <= n, f"grad_batch_size={grad_batch_size} exceeds the {n} "
                 f"examples of {where}; use 1..{n}, or leave it out ({GRAD_BATCH_SIZE}, at "
                 "most the split)")
    size = grad_batch_size
  size = max(size // n_dev * n_dev, n_dev)
  fit = max(n // size, 1)
  if grad_batches is None:
    return min(GRAD_BATCHES, fit), size
  errors.check(grad_batches <= fit, f"grad_batches={grad_batches} batches of {size} need "
               f"{grad_batches * size} examples, but {where} has {n}; use at most {fit}, or "
               f"leave it out ({GRAD_BATCHES}, at most what the split holds)")
  return grad_batches, size


def _check_state(state: Any) -> None:
  """ConfigError unless `state` is one net's state (not a grid's stacked nets)."""
  stacked = hasattr(state, "net_arrays") or (
      hasattr(state, "step") and np.ndim(getattr(state, "step")) > 0)
  errors.check(not stacked, "state holds the stacked nets of a grid; probe one net: "
               "config, state = checkpoints.load(workdir, net=k)")
  errors.check(hasattr(state, "params") or (isinstance(state, Mapping) and "params" in state),
               f"state is a {type(state).__name__}; pass a TrainState (checkpoints.load) "
               "or a variables dict with 'params'")


def _check_fits(state: Any, model: Any, part: data.Split, preprocess: Callable,
                where: str) -> None:
  """ConfigError unless the inputs of `part` go through `model` (shapes only)."""
  x = jax.ShapeDtypeStruct((1, *part.inputs.shape[1:]), part.inputs.dtype)
  try:
    jax.eval_shape(lambda v, x: model.apply(v, preprocess(x), train=False),
                   variables_of(state), x)
  except Exception as e:  # pylint: disable=broad-except  (flax and XLA raise many types)
    raise errors.ConfigError(
        f"the inputs of {where} (shape {tuple(part.inputs.shape[1:])}) do not fit the state's "
        f"model ({type(e).__name__}: {errors.first_line(e)[:160]}); probe the dataset it was "
        "trained on: train.load_data(config) of checkpoints.load") from None


def run(state: Any, model=None, dataset=None, *, split: str = "train",
        batch_size: int = 256, mesh: Mesh | None = None, dormant_threshold: float = 0.1,
        grad_batches: int | None = None, grad_batch_size: int | None = None,
        max_examples: int | None = None,
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
      batches from the start of the split (`grad_sizes`: None takes 8 of 64,
      at most what the split holds; a value set that it cannot serve is refused).
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
  _check_state(state)
  if model is None:
    model = getattr(getattr(state, "apply_fn", None), "__self__", None)
    errors.check(model is not None, "pass the model: state has no apply_fn of a flax module")
  errors.check(callable(getattr(model, "apply", None)),
               f"model is a {type(model).__name__}; pass a flax module or None")
  part = getattr(dataset, split)
  if max_examples is not None:
    part = data.Split(part.inputs[:max_examples], part.labels[:max_examples])
  n = len(part)
  where = f"the {split} split of {dataset.name}"
  errors.check(n > 0, f"{where} is empty; nothing to probe")
  mesh = mesh or sharding.make_mesh()
  n_dev = sharding.num_shards(mesh)
  batch_size = -(-batch_size // n_dev) * n_dev
  preprocess = getattr(state, "preprocess", None)
  if preprocess is None:
    preprocess = functools.partial(_normalize, mean=tuple(np.ravel(dataset.mean).tolist()),
                                   std=tuple(np.ravel(dataset.std).tolist()))
  _check_fits(state, model, part, preprocess, where)
  # Gradient batches are full (no padding): BatchNorm in training mode would
  # otherwise count padded rows in its statistics.
  count, gsize = grad_sizes(n, n_dev, grad_batches, grad_batch_size, where)
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
