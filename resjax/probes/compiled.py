"""The jitted per-batch probe statistics and gradient norms, and the trees they read.

Every function that runs on the devices lives here: `batch_sums` (sums over
one sharded batch), `grad_norms` (per weight layer), and `jitted`, which
compiles one of them once per (model, preprocessing, mesh).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from resjax import data, sharding

COLLECTIONS = ("preacts", "shortcut", "branch")

Batch = Mapping[str, np.ndarray]

def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested sow collections -> {'a/b/c': value}, in insertion order.

  Sown values are 1-tuples; they are unwrapped (the last value is kept).
  """
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      flat.update(flatten(value, name))
    elif isinstance(value, (tuple, list)):
      flat[name] = value[-1]
    else:
      flat[name] = value
  return flat


def kernels(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'module/path': kernel} for every module holding a 'kernel', in tree order."""
  flat = {}
  for key, value in params.items():
    name = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      flat.update(kernels(value, name))
    elif key == "kernel":
      flat[prefix or "kernel"] = value
  return flat


def variables_of(state: Any) -> dict[str, Any]:
  """Model variables from a TrainState, a variables dict or a bare params tree."""
  if hasattr(state, "params"):
    variables = {"params": state.params}
    running = getattr(state, "batch_stats", None)
    if running:
      variables["batch_stats"] = running
    return variables
  if isinstance(state, Mapping) and "params" in state:
    return {k: v for k, v in state.items() if k not in COLLECTIONS}
  return {"params": state}


def moments(x_NxC: jax.Array, w_N: jax.Array):
  """Weighted count, mean and centred second moment (Chan's batch terms)."""
  n = jnp.sum(w_N)
  mean_C = jnp.sum(x_NxC * w_N[:, None], 0) / jnp.maximum(n, 1.0)
  d_NxC = (x_NxC - mean_C) * jnp.sqrt(w_N)[:, None]
  return mean_C, d_NxC.T @ d_NxC


def direction_sums(x_NxC: jax.Array, w_N: jax.Array, units_C: jax.Array | None = None):
  """The sum of the unit vectors x_i / |x_i| of the weighted rows with |x_i| > 0, and
  their count (the terms of `statistics.mean_cosine`); `units_C` (0/1) keeps a net's
  own units of a padded layer."""
  if units_C is not None:
    x_NxC = x_NxC * units_C.astype(x_NxC.dtype)
  norm_N = jnp.sqrt(jnp.sum(x_NxC * x_NxC, -1))
  keep_N = w_N * (norm_N > 0)
  u_NxC = x_NxC / jnp.where(norm_N > 0, norm_N, 1.0)[:, None]
  return jnp.sum(u_NxC * keep_N[:, None], 0), jnp.sum(keep_N)


def batch_sums(variables, inputs, labels, mask, *, model, act, preprocess, units=None):
  """Sums over one (sharded) batch; padded rows (mask 0) contribute nothing.

  `units` ({layer: [C] 0/1}, optional) marks the units a layer's per-input
  numbers (active fraction, all units on duty) count, e.g. a grid net's own
  units in its padded model; per-unit sums and moments cover every unit.
  """
  x = preprocess(inputs)
  logits, cols = model.apply(variables, x, train=False, mutable=list(COLLECTIONS))
  m_B = mask.astype(jnp.float32)
  out = {"examples": jnp.sum(m_B)}
  logits = logits.astype(jnp.float32)
  ce_B = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  out["loss_sum"] = jnp.sum(ce_B * m_B)
  out["correct"] = jnp.sum((jnp.argmax(logits, -1) == labels) * m_B)
  layers = {}
  for name, z in flatten(cols.get("preacts", {})).items():
    z = z.astype(jnp.float32)
    b, c = z.shape[0], z.shape[-1]
    z_BxPxC = z.reshape(b, -1, c)
    on_BxPxC = act.active(z_BxPxC)
    h_BxPxC = act.fn(z_BxPxC)
    w_BxP = jnp.broadcast_to(m_B[:, None], z_BxPxC.shape[:2])
    w_N = w_BxP.reshape(-1)
    pre_mean, pre_m2 = moments(z_BxPxC.reshape(-1, c), w_N)
    post_mean, post_m2 = moments(h_BxPxC.reshape(-1, c), w_N)
    unit_sum, nonzero = direction_sums(h_BxPxC.reshape(-1, c), w_N,
                                       None if units is None else units.get(name))
    if units is None or name not in units:
      frac_B, all_BxP = jnp.mean(on_BxPxC, (1, 2)), jnp.all(on_BxPxC, -1)
    else:
      u_C = units[name].astype(jnp.float32)
      frac_B = (jnp.sum(on_BxPxC * u_C, (1, 2))
                / jnp.maximum(z_BxPxC.shape[1] * jnp.sum(u_C), 1.0))
      all_BxP = jnp.all(on_BxPxC | (u_C == 0), -1)
    layers[name] = {
        "count_C": jnp.sum(on_BxPxC * w_BxP[..., None], (0, 1)),
        "abs_C": jnp.sum(jnp.abs(h_BxPxC) * w_BxP[..., None], (0, 1)),
        "samples": jnp.sum(w_N),
        "frac_B": frac_B,
        "all_B": jnp.all(all_BxP, 1),
        "pos_all": jnp.sum(all_BxP * w_BxP),
        "pre_mean": pre_mean, "pre_m2": pre_m2,
        "post_mean": post_mean, "post_m2": post_m2,
        "unit_sum": unit_sum, "nonzero": nonzero,
    }
  out["layers"] = layers
  shortcut = flatten(cols.get("shortcut", {}))
  blocks = {}
  for name, br in flatten(cols.get("branch", {})).items():
    br_B = br.astype(jnp.float32).reshape(br.shape[0], -1)
    sc = shortcut.get(name)
    sc_B = (jnp.zeros_like(br_B) if sc is None
            else sc.astype(jnp.float32).reshape(sc.shape[0], -1))
    blocks[name] = {
        "e_shortcut": jnp.sum(jnp.sum(sc_B * sc_B, 1) * m_B),
        "e_branch": jnp.sum(jnp.sum(br_B * br_B, 1) * m_B),
        "e_cross": jnp.sum(jnp.sum(sc_B * br_B, 1) * m_B),
    }
  out["blocks"] = blocks
  return out


def grad_norms(variables, inputs, labels, mask, *, model, preprocess, train):
  """Norm of d(mean masked loss)/d(kernel) for every weight layer."""
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}
  x = preprocess(inputs)
  m_B = mask.astype(jnp.float32)

  def loss_fn(p):
    if train:
      logits, _ = model.apply({"params": p, **rest}, x, train=True, mutable=["batch_stats"])
    else:
      logits = model.apply({"params": p, **rest}, x, train=False)
    ce_B = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return jnp.sum(ce_B * m_B) / jnp.maximum(jnp.sum(m_B), 1.0)

  grads = jax.grad(loss_fn)(params)
  return {name: jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
          for name, g in kernels(grads).items()}


