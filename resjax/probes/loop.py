"""`probe`: the probe statistics of a network over batches, merged on the host.

The batches run through `compiled.batch_sums` one at a time; their sums are
merged in float64 per layer (`statistics.LayerAccumulator`) and per block,
then turned into the rows of `statistics.Results`.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from resjax import activations, errors, progress as progress_lib, sharding, stats
from resjax.probes import compiled, statistics


@dataclasses.dataclass
class _Sums:
  """What the batches added up: per layer, per block, and the totals."""
  layers: dict[str, statistics.LayerAccumulator]
  blocks: dict[str, np.ndarray]  # block -> [shortcut, branch, cross] energy
  totals: np.ndarray             # examples, loss sum, correct
  order: tuple[list[str], list[str], list[str]]  # layer, block and weight names


def _progress_line(clock: progress_lib.Progress, done: int, seen: int, batch: int,
                   num_batches: int | None) -> str:
  """'  batch 5/13: 40 examples, 812 examples/s, ETA 2s' (no total or ETA when unknown)."""
  total = f"/{num_batches}" if num_batches else ""
  eta = f", ETA {progress_lib.format_duration(clock.eta(done))}" if num_batches else ""
  rate = clock.rate(done) * batch
  return (f"  batch {done}{total}: {seen} examples, "
          f"{rate if math.isfinite(rate) else 0:.0f} examples/s{eta}")


def _accumulate(stats_fn: Callable, model, variables, batches: Iterable[compiled.Batch], *,
                mesh: Mesh, preprocess: Callable, num_batches: int | None,
                progress: Callable[[str], None] | None, progress_every: int) -> _Sums:
  """Runs `stats_fn` over every batch and merges its sums; reports progress.

  The first batch compiles: its time is reported on its own, and the rate and
  ETA (`resjax.progress.Progress`, in batches) count from the end of it.
  """
  n_dev = sharding.num_shards(mesh)
  sums = _Sums({}, {}, np.zeros(3), None)
  clock = progress_lib.Progress(num_batches or 0, "batches", report=lambda _: None)
  start, seen = time.perf_counter(), 0
  for i, batch in enumerate(batches):
    b = len(batch["labels"])
    errors.check(b % n_dev == 0,
                 f"batch size {b} does not divide over {n_dev} devices; use a multiple of {n_dev}")
    valid_B = np.asarray(batch.get("mask", np.ones(b)), np.float32) > 0
    if sums.order is None:
      example = preprocess(jnp.asarray(batch["inputs"][:1]))
      sums.order = compiled.forward_order(model, variables, example)
      errors.check(bool(sums.order[0]),
                   f"{type(model).__name__} sows no pre-activations; "
                   "call self.sow('preacts', name, z) before each activation")
    g = compiled.to_global(batch, mesh)
    s = jax.device_get(stats_fn(variables, g["inputs"], g["labels"], g["mask"]))
    sums.totals += [s["examples"], s["loss_sum"], s["correct"]]
    for lname, ls in s["layers"].items():
      if lname not in sums.layers:
        sums.layers[lname] = statistics.LayerAccumulator(ls["pre_mean"].shape[0], 0)
      sums.layers[lname].add(ls, valid_B)
    for bname, bs in s["blocks"].items():
      v = np.array([bs["e_shortcut"], bs["e_branch"], bs["e_cross"]], np.float64)
      sums.blocks[bname] = sums.blocks.get(bname, 0.0) + v
    seen += int(valid_B.sum())
    clock.update(i + 1)
    if i == 0:  # The first batch compiles; time the rest.
      if progress:
        progress(f"  batch 1 compiled and ran in {time.perf_counter() - start:.1f}s")
    elif progress and ((i + 1) % progress_every == 0 or i + 1 == num_batches):
      progress(_progress_line(clock, i + 1, seen, b, num_batches))
  errors.check(sums.order is not None and sums.totals[0] > 0,
               "the evaluation set is empty; nothing to probe")
  return sums


def _block_rows(sums: _Sums) -> list[dict]:
  """Per block: the energy of the shortcut and the branch, their share and cosine."""
  examples = sums.totals[0]
  blocks = []
  for idx, bname in enumerate(sums.order[1]):
    e_s, e_b, e_x = (float(v) for v in sums.blocks[bname])
    blocks.append({
        "index": idx,
        "block": bname,
        "has_shortcut": bool(e_s > 0),
        "shortcut_energy": e_s / examples,
        "branch_energy": e_b / examples,
        "shortcut_frac": e_s / (e_s + e_b) if e_s + e_b > 0 else float("nan"),
        "cosine": e_x / math.sqrt(e_s * e_b) if e_s > 0 and e_b > 0 else 0.0,
    })
  return blocks


def _weight_rows(grad_fn: Callable, variables, grad_batches: Sequence[compiled.Batch],
                 weight_names: Sequence[str], mesh: Mesh) -> list[dict]:
  """Per weight layer: the gradient norm's geometric mean and 95% interval over batches."""
  n_dev = sharding.num_shards(mesh)
  norms = []
  for batch in grad_batches:
    b = len(batch["labels"])
    errors.check(b % n_dev == 0,
                 f"gradient batch size {b} does not divide over {n_dev} devices")
    g = compiled.to_global(batch, mesh)
    norms.append(jax.device_get(grad_fn(variables, g["inputs"], g["labels"], g["mask"])))
  kernels = compiled.kernels(jax.device_get(variables["params"]))
  weights = []
  for idx, wname in enumerate(weight_names):
    vals = np.array([float(n[wname]) for n in norms])
    center, lo, hi = stats.geo_mean_ci(vals)
    weights.append({
        "index": idx,
        "layer": wname,
        "grad_norm": center,
        "grad_norm_lo": lo,
        "grad_norm_hi": hi,
        "param_norm": float(np.linalg.norm(np.asarray(kernels[wname], np.float64))),
        "grad_batches": len(vals),
    })
  return weights


