"""The pure steps (`train_step`, `eval_step`), jitted with explicit shardings, and evaluation.

One jit-compiled `train_step` runs over a 1-D 'data' mesh (`mesh.data_mesh`):
the global batch is split over its devices, parameters and optimizer state are
replicated, the state buffers are donated. BatchNorm reduces over the whole
(global) batch, so the numbers do not depend on how many devices share it.
Batches are a pure function of the step (`data.train_indices`), so a run
restored from a checkpoint continues exactly. A grid's vmapped / sharded steps
are resjax/grid/steps.py, built from these.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from resjax import data
from resjax import program_cache
from resjax import sharding
from resjax.train.state import TrainState, state_sharding


# The steps compile with LLVM at -O1 on the CPU instead of -O2: the same
# training at the same speed, for a shorter compile. Measured on a 2-core AMD
# EPYC: ResNet-20's train step (oneDNN convolutions, batch 128) compiled in
# 5.6 s against 7.6 and ran 599 against 602 ms per step, its parameters equal
# bit for bit after 30 steps; the 32-MLP grid's step compiled in 1.2-1.4 s
# against 1.8, and after 300 steps its losses and every net's evaluation were
# the same to the last digit (the gradient, parameter and update norms it
# logs moved in their last float32 bits).
STEP_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def compiler_options(mesh: jax.sharding.Mesh) -> Optional[dict[str, Any]]:
  """XLA options of the steps compiled for `mesh` (`STEP_COMPILER_OPTIONS` on the CPU)."""
  return program_cache.cpu_options(STEP_COMPILER_OPTIONS, mesh.devices.flat[0].platform)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def global_norms(*trees: Any) -> jax.Array:
  """The L2 norm of each of `trees` (pytrees of one structure), over all its leaves.

  The leaves are copied into one vector and reduced at once. `optax.tree.norm`
  reduces every leaf on its own, and XLA compiles each reduction: in a 1-D
  ResNet-14's step its three norms were 149 of 523 fusions and a quarter to a
  third of the compile. (Without the barrier XLA splits the reduction of the
  concatenation back into one per leaf.) The values agree with
  `optax.tree.norm` to float32 rounding (tests/test_train.py).
  """
  leaves = [jnp.ravel(x).astype(jnp.float32) for t in trees for x in jax.tree.leaves(t)]
  if not leaves:
    return jnp.zeros((len(trees),), jnp.float32)
  flat = jax.lax.optimization_barrier(jnp.concatenate(leaves))
  return jnp.sqrt(jnp.sum(jnp.square(flat.reshape(len(trees), -1)), axis=1))


def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict]:
  """One optimizer step on a global batch {'inputs', 'labels'}; returns (state, metrics)."""
  rng = jax.random.fold_in(state.rng, state.step)
  x = state.preprocess(batch["inputs"], rng, train=True)
  labels = batch["labels"]

  def loss_fn(params):
    variables = dict(state.variables, params=params)
    logits, new_vars = state.apply_fn(variables, x, train=True, mutable=["batch_stats"])
    return _cross_entropy(logits, labels).mean(), (logits, new_vars.get("batch_stats", {}))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  tx, schedule = state.optimizer(state.hparams)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  if state.mask is not None:  # A padded grid net: its extra units stay exactly zero.
    updates = jax.tree.map(jnp.multiply, updates, state.mask)
  params = optax.apply_updates(state.params, updates)
  out = {
      "loss": loss,
      "accuracy": jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32)),
      "lr": schedule(state.step),
  }
  out["grad_norm"], out["param_norm"], out["update_norm"] = global_norms(grads, params, updates)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  return new_state, out


def eval_step(state: TrainState, batch: Mapping[str, jax.Array]) -> dict:
  """Sums over a batch {'inputs', 'labels'[, 'mask']}: loss_sum, correct, count."""
  x = state.preprocess(batch["inputs"], train=False)
  logits = state.apply_fn(state.variables, x, train=False)
  labels = batch["labels"]
  mask = batch.get("mask")
  mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return {"loss_sum": jnp.sum(_cross_entropy(logits, labels) * mask),
          "correct": jnp.sum(correct * mask), "count": jnp.sum(mask)}


def jit_steps(state: TrainState, mesh: jax.sharding.Mesh) -> tuple[Callable, Callable]:
  """(train_step, eval_step) jitted for a 'data' mesh: batch sharded, state
  replicated, the state donated to train_step. (A grid's: `grid.jit_steps`.)"""
  batch_s, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  state_s = state_sharding(state, mesh)
  options = compiler_options(mesh)
  p_train = jax.jit(train_step, in_shardings=(state_s, batch_s),
                    out_shardings=(state_s, repl), donate_argnums=0, compiler_options=options)
  p_eval = jax.jit(eval_step, in_shardings=(state_s, batch_s), out_shardings=repl,
                   compiler_options=options)
  return p_train, p_eval


def host_batch(split: data.Split, step: int, *, seed: int, global_batch: int) -> dict:
  """This process's rows of the training batch for `step` (NumPy)."""
  return data.train_batch(split, step, seed=seed, global_batch=global_batch,
                          process_index=jax.process_index(),
                          process_count=jax.process_count())


def _same(fetched: Any) -> Any:
  return fetched


def evaluate(p_eval: Callable, state: Any, split: data.Split, mesh: jax.sharding.Mesh,
             global_batch: int, merge: Callable[[Any], dict] = _same) -> dict[str, Any]:
  """Loss, accuracy and error on every example of `split` (padded, masked).

  `merge` turns what `p_eval` returns, once fetched, into one dict of sums (a
  grid of several calls: `grid.merge_calls`).
  """
  rows = data.local_rows(global_batch, jax.process_index(), jax.process_count())
  sums = []
  for batch in data.eval_batches(split, global_batch):
    local = {k: np.asarray(v)[rows] for k, v in batch.items()}
    sums.append(p_eval(state, sharding.to_global(local, mesh)))
  sums = [merge(s) for s in jax.device_get(sums)]
  total = lambda key: np.sum([np.asarray(s[key], np.float64) for s in sums], axis=0)  # noqa: E731
  count = total("count")
  loss, accuracy = total("loss_sum") / count, total("correct") / count
  out = {"loss": loss, "accuracy": accuracy, "error": 1.0 - accuracy}
  # One net: floats; a grid: an array per metric, one entry per net.
  return {k: float(v) if np.ndim(v) == 0 else np.asarray(v) for k, v in out.items()}
