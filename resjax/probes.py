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

Notebook use::

  config, state = checkpoints.load("runs/d20")      # any device count
  res = probes.run(state, None, train.load_data(config))  # training split by default
  print(res.table()); res.layer("stem")["dead_frac"]
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from resjax import activations, data, errors, sharding, stats

COLLECTIONS = ("preacts", "shortcut", "branch")
HIST_BINS = 20

Batch = Mapping[str, np.ndarray]


# ----------------------------------------------------------------------------
# Small numerical helpers (public: the tests and notebooks use them).


def participation_ratio(cov_CxC: np.ndarray) -> float:
  """Participation ratio (sum l)^2 / sum l^2 of the covariance eigenvalues l.

  Equals tr(C)^2 / ||C||_F^2, so no eigendecomposition is needed. It is d for
  isotropic features in d dimensions and k for features spanning k equal axes;
  between those it weighs large eigenvalues more than `entropy_rank` does.
  """
  cov_CxC = np.asarray(cov_CxC, np.float64)
  trace = float(np.trace(cov_CxC))
  frob2 = float(np.sum(cov_CxC * cov_CxC))
  return trace * trace / frob2 if frob2 > 0 else 0.0


def entropy_rank(cov_CxC: np.ndarray) -> float:
  """Roy & Vetterli's effective rank exp(-sum p log p), p = l / sum l, of the
  eigenvalues l of a (symmetric, positive semi-definite) covariance.

  d for isotropic features in d dimensions, k for k equal axes, and never
  below the participation ratio (Shannon vs order-2 Renyi entropy of p).
  Eigenvalues below 0 (round-off) count as 0; an all-zero matrix gives 0.
  """
  lam = np.clip(np.linalg.eigvalsh(np.asarray(cov_CxC, np.float64)), 0.0, None)
  total = lam.sum()
  if total <= 0:
    return 0.0
  p = lam[lam > 0] / total
  return float(np.exp(-np.sum(p * np.log(p))))


def dormant_scores(mean_abs_C: np.ndarray) -> np.ndarray:
  """ReDo score per unit: mean |activation| over the layer's average of it."""
  mean_abs_C = np.asarray(mean_abs_C, np.float64)
  layer_mean = mean_abs_C.mean() if mean_abs_C.size else 0.0
  if layer_mean <= 0:
    return np.zeros_like(mean_abs_C)
  return mean_abs_C / layer_mean


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