def forward_order(model, variables, example_x) -> tuple[list[str], list[str], list[str]]:
  """Layer, block and weight-layer names in forward order.

  jit and eval_shape return dicts with sorted keys, so the order is recorded
  while tracing, from the dicts flax builds in call order.
  """
  order = {}

  def trace(v, x):
    _, cols = model.apply(v, x, train=False, mutable=list(COLLECTIONS))
    order["layers"] = list(flatten(cols.get("preacts", {})))
    order["blocks"] = list(flatten(cols.get("branch", {})))
    return 0

  def trace_init(x):
    init = model.init(jax.random.key(0), x, train=False)
    order["weights"] = list(kernels(init["params"]))
    return 0

  jax.eval_shape(trace, variables, example_x)
  jax.eval_shape(trace_init, example_x)
  present = set(kernels(variables["params"]))
  weights = [n for n in order["weights"] if n in present]
  weights += sorted(present - set(weights))
  return order["layers"], order["blocks"], weights


def to_global(batch: Batch, mesh: Mesh) -> dict:
  """Global sharded arrays from a global host batch (each process gives its rows)."""
  b = len(batch["labels"])
  rows = data.local_rows(b, jax.process_index(), jax.process_count())
  mask = batch.get("mask")
  local = {"inputs": np.asarray(batch["inputs"])[rows],
           "labels": np.asarray(batch["labels"], np.int32)[rows],
           "mask": (np.ones(b, np.float32) if mask is None
                    else np.asarray(mask, np.float32))[rows]}
  return sharding.to_global(local, mesh)


def identity(x):
  """Raw inputs as float32: the default preprocessing."""
  return jnp.asarray(x, jnp.float32)


@functools.lru_cache(maxsize=16)
def _jitted_cached(fn: Callable, mesh: Mesh, options: tuple) -> Callable:
  batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  return jax.jit(functools.partial(fn, **dict(options)),
                 in_shardings=(repl, batch_sh, batch_sh, batch_sh), out_shardings=repl)


def jitted(fn: Callable, mesh: Mesh, **options) -> Callable:
  """`fn(variables, inputs, labels, mask)` jitted over `mesh`, one per (model,
  preprocessing, ...): probing several nets of one config (the seeds of a grid,
  a second analysis) compiles once."""
  key = tuple(sorted(options.items()))
  try:
    hash(key)
  except TypeError:  # an unhashable preprocess: compile for this call only
    return _jitted_cached.__wrapped__(fn, mesh, key)
  return _jitted_cached(fn, mesh, key)