def probe(state: Any, model, batches: Iterable[compiled.Batch], *,
          grad_batches: Sequence[compiled.Batch] = (),
          mesh: Mesh | None = None,
          preprocess: Callable[[jax.Array], jax.Array] | None = None,
          activation: str | None = None,
          dormant_threshold: float = 0.1,
          grad_train_mode: bool = True,
          num_batches: int | None = None,
          progress: Callable[[str], None] | None = None,
          progress_every: int = 10) -> statistics.Results:
  """Runs the probes over `batches` of {'inputs', 'labels', 'mask'} (host arrays).

  Args:
    state: a TrainState (params, batch_stats), a variables dict or a params tree.
    model: the flax module; its `activation` field names the activation at
      every sown pre-activation unless `activation` is given.
    batches: global batches; the batch size must divide by the mesh size.
    grad_batches: batches for the per-layer gradient norms (geometric mean and
      its 95% t-interval over the batches); none -> no gradient rows.
    mesh: a mesh with a 'data' axis (default: all devices).
    preprocess: jit-able map from raw inputs to model inputs (default: float32).
    dormant_threshold: ReDo threshold on the dormant score.
    grad_train_mode: gradients with BatchNorm in training mode (as in training).
    num_batches: for the progress line's ETA.
    progress: called with one line every `progress_every` batches (rate and
      ETA from `resjax.progress.Progress`).
  """
  mesh = mesh or sharding.make_mesh()
  errors.check(sharding.DATA_AXIS in mesh.axis_names,
               f"mesh axes {mesh.axis_names} have no 'data' axis; use sharding.make_mesh()")
  name = activation or getattr(model, "activation", None)
  errors.check(name is not None, "model has no `activation` field; pass activation=NAME")
  act = activations.get(name)
  errors.check(0.0 <= dormant_threshold < 1.0,
               f"dormant_threshold={dormant_threshold} must be in [0, 1)")
  preprocess = preprocess or compiled.identity
  start = time.perf_counter()
  variables = jax.device_put(compiled.variables_of(state), sharding.replicated(mesh))
  stats_fn = compiled.jitted(compiled.batch_sums, mesh, model=model, act=act,
                             preprocess=preprocess)
  sums = _accumulate(stats_fn, model, variables, batches, mesh=mesh, preprocess=preprocess,
                     num_batches=num_batches, progress=progress, progress_every=progress_every)
  layer_names, _, weight_names = sums.order
  layers, fractions = [], {}
  for idx, lname in enumerate(layer_names):
    acc = sums.layers[lname]
    acc.positions = int(round(acc.samples / sums.totals[0]))  # samples / valid inputs
    row, fractions[lname] = statistics.layer_row(idx, lname, acc, dormant_threshold)
    layers.append(row)
  weights = []
  if grad_batches:
    grad_fn = compiled.jitted(compiled.grad_norms, mesh, model=model, preprocess=preprocess,
                              train=grad_train_mode)
    weights = _weight_rows(grad_fn, variables, grad_batches, weight_names, mesh)
  examples, loss_sum, correct = sums.totals
  summary = {
      "examples": int(examples),
      "accuracy": float(correct / examples),
      "loss": float(loss_sum / examples),
      "activation": name,
      "dormant_threshold": dormant_threshold,
      "devices": int(sharding.num_shards(mesh)),
      "seconds": time.perf_counter() - start,
      # Which BatchNorm statistics each probe used (see the package docstring).
      "batch_norm": bool(variables.get("batch_stats")),
      "bn_activations": "eval",
      "bn_gradients": ("train" if grad_train_mode else "eval") if weights else None,
  }
  return statistics.Results(layers, _block_rows(sums), weights, summary, fractions)