def _kernels(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'module/path': kernel} for every module holding a 'kernel', in tree order."""
  flat = {}
  for key, value in params.items():
    name = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      flat.update(_kernels(value, name))
    elif key == "kernel":
      flat[prefix or "kernel"] = value
  return flat


def variables_of(state: Any) -> dict[str, Any]:
  """Model variables from a TrainState, a variables dict or a bare params tree."""
  if hasattr(state, "params"):
    variables = {"params": state.params}
    batch_stats = getattr(state, "batch_stats", None)
    if batch_stats:
      variables["batch_stats"] = batch_stats
    return variables
  if isinstance(state, Mapping) and "params" in state:
    return {k: v for k, v in state.items() if k not in COLLECTIONS}
  return {"params": state}


# ----------------------------------------------------------------------------
# Jitted per-batch statistics.


def _moments(x_NxC: jax.Array, w_N: jax.Array):
  """Weighted count, mean and centred second moment (Chan's batch terms)."""
  n = jnp.sum(w_N)
  mean_C = jnp.sum(x_NxC * w_N[:, None], 0) / jnp.maximum(n, 1.0)
  d_NxC = (x_NxC - mean_C) * jnp.sqrt(w_N)[:, None]
  return mean_C, d_NxC.T @ d_NxC


def _batch_stats(variables, inputs, labels, mask, *, model, act, preprocess):
  """Sums over one (sharded) batch; padded rows (mask 0) contribute nothing."""
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
    pre_mean, pre_m2 = _moments(z_BxPxC.reshape(-1, c), w_N)
    post_mean, post_m2 = _moments(h_BxPxC.reshape(-1, c), w_N)
    layers[name] = {
        "count_C": jnp.sum(on_BxPxC * w_BxP[..., None], (0, 1)),
        "abs_C": jnp.sum(jnp.abs(h_BxPxC) * w_BxP[..., None], (0, 1)),
        "samples": jnp.sum(w_N),
        "frac_B": jnp.mean(on_BxPxC, (1, 2)),
        "all_B": jnp.all(on_BxPxC, (1, 2)),
        "pos_all": jnp.sum(jnp.all(on_BxPxC, -1) * w_BxP),
        "pre_mean": pre_mean, "pre_m2": pre_m2,
        "post_mean": post_mean, "post_m2": post_m2,
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


def _grad_norms(variables, inputs, labels, mask, *, model, preprocess, train):
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
          for name, g in _kernels(grads).items()}


# ----------------------------------------------------------------------------
# Host-side accumulation in float64.


class _Moments:
  """Running mean and centred second moment, merged batch by batch (Chan et al.)."""

  def __init__(self, c: int):
    self.n = 0.0
    self.mean = np.zeros(c)
    self.m2 = np.zeros((c, c))

  def add(self, n_b: float, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
    if n_b <= 0:
      return
    n = self.n + n_b
    delta = np.asarray(mean_b, np.float64) - self.mean
    self.m2 += np.asarray(m2_b, np.float64) + np.outer(delta, delta) * (self.n * n_b / n)
    self.mean += delta * (n_b / n)
    self.n = n

  def cov(self) -> np.ndarray:
    return self.m2 / max(self.n - 1.0, 1.0)


class _LayerAcc:
  def __init__(self, c: int, positions: int):
    self.units, self.positions = c, positions
    self.count = np.zeros(c, np.int64)
    self.abs_sum = np.zeros(c)
    self.samples = 0.0
    self.pos_all = 0.0
    self.frac: list[np.ndarray] = []
    self.all: list[np.ndarray] = []
    self.pre, self.post = _Moments(c), _Moments(c)

  def add(self, s: Mapping[str, np.ndarray], valid_B: np.ndarray) -> None:
    self.count += np.rint(s["count_C"]).astype(np.int64)
    self.abs_sum += s["abs_C"]
    self.samples += float(s["samples"])
    self.pos_all += float(s["pos_all"])
    self.frac.append(np.asarray(s["frac_B"], np.float64)[valid_B])
    self.all.append(np.asarray(s["all_B"], bool)[valid_B])
    self.pre.add(float(s["samples"]), s["pre_mean"], s["pre_m2"])
    self.post.add(float(s["samples"]), s["post_mean"], s["post_m2"])


def _stats_row(index: int, name: str, acc: _LayerAcc, threshold: float) -> tuple[dict, np.ndarray]:
  frac_N = np.concatenate(acc.frac) if acc.frac else np.zeros(0)
  all_N = np.concatenate(acc.all) if acc.all else np.zeros(0, bool)
  dead_C = acc.count == 0
  mean_abs_C = acc.abs_sum / max(acc.samples, 1.0)
  scores_C = dormant_scores(mean_abs_C)
  hist, _ = np.histogram(frac_N, bins=HIST_BINS, range=(0.0, 1.0))
  q = (np.quantile(frac_N, [0.025, 0.5, 0.975]) if frac_N.size else np.full(3, np.nan))
  linear_input = float(all_N.mean()) if all_N.size else float("nan")
  linear_position = acc.pos_all / max(acc.samples, 1.0)
  pre_cov, post_cov = acc.pre.cov(), acc.post.cov()
  row = {
      "index": index,
      "layer": name,
      "units": acc.units,
      "positions": acc.positions,
      "dead": int(dead_C.sum()),
      "dead_frac": float(dead_C.mean()),
      "dormant": int((scores_C <= threshold).sum()),
      "dormant_frac": float((scores_C <= threshold).mean()),
      "active_mean": float(frac_N.mean()) if frac_N.size else float("nan"),
      "active_std": float(frac_N.std()) if frac_N.size else float("nan"),
      "active_min": float(frac_N.min()) if frac_N.size else float("nan"),
      "active_p025": float(q[0]),
      "active_median": float(q[1]),
      "active_p975": float(q[2]),
      "active_max": float(frac_N.max()) if frac_N.size else float("nan"),
      "linear_frac": linear_position if acc.positions > 1 else linear_input,
      "linear_frac_input": linear_input,
      "linear_frac_position": linear_position,
      "participation_pre": participation_ratio(pre_cov),
      "participation_post": participation_ratio(post_cov),
      "entropy_rank_pre": entropy_rank(pre_cov),
      "entropy_rank_post": entropy_rank(post_cov),
      "dead_units": np.flatnonzero(dead_C).tolist(),
      "unit_active_rate": (acc.count / max(acc.samples, 1.0)).tolist(),
      "dormant_score": scores_C.tolist(),
      "active_hist": hist.tolist(),
  }
  return row, frac_N


# Per-layer fields that are lists (kept in JSON, left out of CSV rows).
LIST_FIELDS = ("dead_units", "unit_active_rate", "dormant_score", "active_hist")


def table_rows(results: Mapping[str, Any], **head: Any) -> list[dict]:
  """CSV rows from `Results.to_dict()` (or a run of probes.json), `head` first.

  One row per activation layer, block and weight layer ('kind'); the block
  name goes in the 'layer' column; per-unit lists are left out.
  """
  out = []
  for kind, group in (("activation", "layers"), ("block", "blocks"), ("weights", "weights")):
    for row in results[group]:
      flat = {("layer" if k == "block" else k): v for k, v in row.items()
              if k not in LIST_FIELDS}
      out.append({**head, "kind": kind, **flat})
  return out


@dataclasses.dataclass
class Results:
  """What the probes found; `rows()` for CSV, `to_dict()` for JSON."""
  layers: list[dict]       # one per sown pre-activation, forward order
  blocks: list[dict]       # one per residual / plain block
  weights: list[dict]      # one per weight layer (gradient norms)
  summary: dict            # examples, accuracy, loss, activation, threshold
  active_fraction: dict[str, np.ndarray]  # layer -> per-input active fraction [N]

  def layer(self, name: str) -> dict:
    for row in self.layers:
      if row["layer"] == name:
        return row
    raise KeyError(name)

  def rows(self, run: str = "run") -> list[dict]:
    """Flat rows, one per layer: kind is 'activation', 'block' or 'weights'."""
    return table_rows(self.to_dict(), run=run)

  def to_dict(self) -> dict:
    return {"summary": self.summary, "layers": self.layers, "blocks": self.blocks,
            "weights": self.weights}

  def table(self) -> str:
    """A fixed-width per-layer summary for stdout.

    linear: per input (dense) or per (input, position) (conv); PR: participation
    ratio; erank: entropy effective rank; both before > after the activation.
    """
    head = (f"{'layer':<28} {'units':>5} {'dead':>6} {'dorm':>6} {'active':>13} "
            f"{'linear':>7} {'PR pre>post':>13} {'erank pre>post':>14}")
    lines = [head, "-" * len(head)]
    for r in self.layers:
      lines.append(
          f"{r['layer'][-28:]:<28} {r['units']:>5} {r['dead_frac']:>6.3f} "
          f"{r['dormant_frac']:>6.3f} {r['active_mean']:>6.3f}+-{r['active_std']:<5.3f} "
          f"{r['linear_frac']:>7.3f} "
          f"{r['participation_pre']:>6.2f}>{r['participation_post']:<6.2f} "
          f"{r['entropy_rank_pre']:>7.2f}>{r['entropy_rank_post']:<6.2f}")
    for r in self.blocks:
      lines.append(f"{'block ' + r['block']:<28} shortcut energy {r['shortcut_frac']:.3f}")
    s = self.summary
    split = f" of the {s['split']} split" if s.get("split") else ""
    lines.append(f"{s['examples']} examples{split}, accuracy {s['accuracy']:.4f}, "
                 f"loss {s['loss']:.4f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# The probes.


def _forward_order(model, variables, example_x) -> tuple[list[str], list[str], list[str]]:
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
    order["weights"] = list(_kernels(init["params"]))
    return 0

  jax.eval_shape(trace, variables, example_x)
  jax.eval_shape(trace_init, example_x)
  present = set(_kernels(variables["params"]))
  weights = [n for n in order["weights"] if n in present]
  weights += sorted(present - set(weights))
  return order["layers"], order["blocks"], weights


def _to_global(batch: Batch, mesh: Mesh) -> dict:
  """Global sharded arrays from a global host batch (each process gives its rows)."""
  b = len(batch["labels"])
  rows = data.local_rows(b, jax.process_index(), jax.process_count())
  mask = batch.get("mask")
  local = {"inputs": np.asarray(batch["inputs"])[rows],
           "labels": np.asarray(batch["labels"], np.int32)[rows],
           "mask": (np.ones(b, np.float32) if mask is None
                    else np.asarray(mask, np.float32))[rows]}
  return sharding.to_global(local, mesh)


def _identity(x):
  return jnp.asarray(x, jnp.float32)


@functools.lru_cache(maxsize=16)
def _jitted_cached(fn: Callable, mesh: Mesh, options: tuple) -> Callable:
  batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  return jax.jit(functools.partial(fn, **dict(options)),
                 in_shardings=(repl, batch_sh, batch_sh, batch_sh), out_shardings=repl)


def _jitted(fn: Callable, mesh: Mesh, **options) -> Callable:
  """`fn(variables, inputs, labels, mask)` jitted over `mesh`, one per (model,
  preprocessing, ...): probing several nets of one config (the seeds of a grid,
  a second analysis) compiles once."""
  key = tuple(sorted(options.items()))
  try:
    hash(key)
  except TypeError:  # an unhashable preprocess: compile for this call only
    return _jitted_cached.__wrapped__(fn, mesh, key)
  return _jitted_cached(fn, mesh, key)


def probe(state: Any, model, batches: Iterable[Batch], *,
          grad_batches: Sequence[Batch] = (),
          mesh: Mesh | None = None,
          preprocess: Callable[[jax.Array], jax.Array] | None = None,
          activation: str | None = None,
          dormant_threshold: float = 0.1,
          grad_train_mode: bool = True,
          num_batches: int | None = None,
          progress: Callable[[str], None] | None = None,
          progress_every: int = 10) -> Results:
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
    progress: called with one line every `progress_every` batches.
  """
  mesh = mesh or sharding.make_mesh()
  errors.check(sharding.DATA_AXIS in mesh.axis_names,
               f"mesh axes {mesh.axis_names} have no 'data' axis; use sharding.make_mesh()")
  name = activation or getattr(model, "activation", None)
  errors.check(name is not None, "model has no `activation` field; pass activation=NAME")
  act = activations.get(name)
  errors.check(0.0 <= dormant_threshold < 1.0,
               f"dormant_threshold={dormant_threshold} must be in [0, 1)")
  preprocess = preprocess or _identity
  variables = variables_of(state)
  batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  variables = jax.device_put(variables, repl)
  n_dev = sharding.num_shards(mesh)

  stats_fn = _jitted(_batch_stats, mesh, model=model, act=act, preprocess=preprocess)

  accs: dict[str, _LayerAcc] = {}
  block_sums: dict[str, np.ndarray] = {}
  order = None
  totals = np.zeros(3)  # examples, loss sum, correct
  start = time.perf_counter()
  seen = 0
  for i, batch in enumerate(batches):
    b = len(batch["labels"])
    errors.check(b % n_dev == 0,
                 f"batch size {b} does not divide over {n_dev} devices; use a multiple of {n_dev}")
    mask = np.asarray(batch.get("mask", np.ones(b)), np.float32)
    valid_B = mask > 0
    if order is None:
      example = preprocess(jnp.asarray(batch["inputs"][:1]))
      order = _forward_order(model, variables, example)
      errors.check(bool(order[0]),
                   f"{type(model).__name__} sows no pre-activations; "
                   "call self.sow('preacts', name, z) before each activation")
    g = _to_global(batch, mesh)
    s = jax.device_get(stats_fn(variables, g["inputs"], g["labels"], g["mask"]))
    totals += [s["examples"], s["loss_sum"], s["correct"]]
    for lname, ls in s["layers"].items():
      if lname not in accs:
        z_shape = ls["pre_mean"].shape
        accs[lname] = _LayerAcc(z_shape[0], 0)
      accs[lname].add(ls, valid_B)
    for bname, bs in s["blocks"].items():
      v = np.array([bs["e_shortcut"], bs["e_branch"], bs["e_cross"]], np.float64)
      block_sums[bname] = block_sums.get(bname, 0.0) + v
    seen += int(valid_B.sum())
    if i == 0:  # The first batch compiles; time the rest.
      tic, first = time.perf_counter(), seen
      if progress:
        progress(f"  batch 1 compiled and ran in {tic - start:.1f}s")
    elif progress and ((i + 1) % progress_every == 0 or i + 1 == num_batches):
      dt = time.perf_counter() - tic
      rate = (seen - first) / max(dt, 1e-9)
      eta = f", ETA {dt / i * (num_batches - i - 1):.0f}s" if num_batches else ""
      total = f"/{num_batches}" if num_batches else ""
      progress(f"  batch {i + 1}{total}: {seen} examples, {rate:.0f} examples/s{eta}")
  errors.check(order is not None and totals[0] > 0,
               "the evaluation set is empty; nothing to probe")
  layer_names, block_names, weight_names = order

  # Positions per unit: samples / valid inputs.
  layers, fractions = [], {}
  for idx, lname in enumerate(layer_names):
    acc = accs[lname]
    acc.positions = int(round(acc.samples / totals[0]))
    row, frac_N = _stats_row(idx, lname, acc, dormant_threshold)
    layers.append(row)
    fractions[lname] = frac_N

  blocks = []
  for idx, bname in enumerate(block_names):
    e_s, e_b, e_x = (float(v) for v in block_sums[bname])
    blocks.append({
        "index": idx,
        "block": bname,
        "has_shortcut": bool(e_s > 0),
        "shortcut_energy": e_s / totals[0],
        "branch_energy": e_b / totals[0],
        "shortcut_frac": e_s / (e_s + e_b) if e_s + e_b > 0 else float("nan"),
        "cosine": e_x / math.sqrt(e_s * e_b) if e_s > 0 and e_b > 0 else 0.0,
    })

  weights = []
  if grad_batches:
    grad_fn = _jitted(_grad_norms, mesh, model=model, preprocess=preprocess,
                      train=grad_train_mode)
    norms = []
    for batch in grad_batches:
      b = len(batch["labels"])
      errors.check(b % n_dev == 0,
                   f"gradient batch size {b} does not divide over {n_dev} devices")
      g = _to_global(batch, mesh)
      norms.append(jax.device_get(grad_fn(variables, g["inputs"], g["labels"], g["mask"])))
    kernels = _kernels(jax.device_get(variables["params"]))
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

  summary = {
      "examples": int(totals[0]),
      "accuracy": float(totals[2] / totals[0]),
      "loss": float(totals[1] / totals[0]),
      "activation": name,
      "dormant_threshold": dormant_threshold,
      "devices": int(n_dev),
      "seconds": time.perf_counter() - start,
      # Which BatchNorm statistics each probe used (see the module docstring).
      "batch_norm": bool(variables.get("batch_stats")),
      "bn_activations": "eval",
      "bn_gradients": ("train" if grad_train_mode else "eval") if weights else None,
  }
  return Results(layers, blocks, weights, summary, fractions)


SPLITS = ("train", "test")


def _integer(name: str, value: Any, low: int, none_ok: bool = False) -> None:
  if value is None and none_ok:
    return
  what = f"an integer >= {low}" + (" or None" if none_ok else "")
  errors.check(isinstance(value, (int, np.integer)) and not isinstance(value, bool),
               f"{name}={value!r} is a {type(value).__name__}; pass {what}")
  errors.check(value >= low, f"{name}={value!r} is not allowed; pass {what}")


def check_args(*, split: str = "train", batch_size: int = 256, dormant_threshold: float = 0.1,
               grad_batches: int = 8, grad_batch_size: int = 64,
               max_examples: int | None = None, activation: str | None = None) -> None:
  """Raises ConfigError (one line) for a bad argument of `run`.

  `run` calls it, and so does `report.analyze` before restoring anything, so
  the API and `launch.analyze` (whose flags have these names) say the same.
  """
  errors.check(isinstance(split, str), f"split={split!r} is a {type(split).__name__}; "
               f"pass one of: {', '.join(SPLITS)}")
  errors.choice("split", split, SPLITS)
  _integer("batch_size", batch_size, 1)
  _integer("grad_batches", grad_batches, 0)
  _integer("grad_batch_size", grad_batch_size, 1)
  _integer("max_examples", max_examples, 1, none_ok=True)
  errors.check(isinstance(dormant_threshold, (int, float, np.floating))
               and not isinstance(dormant_threshold, bool),
               f"dormant_threshold={dormant_threshold!r} is a "
               f"{type(dormant_threshold).__name__}; pass a number in [0, 1)")
  errors.check(0.0 <= dormant_threshold < 1.0,
               f"dormant_threshold={dormant_threshold!r} is not allowed; pass a number in [0, 1)")
  if activation is not None:
    errors.check(isinstance(activation, str), f"activation={activation!r} is a "
                 f"{type(activation).__name__}; pass an activation name or None")
    activations.get(activation)


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
  return data.preprocess(x, mean, std)
