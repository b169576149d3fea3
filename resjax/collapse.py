"""ReLU collapse (claims C1-C3, C7): embed a manifold, activate, try to get it back.

For one grid cell (manifold dim d, activation, embedding dim n, seed): draw
T_NxD Gaussian, compute y = act(T x) for every point x, and measure four
relative errors sum ||x - x_rec||^2 / sum ||x||^2 of decoders that know T
and read y:

  pinv         x_rec = T^+ y, as in MobileNetV2 Fig. 1;
  refit        x_rec = the best linear map (least squares over the cell's
               points) applied to T^+ y: how much of the shape survives;
  span         least squares on the units on duty (where the activation has a
               usable inverse, `activations`): act^-1(y_i) = T_i x there, so
               with k < d units on duty this is x's projection onto the span
               of their rows, and x itself once d are on duty (it solves the
               first d). It ignores what the silent units say, so for ReLU
               (whose active set y shows) it is an upper bound on the
               information lost, not the information lost;
  constrained  the same least squares, also enforcing the silent units'
               constraints: T_i x' <= lo for units below the region (ReLU:
               T_i x' <= 0), T_i x' >= hi above it (ReLU6: >= 6). Among the x'
               that fit y it takes the one of least norm, as the span decoder
               does, so it is never worse than the span decoder (a QP per
               point, `_min_norm_qp`).

plus the fraction of points with fewer than d units on duty (collapsed), with
none (dead), the mean fraction on duty, and the fraction with all units on
duty (the layer is linear there, Lemma 1). The theory beside them: a unit's
pre-activation T_i x ~ N(0, |x|^2), so it is on duty with probability
p(x) = P(lo < N(0, |x|^2) < hi) for the activation's region (lo, hi), and the
point collapses with probability P(Binomial(n, p(x)) < d); for ReLU p = 1/2.

`sweep` computes the whole grid in one compiled call. T is drawn once per
(d, seed) at [n_max, d] (zero-padded to d_max columns; each d has its own
key, so the T's of different d are independent), and T_n is its first n rows,
exactly the unpadded draw for n. Everything that depends on n is a sum over
the first n units, so prefix sums over the unit axis give every n at once.
Draws are vmapped in chunks under `lax.map` (memory stays bounded) and the
activations are unrolled inside the same program, sharing T x, the
pseudo-inverses and the duty statistics.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize, special

from resjax import activations, errors, files, locking, manifolds, stats

Array = jax.Array

ERRORS = ("pinv", "refit", "span", "constrained")
METRICS = ("pinv_error", "refit_error", "span_error", "constrained_error", "collapsed_frac",
           "dead_frac", "active_frac", "linear_frac")
THEORY = ("collapsed_frac_theory", "dead_frac_theory", "linear_frac_theory",
          "span_error_theory")

# Singular values of T below this fraction of the largest count as zero, and
# eigenvalues of the refit's Gram matrix below GRAM_RTOL of the largest. Both
# are explicit, so a pseudo-inverse never depends on the padded size.
PINV_RTOL = 1e-5
GRAM_RTOL = 1e-6
# Gram-Schmidt drops a row that keeps less than this fraction of its norm.
_GS_RTOL = 1e-6
# The constrained decoder's QP: at most QP_STEPS active-set steps per unit of
# d_max (each adds or drops one constraint; tests/test_collapse.py checks the
# result against scipy.optimize.nnls), a constraint counts as violated beyond
# QP_TOL of its scale, and up to QP_BATCH * d_max QPs per point and activation
# are solved at a time.
QP_STEPS = 4
QP_TOL = 1e-5
QP_BATCH = 1
_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class Grid:
  """A validated sweep grid (what `sweep` needs from a config)."""
  activations: tuple[str, ...]
  dims: tuple[int, ...]  # embedding dimensions n
  seeds: int
  seed: int = 0
  manifold: str = "spiral"
  ds: tuple[int, ...] = (2,)  # manifold (input) dimensions d
  points: int = 1000
  turns: float = 3.0
  chunk: int = 8  # draws of T (d, seed) per vmapped chunk; 0 = all at once
  scale: float = 1.0  # multiplier of the manifold's points

  @property
  def cells(self) -> int:
    """Grid cells (d, activation, n, seed)."""
    return len(self.ds) * len(self.activations) * len(self.dims) * self.seeds

  @property
  def draws(self) -> int:
    """Draws of T, one per (d, seed): each serves every activation and n."""
    return len(self.ds) * self.seeds


def _names(value: Any, field: str) -> tuple[str, ...]:
  """A tuple of names from a tuple or a comma-separated string."""
  if isinstance(value, str):
    value = (value,)
  out = []
  for item in value:
    errors.check(isinstance(item, str), f"{field} contains {item!r}; give names like relu,tanh")
    out.extend(part.strip() for part in item.split(",") if part.strip())
  return tuple(out)


def _ints(value: Any, field: str, what: str) -> tuple[int, ...]:
  """A sorted tuple of distinct integers >= 1 from ints or a comma-separated string."""
  if isinstance(value, (int, str)):
    value = (value,)
  out = []
  for item in value:
    parts = item.split(",") if isinstance(item, str) else [item]
    for part in parts:
      try:
        number = int(part)
        ok = not isinstance(part, (bool, float)) and number >= 1
      except (TypeError, ValueError):
        ok = False
      errors.check(ok, f"{field} contains {part!r}; each {what} must be an integer >= 1")
      out.append(number)
  errors.check(bool(out), f"{field} is empty; give at least one {what} >= 1")
  return tuple(sorted(set(out)))


def grid_from_config(config: Any) -> Grid:
  """Validates a collapse config (ConfigDict, dict or Grid) into a Grid; ConfigError on bad input."""
  if isinstance(config, Grid):
    config = config_of(config)
  names = _names(config["activations"], "activations")
  errors.check(bool(names), "activations is empty; choose from: " + ", ".join(activations.names()))
  for name in names:
    errors.choice("activations", name, activations.names())
  seeds, seed, chunk = config["seeds"], config["seed"], config["chunk"]
  errors.check(isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1,
               f"seeds={seeds!r} must be an integer >= 1")
  errors.check(isinstance(seed, int) and seed >= 0, f"seed={seed!r} must be an integer >= 0")
  errors.check(isinstance(chunk, int) and chunk >= 0,
               f"chunk={chunk!r} must be an integer >= 0 (0 = no chunking)")
  m = config["manifold"]
  ds = _ints(m["dims"], "manifold.dims", "manifold dimension d")
  manifolds.check(m["name"], ds, m["points"])
  errors.check(float(m["turns"]) > 0, f"manifold.turns={m['turns']!r} must be > 0")
  scale = m.get("scale", 1.0)
  errors.check(isinstance(scale, (int, float)) and not isinstance(scale, bool)
               and 0 < scale < math.inf, f"manifold.scale={scale!r} must be a number > 0")
  return Grid(activations=tuple(dict.fromkeys(names)),
              dims=_ints(config["dims"], "dims", "embedding dimension n"),
              seeds=seeds, seed=seed, manifold=m["name"], ds=ds, points=m["points"],
              turns=float(m["turns"]), chunk=chunk, scale=float(scale))


def config_of(grid: Grid) -> dict[str, Any]:
  """The config dict that `grid_from_config` turns into `grid`."""
  return {"activations": grid.activations, "dims": grid.dims, "seeds": grid.seeds,
          "seed": grid.seed, "chunk": grid.chunk,
          "manifold": {"name": grid.manifold, "dims": grid.ds, "points": grid.points,
                       "turns": grid.turns, "scale": grid.scale}}


# ---------------------------------------------------------------- one cell


def embedding_key(seed: int, s: Any, d: Any) -> Array:
  """The key of T for seed index s and manifold dim d: one stream per (s, d)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), s), d)


def draw_embedding(key: Array, n: int, d: int) -> Array:
  """T_NxD with i.i.d. N(0, 1) entries; column j comes from `fold_in(key, j)`.

  Drawing each column from its own key makes a padded draw equal the unpadded
  one: column j of any n is the first n entries of the same stream.
  """
  cols = [jax.random.normal(jax.random.fold_in(key, j), (n,)) for j in range(d)]
  return jnp.stack(cols, -1)


def _draw_padded(key: Array, n: Array, d: Array, n_max: int, d_max: int) -> Array:
  """`draw_embedding(key, n, d)` zero-padded to [n_max, d_max] (n, d traced)."""
  t_DxN = jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(key, j), (n_max,)))(
      jnp.arange(d_max))
  keep_NxD = (jnp.arange(n_max)[:, None] < n) & (jnp.arange(d_max)[None, :] < d)
  return jnp.where(keep_NxD, t_DxN.T, 0.0)


def _mm(a: Array, b: Array) -> Array:
  return jnp.matmul(a, b, precision=_HIGHEST)


def _small(a_IxK: Array, b_KxE: Array) -> Array:
  """Batched a @ b for a small inner size K, as one fused reduction (no tiny dots)."""
  return jnp.sum(a_IxK[..., :, :, None] * b_KxE[..., None, :, :], axis=-2)


def _dot(a: Array, b: Array) -> Array:
  return jnp.sum(a * b, -1)


def _pinv(t_NxD: Array) -> Array:
  """T^+ [D, N] from the SVD of T, singular values < PINV_RTOL * largest dropped.

  Zero-padded rows or columns add exact zero singular values, which are
  dropped, so this is the zero-padded pseudo-inverse of the unpadded T. The
  SVD (not the normal equations) keeps float32 accurate for ill-conditioned T.
  """
  u_NxD, s_D, vt_DxD = jnp.linalg.svd(t_NxD, full_matrices=False)
  keep_D = s_D > PINV_RTOL * s_D[..., :1]
  inv_D = jnp.where(keep_D, 1.0 / jnp.where(keep_D, s_D, 1.0), 0.0)
  return _small(jnp.swapaxes(vt_DxD, -1, -2) * inv_D[..., None, :], jnp.swapaxes(u_NxD, -1, -2))


def _psd_pinv(g_DxD: Array) -> Array:
  """Pseudo-inverse of a symmetric PSD Gram matrix, eigenvalues < GRAM_RTOL * max dropped."""
  w_D, v_DxD = jnp.linalg.eigh(g_DxD)
  keep_D = w_D > GRAM_RTOL * jnp.max(w_D, axis=-1, keepdims=True)
  inv_D = jnp.where(keep_D, 1.0 / jnp.where(keep_D, w_D, 1.0), 0.0)
  return _small(v_DxD * inv_D[..., None, :], jnp.swapaxes(v_DxD, -1, -2))


def _first_on(t_NxD: Array, on_NxP: Array, zhat_NxP: Array, d: Array) -> tuple[Array, Array]:
  """Rows a_PxJxD and decoded pre-activations zf_PxJ of each point's first d units on duty.

  J = d_max; slots past d or past the point's count stay zero. With fewer than
  d on duty these are all of them, which is when the decoders lose anything.
  """
  rank_NxP = jnp.cumsum(on_NxP.astype(jnp.int32), axis=0)
  slot_J = jnp.arange(t_NxD.shape[1])
  pick_JxNxP = (on_NxP[None] & (rank_NxP[None] == slot_J[:, None, None] + 1)
                & (slot_J < d)[:, None, None]).astype(t_NxD.dtype)
  return (jnp.einsum("jnp,nd->pjd", pick_JxNxP, t_NxD, precision=_HIGHEST),
          jnp.einsum("jnp,np->pj", pick_JxNxP, zhat_NxP, precision=_HIGHEST))


def _span_solutions(a_PxJxD: Array, zf_PxJ: Array) -> Array:
  """x_PxJ1xD: the least-norm x with a_i . x = zf_i for i < j, for j = 0..J.

  Incremental Gram-Schmidt: the step along the new orthonormal direction q_j
  keeps the earlier equations; a zero or dependent row changes nothing.
  """
  x_PxD = jnp.zeros_like(a_PxJxD[:, 0])
  basis, out = [], [x_PxD]
  for j in range(a_PxJxD.shape[1]):
    a_PxD = a_PxJxD[:, j]
    v_PxD = a_PxD
    for q_PxD in basis:
      v_PxD = v_PxD - _dot(q_PxD, v_PxD)[:, None] * q_PxD
    norm_P = jnp.linalg.norm(v_PxD, axis=-1)
    ok_P = norm_P > _GS_RTOL * jnp.linalg.norm(a_PxD, axis=-1)
    safe_P = jnp.where(ok_P, norm_P, 1.0)
    q_PxD = jnp.where(ok_P[:, None], v_PxD / safe_P[:, None], 0.0)
    step_P = jnp.where(ok_P, (zf_PxJ[:, j] - _dot(a_PxD, x_PxD)) / safe_P, 0.0)
    x_PxD = x_PxD + step_P[:, None] * q_PxD
    basis.append(q_PxD)
    out.append(x_PxD)
  return jnp.stack(out, 1)


def _slot_basis(nrm_MxSxD: Array) -> tuple[list[Array], list[list[Array]]]:
  """Modified Gram-Schmidt of the S slot normals: orthonormal u_j and n_j = sum_l L[j][l] u_l."""
  us, coef = [], []
  for j in range(nrm_MxSxD.shape[1]):
    v = nrm_MxSxD[:, j]
    row = []
    for u in us:
      c = _dot(u, v)
      v = v - c[:, None] * u
      row.append(c)
    norm = jnp.linalg.norm(v, axis=-1)
    ok = norm > _GS_RTOL * jnp.linalg.norm(nrm_MxSxD[:, j], axis=-1)
    us.append(jnp.where(ok[:, None], v / jnp.where(ok, norm, 1.0)[:, None], 0.0))
    row.append(jnp.where(ok, norm, 0.0))
    coef.append(row)
  return us, coef


def _min_norm_qp(x0_MxD, nrm_MxSxD, kind_MxS, t_NxD, side_MxN, b_MxN, valid_MxN, done_M,
                 steps: int):
  """The least-norm x with n_j . x = c_j (eq slots) and side_i (T_i x - b_i) <= 0 (valid i).

  Goldfarb and Idnani's dual active-set method (Math. Prog. 27, 1983) with the
  identity as Hessian: start at x0, the least-norm solution of the equalities
  (slots with kind 1); add the most violated constraint, stepping along the
  null space of the active set, and drop an active constraint whose
  multiplier would turn negative (a partial step). Each step adds or drops one
  constraint; after `steps` steps, or when nothing is violated, it stops. The
  active set lives in the S = d_max slots (kind 0 empty, 1 equality, 2
  inequality), so every shape is static and the whole thing vmaps.
  """
  m_idx = jnp.arange(x0_MxD.shape[0])
  tnorm_N = jnp.linalg.norm(t_NxD, axis=-1)
  bscale_MxN = jnp.abs(b_MxN)

  def body(state):
    x, nrm, kind, lam, p, lam_p, done, it = state
    us, coef = _slot_basis(nrm * (kind > 0)[..., None])
    # A new constraint to add where the last step finished one.
    s_MxN = side_MxN * (_mm(x, t_NxD.T) - b_MxN)  # > 0: violated
    tol_MxN = QP_TOL * (tnorm_N * jnp.linalg.norm(x, axis=-1, keepdims=True) + bscale_MxN)
    # (Active constraints hold with equality, so they are never picked again.)
    score = jnp.where(valid_MxN & (s_MxN > tol_MxN), s_MxN / tnorm_N, -jnp.inf)
    pick, worst = jnp.argmax(score, -1), jnp.max(score, -1)
    fresh = p < 0
    done = done | (fresh & (worst == -jnp.inf))
    p = jnp.where(fresh, pick, p)
    sgn = -side_MxN[m_idx, p]
    n_p = sgn[:, None] * t_NxD[p]  # the constraint as n_p . x >= c_p
    c_p = sgn * b_MxN[m_idx, p]
    # Step direction z (null space of the active normals) and the change r of
    # the active multipliers per unit of the new one: L^T r = U n_p.
    gamma = [_dot(u, n_p) for u in us]
    z = n_p - sum(g[:, None] * u for g, u in zip(gamma, us))
    s_slots = len(us)
    r = [None] * s_slots
    for j in reversed(range(s_slots)):
      acc = gamma[j] - sum(coef[l][j] * r[l] for l in range(j + 1, s_slots))
      r[j] = jnp.where(coef[j][j] > 0, acc / jnp.where(coef[j][j] > 0, coef[j][j], 1.0), 0.0)
    r = jnp.stack(r, -1)
    ratio = jnp.where((kind == 2) & (r > 1e-7), lam / jnp.where(r > 1e-7, r, 1.0), jnp.inf)
    t1, drop = jnp.min(ratio, -1), jnp.argmin(ratio, -1)
    zz = _dot(z, n_p)
    moves = zz > 1e-10 * _dot(n_p, n_p)
    t2 = jnp.where(moves, (c_p - _dot(n_p, x)) / jnp.where(moves, zz, 1.0), jnp.inf)
    t = jnp.minimum(t1, t2)
    done = done | ~jnp.isfinite(t)  # infeasible (rounding): keep the last x
    go = ~done
    tt = jnp.where(go, t, 0.0)
    x = x + jnp.where(go & moves, tt, 0.0)[:, None] * z
    lam = jnp.where(kind == 2, lam - tt[:, None] * r, lam)
    lam_p = lam_p + tt
    full = go & (t2 <= t1) & jnp.any(kind == 0, -1)  # a moving step frees a slot
    free = jnp.argmax(kind == 0, -1)
    put = full[:, None] & (jnp.arange(s_slots) == free[:, None])
    kind = jnp.where(put, 2, kind)
    nrm = jnp.where(put[..., None], n_p[:, None], nrm)
    lam = jnp.where(put, lam_p[:, None], lam)
    cut = (go & ~full)[:, None] & (jnp.arange(s_slots) == drop[:, None])
    kind = jnp.where(cut, 0, kind)
    lam = jnp.where(cut, 0.0, lam)
    p = jnp.where(full, -1, p)
    lam_p = jnp.where(full, 0.0, lam_p)
    return x, nrm, kind, lam, p, lam_p, done, it + 1

  def cond(state):
    return jnp.logical_and(state[-1] < steps, ~jnp.all(state[-2]))

  m, s = kind_MxS.shape
  state = (x0_MxD, nrm_MxSxD, kind_MxS, jnp.zeros((m, s)),
           jnp.full((m,), -1), jnp.zeros((m,)), done_M, 0)
  return jax.lax.while_loop(cond, body, state)[0]


def _constrained_errors(x_PxD, t_NxD, d, n_Q, count_AxQxP, a_AxPxJxD, xs_AxPxJ1xD, side_AxNxP,
                        b_AxNxP, span_AxQxP):
  """Squared errors [A, Q, P] of the constrained decoder at the prefixes n_Q.

  Equal to the span decoder's where d units are on duty (the equations fix
  x); elsewhere a QP per (activation, prefix, point). Only those are solved:
  they are gathered from all activations together, QP_BATCH * d_max * A * P
  at a time, for as long as any is left.
  """
  n_act, q_all, p = count_AxQxP.shape
  n_units, d_max = t_NxD.shape
  size = n_act * q_all * p
  cap = int(min(size, QP_BATCH * d_max * n_act * p))
  count_F = count_AxQxP.reshape(-1)
  need_F = count_F < d
  upto_F = jnp.cumsum(need_F.astype(jnp.int32))  # nondecreasing: a binary search finds the j-th
  left = upto_F[-1]
  side_AxPxN, b_AxPxN = jnp.swapaxes(side_AxNxP, 1, 2), jnp.swapaxes(b_AxNxP, 1, 2)
  slot_S = jnp.arange(d_max)

  def body(state):
    start, out_F = state
    live_M = jnp.arange(cap) < left - start
    idx_M = jnp.minimum(jnp.searchsorted(upto_F, start + jnp.arange(cap) + 1), size - 1)
    a_M, q_M, p_M = idx_M // (q_all * p), idx_M // p % q_all, idx_M % p
    k_M = jnp.minimum(count_F[idx_M], d)
    eq_MxS = slot_S < k_M[:, None]
    side_MxN = side_AxPxN[a_M, p_M]
    valid_MxN = (side_MxN != 0) & (jnp.arange(n_units) < n_Q[q_M][:, None])
    x_MxD = _min_norm_qp(xs_AxPxJ1xD[a_M, p_M, k_M],
                         jnp.where(eq_MxS[..., None], a_AxPxJxD[a_M, p_M], 0.0),
                         eq_MxS.astype(jnp.int32), t_NxD, side_MxN, b_AxPxN[a_M, p_M],
                         valid_MxN, ~live_M, QP_STEPS * d_max)
    sq_M = jnp.sum((x_PxD[p_M] - x_MxD) ** 2, -1)
    out_F = out_F.at[jnp.where(live_M, idx_M, size)].set(sq_M, mode="drop")
    return start + cap, out_F

  out_F = jax.lax.while_loop(lambda s: s[0] < left, body,
                             (jnp.int32(0), span_AxQxP.reshape(-1)))[1]
  return out_F.reshape(n_act, q_all, p)


def _metrics_at(x_PxD: Array, t_NxD: Array, d: Array, names: Sequence[str], n_Q: Array) -> Array:
  """Metrics [A, Q, len(METRICS)] of T_n (the first n rows of T_NxD) for each n in n_Q.

  T_n^+ for all n come from one batched SVD of the masked prefixes, and T_n^+ y
  for all n from one matmul; the duty counts of all n are prefix counts over
  the unit axis. Only the activation functions and their inverses are
  unrolled: the rest is vmapped over activations, and the duty statistics over
  the distinct regions.
  """
  x_PxD, t_NxD = jnp.asarray(x_PxD), jnp.asarray(t_NxD)
  specs = [activations.get(a) for a in names]
  regions = list(dict.fromkeys(act.region for act in specs))
  r_A = np.array([regions.index(act.region) for act in specs])
  total = jnp.sum(x_PxD * x_PxD)
  z_NxP = _small(t_NxD, x_PxD.T)
  n_units = t_NxD.shape[0]
  first_QxN = jnp.arange(n_units)[None, :] < n_Q[:, None]
  pinv_QxDxN = _pinv(jnp.where(first_QxN[:, :, None], t_NxD[None], 0.0))
  y_AxNxP = jnp.stack([act.fn(z_NxP) for act in specs])
  err_AxQx2 = jax.vmap(_errors, (None, None, 0, None))(x_PxD, pinv_QxDxN, y_AxNxP, total)
  on_RxNxP = jnp.stack([activations.Activation(None, None, False, r).active(z_NxP)
                        for r in regions])
  count_RxQxP = jnp.einsum("qn,rnp->rqp", first_QxN.astype(jnp.float32),
                           on_RxNxP.astype(jnp.float32), precision=_HIGHEST).astype(jnp.int32)
  duty_RxQx4 = jax.vmap(_duty_stats, (0, None, None))(count_RxQxP, n_Q, d)
  # The decoders read y: act^-1(y) on the units on duty.
  on_AxNxP = on_RxNxP[r_A]
  safe = [act.fn(jnp.float32(0.5)) for act in specs]  # 0.5 is in every region
  zhat_AxNxP = jnp.stack([jnp.where(on_AxNxP[a], act.inverse(jnp.where(on_AxNxP[a], y, safe[a])),
                                    0.0) for a, (act, y) in enumerate(zip(specs, y_AxNxP))])
  a_AxPxJxD, zf_AxPxJ = jax.vmap(_first_on, (None, 0, 0, None))(t_NxD, on_AxNxP, zhat_AxNxP, d)
  xs_AxPxJ1xD = jax.vmap(_span_solutions)(a_AxPxJxD, zf_AxPxJ)
  sq_AxPxJ1 = jnp.sum((x_PxD[None, :, None] - xs_AxPxJ1xD) ** 2, -1)
  count_AxQxP = count_RxQxP[r_A]
  k_AxQxP = jnp.minimum(count_AxQxP, d)
  span_AxQxP = jnp.take_along_axis(jnp.swapaxes(sq_AxPxJ1, 1, 2), k_AxQxP, axis=1)
  con_AxQxP = span_AxQxP
  bounded = [a for a, act in enumerate(specs) if act.region != (-math.inf, math.inf)]
  if bounded:
    sel = np.array(bounded)
    sides, bounds = [], []
    for a in bounded:
      lo, hi = specs[a].region
      below, above = z_NxP <= lo, z_NxP >= hi
      sides.append(jnp.where(below, 1, jnp.where(above, -1, 0)).astype(jnp.float32))
      bounds.append(jnp.where(below, lo if lo > -math.inf else 0.0,
                              jnp.where(above, hi if hi < math.inf else 0.0, 0.0)))
    con = _constrained_errors(x_PxD, t_NxD, d, n_Q, count_AxQxP[sel], a_AxPxJxD[sel],
                              xs_AxPxJ1xD[sel], jnp.stack(sides), jnp.stack(bounds),
                              span_AxQxP[sel])
    con_AxQxP = con_AxQxP.at[sel].set(con)
  dec_AxQx2 = jnp.stack([span_AxQxP.sum(-1), con_AxQxP.sum(-1)], -1) / total
  duty_AxQx4 = duty_RxQx4[r_A]
  linear_A = np.array([1.0 if act.identity_on_active else np.nan for act in specs], np.float32)
  duty_AxQx4 = duty_AxQx4.at[:, :, 3].multiply(linear_A[:, None])
  return jnp.concatenate([err_AxQx2, dec_AxQx2, duty_AxQx4], -1).astype(jnp.float32)


def _duty_stats(count_QxP, n_Q, d):
  """Collapsed / dead / active / all-on fractions [Q, 4] from the counts on duty."""
  return jnp.stack([
      jnp.mean(count_QxP < d, axis=1), jnp.mean(count_QxP == 0, axis=1),
      jnp.mean(count_QxP, axis=1) / n_Q, jnp.mean(count_QxP == n_Q[:, None], axis=1)], -1)


def _errors(x_PxD, pinv_QxDxN, y_NxP, total):
  """pinv and refit errors [Q, 2] for every prefix from one activation's outputs."""
  u_QxPxD = jnp.einsum("ip,ndi->npd", y_NxP, pinv_QxDxN, precision=_HIGHEST)
  uu_QxDxD = jnp.einsum("npd,npe->nde", u_QxPxD, u_QxPxD, precision=_HIGHEST)
  ux_QxDxD = jnp.einsum("npd,pe->nde", u_QxPxD, x_PxD, precision=_HIGHEST)
  b_QxDxD = _small(_psd_pinv(uu_QxDxD), ux_QxDxD)
  return jnp.stack([
      jnp.sum((x_PxD - u_QxPxD) ** 2, axis=(1, 2)) / total,
      jnp.sum((x_PxD - _small(u_QxPxD, b_QxDxD)) ** 2, axis=(1, 2)) / total], -1)


def prefix_metrics(x_PxD: Array, t_NxD: Array, d: Array, names: Sequence[str]) -> Array:
  """Metrics [A, N, len(METRICS)] for every n = 1..N, T_n being the first n rows of T_NxD."""
  return _metrics_at(x_PxD, t_NxD, d, names, jnp.arange(1, t_NxD.shape[0] + 1))


def cell_metrics(x_PxD: Array, t_NxD: Array, n: Array, d: Array,
                 names: Sequence[str]) -> Array:
  """Metrics [A, len(METRICS)] of one cell: T_n is the first n rows of T_NxD (n traced).

  The per-cell counterpart of `prefix_metrics` (and the per-n baseline of the
  benchmark); rows of T past n and columns past d may be zero padding.
  """
  return _metrics_at(x_PxD, t_NxD, d, names, jnp.reshape(n, (1,)).astype(jnp.int32))[:, 0]


# ---------------------------------------------------------------- NumPy reference

# The registered activations in NumPy (float64), for the reference below.
NUMPY_FNS = {
    "relu": lambda z: np.maximum(z, 0.0),
    "relu6": lambda z: np.clip(z, 0.0, 6.0),
    "leaky_relu": lambda z: np.where(z > 0, z, 0.01 * z),
    "elu": lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0.0))),
    "gelu": lambda z: z * special.ndtr(z),
    "softplus": lambda z: np.logaddexp(0.0, z),
    "tanh": np.tanh,
    "identity": lambda z: z,
}


def least_norm_qp(a_KxD: np.ndarray, c_K: np.ndarray, g_MxD: np.ndarray,
                  h_M: np.ndarray) -> np.ndarray:
  """argmin ||x|| subject to a x = c and g x <= h, in float64 (scipy.optimize.nnls).

  The equalities leave x = x_a + V w (x_a their least-norm solution, V an
  orthonormal basis of their null space), and ||x||^2 = ||x_a||^2 + ||w||^2;
  the least-norm w with (g V) w <= h - g x_a is Lawson and Hanson's
  least-distance program, solved exactly by one NNLS ("Solving Least Squares
  Problems", 1974, ch. 23).
  """
  d = a_KxD.shape[1] if a_KxD.size else g_MxD.shape[1]
  a_KxD = a_KxD.reshape(-1, d)
  x_a = np.linalg.pinv(a_KxD, rcond=1e-12) @ c_K if len(a_KxD) else np.zeros(d)
  _, s, vt = np.linalg.svd(a_KxD) if len(a_KxD) else (None, np.zeros(0), np.eye(d))
  rank = int(np.sum(s > 1e-12 * max(s.max(initial=0.0), 1e-300)))
  v_DxW = vt[rank:].T
  if not len(g_MxD) or not v_DxW.shape[1]:
    return x_a
  gv_MxW, rhs_M = g_MxD @ v_DxW, h_M - g_MxD @ x_a
  # LDP: min ||w|| s.t. (-gv) w >= -rhs, via NNLS on E = [(-gv)^T; (-rhs)^T], f = e_last.
  e = np.vstack([-gv_MxW.T, -rhs_M[None]])
  f = np.zeros(e.shape[0])
  f[-1] = 1.0
  u, _ = optimize.nnls(e, f, maxiter=50 * e.shape[1])
  res = e @ u - f
  w = -res[:-1] / res[-1] if abs(res[-1]) > 1e-300 else np.zeros(v_DxW.shape[1])
  return x_a + v_DxW @ w


def recover(x_PxD: np.ndarray, t_NxD: np.ndarray, activation: str,
            constrained: bool = True) -> dict[str, np.ndarray]:
  """Reconstructions of x through `activation` and T, straight from the definitions.

  NumPy, float64, no padding: the reference for the sweep (and the figure's
  panels). The span and constrained decoders take act^-1(y) = z on the units
  on duty (float64 inverts exactly there). Returns pinv, refit, span and
  (unless `constrained` is False) constrained reconstructions [P, D], and the
  on-duty mask [P, N].
  """
  x_PxD, t_NxD = np.asarray(x_PxD, np.float64), np.asarray(t_NxD, np.float64)
  z_PxN = x_PxD @ t_NxD.T
  u_PxD = NUMPY_FNS[activation](z_PxN) @ np.linalg.pinv(t_NxD, rcond=PINV_RTOL).T
  b_DxD = np.linalg.lstsq(u_PxD, x_PxD, rcond=math.sqrt(GRAM_RTOL))[0]
  lo, hi = activations.get(activation).region
  on_PxN = (z_PxN > lo) & (z_PxN < hi)
  # Span: least squares on each point's on-duty rows, T_S^+ z_S.
  rows_PxNxD = on_PxN[:, :, None] * t_NxD[None]
  span_PxD = np.einsum("pdn,pn->pd", np.linalg.pinv(rows_PxNxD, rcond=PINV_RTOL),
                       z_PxN * on_PxN)
  out = {"pinv": u_PxD, "refit": u_PxD @ b_DxD, "span": span_PxD, "on_duty": on_PxN}
  if constrained:
    con_PxD = span_PxD.copy()
    d = t_NxD.shape[1]
    for i in np.flatnonzero(on_PxN.sum(1) < d):
      below, above = z_PxN[i] <= lo, z_PxN[i] >= hi
      g = np.vstack([t_NxD[below], -t_NxD[above]])
      h = np.concatenate([np.full(below.sum(), lo), np.full(above.sum(), -hi)])
      con_PxD[i] = least_norm_qp(t_NxD[on_PxN[i]], z_PxN[i, on_PxN[i]], g, h)
    out["constrained"] = con_PxD
  return out


def reference_metrics(x_PxD: np.ndarray, t_NxD: np.ndarray, activation: str) -> np.ndarray:
  """The METRICS of one cell from `recover` (NumPy, float64, unpadded)."""
  rec = recover(x_PxD, t_NxD, activation)
  x_PxD = np.asarray(x_PxD, np.float64)
  n, d = np.shape(t_NxD)
  total = np.sum(x_PxD ** 2)
  count_P = rec["on_duty"].sum(1)
  return np.array([*(np.sum((x_PxD - rec[e]) ** 2) / total for e in ERRORS),
                   np.mean(count_P < d), np.mean(count_P == 0), np.mean(count_P) / n,
                   np.mean(count_P == n) if activations.get(activation).identity_on_active
                   else np.nan])


# ---------------------------------------------------------------- the grid


def compiler_options() -> Optional[dict[str, Any]]:
  """XLA options for the sweep: on the CPU, LLVM at -O1.

  Measured on the default grid: about a third less compile time for about a
  tenth more run time.
  """
  return {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None


def _grid_fn(x_KxPxD, d_K, k_C, s_C, seed, *, names, n_max, dims, chunk, progress):
  """Metrics [C, A, len(dims), M] for every draw C = (manifold dim, seed); C % chunk == 0."""
  d_max = x_KxPxD.shape[-1]
  pick_N = np.asarray(dims) - 1

  def one(k, s):
    t_NxD = _draw_padded(embedding_key(seed, s, d_K[k]), n_max, d_K[k], n_max, d_max)
    return prefix_metrics(x_KxPxD[k], t_NxD, d_K[k], names)[:, pick_N]

  chunks = k_C.shape[0] // chunk

  def body(args):
    i, k, s = args
    out = jax.vmap(one)(k, s)
    if progress is not None:
      jax.debug.callback(lambda i, _: progress(int(i) + 1, chunks), i, out[0, 0, 0, 0])
    return out

  split = lambda a: a.reshape(chunks, chunk)
  out = jax.lax.map(body, (jnp.arange(chunks), split(k_C), split(s_C)))
  return out.reshape(-1, *out.shape[2:])


def compile_sweep(grid: Grid, progress: Optional[Callable[[int, int], None]] = None):
  """Lowers and compiles the grid's one program: returns (compiled, args, meta).

  `compiled(*args)` -> metrics [draws, A, len(grid.dims), M] over the
  (manifold dim, seed) draws; meta holds what unpacks it and the compile time.
  """
  x_KxPxD = manifolds.padded(grid.manifold, grid.points, grid.ds, seed=grid.seed,
                             turns=grid.turns, scale=grid.scale)
  k_C, s_C = (a.ravel().astype(np.int32) for a in np.meshgrid(
      np.arange(len(grid.ds)), np.arange(grid.seeds), indexing="ij"))
  draws = k_C.size
  chunk = draws if grid.chunk <= 0 else min(grid.chunk, draws)
  pad = -draws % chunk
  k_C, s_C = (np.concatenate([a, np.repeat(a[:1], pad)]) for a in (k_C, s_C))
  args = (x_KxPxD, np.asarray(grid.ds, np.int32), k_C, s_C, np.int32(grid.seed))
  fn = jax.jit(_grid_fn, static_argnames=("names", "n_max", "dims", "chunk", "progress"))
  start = time.perf_counter()
  compiled = fn.lower(*args, names=grid.activations, n_max=max(grid.dims), dims=grid.dims,
                      chunk=chunk, progress=progress).compile(compiler_options())
  meta = {"x": x_KxPxD, "draws": draws, "chunk": chunk,
          "compile_s": time.perf_counter() - start}
  return compiled, args, meta


def _binom_cdf(k: int, n: np.ndarray, p: np.ndarray) -> np.ndarray:
  """P(Binomial(n, p) <= k), elementwise."""
  if k < 0:
    return np.zeros(np.shape(n))
  n = np.asarray(n, np.int64)
  return np.where(k >= n, 1.0, special.bdtr(k, np.maximum(n, k + 1), p))


def theory(x_KxPxD: np.ndarray, ds: Sequence[int], names: Sequence[str],
           dims: Sequence[int]) -> dict[str, np.ndarray]:
  """Predicted collapsed / dead / linear fractions and span-decoder error [K, A, N].

  A unit is on duty with probability p(x) = P(lo < N(0, |x|^2) < hi); units are
  independent given x, so the count on duty is Binomial(n, p(x)) (for ReLU
  p = 1/2: P(Binomial(n, 1/2) < d) and 2^-n). With k < d units on duty the
  span decoder keeps the projection of x onto k random directions: flipping a
  row's sign keeps its span, so for a sign-symmetric region ((0, inf) or
  everywhere) the span is uniformly random and keeps k/d of |x|^2 on average.
  The span theory is NaN for other regions, where that argument does not hold;
  the constrained decoder has none.
  """
  out = {key: np.zeros((len(ds), len(names), len(dims))) for key in THEORY}
  n_N = np.asarray(dims, np.float64)
  for k, d in enumerate(ds):
    sq_P = np.sum(x_KxPxD[k].astype(np.float64) ** 2, axis=-1)
    r_P = np.maximum(np.sqrt(sq_P), 1e-300)
    for a, name in enumerate(names):
      act = activations.get(name)
      lo, hi = act.region
      p_P = special.ndtr(hi / r_P) - special.ndtr(lo / r_P)
      p_PxN, n_PxN = np.broadcast_arrays(p_P[:, None], n_N[None, :])
      out["collapsed_frac_theory"][k, a] = _binom_cdf(d - 1, n_PxN, p_PxN).mean(0)
      out["dead_frac_theory"][k, a] = ((1 - p_PxN) ** n_PxN).mean(0)
      out["linear_frac_theory"][k, a] = ((p_PxN ** n_PxN).mean(0) if act.identity_on_active
                                         else np.nan)
      if hi == math.inf and lo in (0.0, -math.inf):
        lost_PxN = sum((_binom_cdf(j, n_PxN, p_PxN) - _binom_cdf(j - 1, n_PxN, p_PxN))
                       * (1 - j / d) for j in range(d))
        out["span_error_theory"][k, a] = (sq_P @ lost_PxN) / sq_P.sum()
      else:
        out["span_error_theory"][k, a] = np.nan
  return out


def sweep(config: Any, *, progress: Optional[Callable[[int, int], None]] = None) -> dict[str, Any]:
  """Runs the whole grid in one compiled call.

  The config is validated as the launcher validates it (`grid_from_config`,
  then `check_memory`): a bad value or a grid too large for this machine
  raises errors.ConfigError with the launcher's message, before compiling.

  Args:
    config: a collapse ConfigDict / dict (see configs/collapse.py) or a Grid.
    progress: optional `progress(chunks_done, chunks)`, called from the device loop.

  Returns:
    NumPy arrays over the grid: each of METRICS as [K, A, N, S] (manifold dims,
    activations, embedding dims, seeds), each of THEORY as [K, A, N], plus the
    grid's axes and timings.
  """
  grid = grid_from_config(config)
  check_memory(grid)
  compiled, args, meta = compile_sweep(grid, progress)
  start = time.perf_counter()
  out_CxAxNxM = np.asarray(jax.block_until_ready(compiled(*args)))
  run_s = time.perf_counter() - start
  out = out_CxAxNxM[:meta["draws"]].reshape(
      len(grid.ds), grid.seeds, len(grid.activations), len(grid.dims), len(METRICS))
  out = out.transpose(0, 2, 3, 1, 4)
  results = {"manifold": grid.manifold, "d": np.asarray(grid.ds),
             "activations": grid.activations, "dims": np.asarray(grid.dims),
             "seeds": grid.seeds, "seed": grid.seed, "points": grid.points,
             "turns": grid.turns, "scale": grid.scale, "cells": grid.cells,
             "chunk": meta["chunk"],
             "compile_s": meta["compile_s"], "run_s": run_s}
  results.update({m: out[..., i] for i, m in enumerate(METRICS)})
  results.update(theory(meta["x"], grid.ds, grid.activations, grid.dims))
  return results


# ---------------------------------------------------------------- summaries


def _g(v) -> float:
  return float(f"{float(v):.6g}")


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
  """One row per (d, activation, n): means, 95% intervals and medians over seeds, theory.

  Errors and `active_frac` get t-intervals over seeds; the fractions of points
  (`collapsed_frac`, `dead_frac`, `linear_frac`), which sit near 0 in the
  tails, get `stats.cluster_wilson` with the seeds as clusters of `points`.
  """
  rows = []
  for k, d in enumerate(results["d"]):
    for a, name in enumerate(results["activations"]):
      for i, n in enumerate(results["dims"]):
        row = {"activation": name, "d": int(d), "dim": int(n), "seeds": results["seeds"]}
        for e in ERRORS:
          v_S = results[f"{e}_error"][k, a, i]
          mean, lo, hi = stats.mean_ci(v_S, bounds=(0.0, math.inf))
          row.update({f"{e}_error_mean": _g(mean), f"{e}_error_lo": _g(lo),
                      f"{e}_error_hi": _g(hi), f"{e}_error_median": _g(np.median(v_S))})
        row["span_error_theory"] = _g(results["span_error_theory"][k, a, i])
        for m in ("collapsed_frac", "dead_frac", "active_frac", "linear_frac"):
          v_S = results[m][k, a, i]
          mean, lo, hi = (stats.mean_ci(v_S, bounds=(0.0, 1.0)) if m == "active_frac"
                          else stats.cluster_wilson(v_S, results["points"]))
          row.update({m: _g(mean), f"{m}_lo": _g(lo), f"{m}_hi": _g(hi)})
          if m != "active_frac":
            row[f"{m}_theory"] = _g(np.mean(results[f"{m}_theory"][k, a, i]))
        rows.append(row)
  return rows


def table(rows: Sequence[dict[str, Any]], activation: str = "relu",
          dims: Sequence[int] = (1, 2, 3, 5, 15, 30, 64)) -> str:
  """A short text table of one activation at a few embedding dims (theory in brackets)."""
  lines = [f"{activation}: relative errors (mean over seeds; pinv: median) and fractions "
           "of points [theory]",
           f"{'d':>2} {'n':>4} {'pinv(med)':>9} {'refit':>6} {'span':>8} {'[theory]':>9} "
           f"{'constr.':>8} {'collapsed':>9} {'[theory]':>8} {'dead':>6} {'[theory]':>8} "
           f"{'linear':>6}"]
  for r in rows:
    if r["activation"] == activation and r["dim"] in dims:
      lines.append(
          f"{r['d']:>2} {r['dim']:>4} {r['pinv_error_median']:>9.3g} {r['refit_error_mean']:>6.3f}"
          f" {r['span_error_mean']:>8.2g} {r['span_error_theory']:>9.2g}"
          f" {r['constrained_error_mean']:>8.2g}"
          f" {r['collapsed_frac']:>9.4f} {r['collapsed_frac_theory']:>8.4f}"
          f" {r['dead_frac']:>6.4f} {r['dead_frac_theory']:>8.2g} {r['linear_frac']:>6.3f}")
  return "\n".join(lines)


# ---------------------------------------------------------------- the job


def figure_recoveries(grid: Grid, activation: str, dims: Sequence[int],
                      seed_index: int = 0) -> dict[str, Any]:
  """Input cloud (first manifold dim) and its recoveries at `dims` with the sweep's T."""
  d = grid.ds[0]
  x_PxD = manifolds.sample(grid.manifold, grid.points, d, seed=grid.seed, turns=grid.turns,
                           scale=grid.scale)
  key = embedding_key(grid.seed, seed_index, d)
  t_NxD = np.asarray(jax.jit(draw_embedding, static_argnums=(1, 2))(key, max(dims), d))
  total = float(np.sum(x_PxD.astype(np.float64) ** 2))
  panels = []
  for n in dims:
    rec = recover(x_PxD, t_NxD[:n], activation)  # T_n: the first n rows, as in the sweep
    rec.update(n=n, **{f"{e}_error": float(np.sum((x_PxD - rec[e]) ** 2) / total)
                       for e in ERRORS})
    panels.append(rec)
  return {"x": x_PxD, "activation": activation, "panels": panels}


def memory_estimate(grid: Grid, chunk: Optional[int] = None) -> dict[str, int]:
  """Bytes the compiled sweep needs, from the grid alone (nothing is compiled).

  Per vmapped draw (N = n_max, P points, D = d_max, A activations), the terms
  that dominate XLA's buffers: the hidden layer and what is built on it, T^+ y
  of every prefix n for every activation [A, N, P, D], the duty counts
  [R, N, P], the decoders' inverses and the constrained decoder's batch of QPs
  [A, QP_BATCH D P, N] (about 8.1 A D + 6 floats per unit and point; measured
  on the CPU), and the prefixes of
  T with their SVDs and pseudo-inverses [N, N, D] (about 2.5 N^2 D floats).
  `chunk` draws run at once. The output [draws, A, len(dims), METRICS] lives
  on the device and twice on the host (the copy and its transpose). Checked
  against `compiled.memory_analysis()` (tests/test_reliability.py).

  Returns {'per_draw', 'chunk', 'device', 'host', 'total'} (total = device + host).
  """
  n, p, d, a = max(grid.dims), grid.points, max(grid.ds), len(grid.activations)
  draws = grid.draws
  chunk = (grid.chunk if chunk is None else chunk) or draws
  chunk = min(chunk, draws)
  per_draw = 4 * (n * p * (8.1 * a * d + 6) + 2.5 * n * n * d)
  out = 4 * (draws + -draws % chunk) * a * len(grid.dims) * len(METRICS)
  device = chunk * per_draw + out + 4 * len(grid.ds) * p * d + 8 * draws
  return {"per_draw": int(per_draw), "chunk": int(chunk), "device": int(device),
          "host": int(2 * out), "total": int(device + 2 * out)}


def available_memory() -> dict[str, Any]:
  """{'host': bytes of this machine (or its cgroup limit), 'device': bytes or None}.

  'device' is the accelerator's memory limit from `memory_stats()`; None on the
  CPU, whose buffers are host memory.
  """
  host = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    try:
      with open(path) as f:
        text = f.read().strip()
    except OSError:
      continue
    if text.isdigit():
      host = min(host, int(text))
  device = None
  if jax.default_backend() != "cpu":
    try:
      device = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
    except Exception:  # pylint: disable=broad-except  (not every backend reports it)
      device = None
  return {"host": int(host), "device": device}


def _size(nbytes: float) -> str:
  for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
    if nbytes >= scale:
      return f"{nbytes / scale:.3g} {unit}"
  return f"{nbytes / 1e3:.3g} kB"


def check_memory(grid: Grid, available: Optional[dict[str, Any]] = None,
                 fraction: float = 0.9) -> dict[str, int]:
  """Raises ConfigError when the sweep would not fit in `fraction` of the memory.

  The message names the estimated size, the memory there is and the fix: the
  largest --config.chunk that fits, else how far to cut n_max or the seeds.
  Returns the estimate when it fits.
  """
  avail = available_memory() if available is None else available
  on_device = avail.get("device") is not None

  def fits(g: Grid, chunk: Optional[int] = None) -> bool:
    est = memory_estimate(g, chunk)
    if on_device:
      return est["device"] <= fraction * avail["device"] and est["host"] <= fraction * avail["host"]
    return est["total"] <= fraction * avail["host"]

  est = memory_estimate(grid)
  if fits(grid):
    return est
  if on_device:
    have = f"the device has {_size(avail['device'])} and the host {_size(avail['host'])}"
  else:
    have = f"this machine has {_size(avail['host'])}"
  chunks = [c for c in (64, 32, 16, 8, 4, 2, 1) if c < est["chunk"] and fits(grid, c)]
  if chunks:
    need = _size(memory_estimate(grid, chunks[0])["total"])
    fix = f"pass --config.chunk={chunks[0]} (about {need}), or fewer --config.seeds / --config.dims"
  else:
    one = dataclasses.replace(grid, chunk=1)
    if not fits(dataclasses.replace(one, seeds=1)):  # One draw is too big: n_max or points.
      n_fit = max([n for n in (2 ** k for k in range(1, 21))
                   if fits(dataclasses.replace(one, seeds=1, dims=(n,)))] or [0])
      fix = (f"keep --config.dims at most n={n_fit} (with --config.chunk=1), or fewer "
             "--config.manifold.points" if n_fit else "pass fewer --config.manifold.points")
    else:  # The results themselves: draws x activations x dims.
      s_fit = max([s for s in (2 ** k for k in range(40))
                   if s <= grid.seeds and fits(dataclasses.replace(one, seeds=s))] or [1])
      fix = (f"pass at most about {s_fit:,} --config.seeds (with --config.chunk=1), or fewer "
             "--config.dims / activations")
  raise errors.ConfigError(
      f"the sweep needs about {_size(est['total'])} of memory (n_max={max(grid.dims)}, "
      f"{grid.points} points, {grid.draws:,} draws, {est['chunk']} at a time) but {have}; {fix}")


class _Progress:
  """Prints chunk progress, cells/s and ETA at most every `every` seconds.

  Rates are measured from the first finished chunk, so compile time does not
  count.
  """

  def __init__(self, cells: int, every: float = 2.0):
    self.cells, self.every = cells, every
    self.first = None

  def __call__(self, done: int, total: int) -> None:
    now = time.perf_counter()
    if self.first is None:
      self.first, self.last = (done, now), now
      return
    if now - self.last < self.every and done < total:
      return
    self.last = now
    per_chunk = (now - self.first[1]) / max(done - self.first[0], 1)
    rate = self.cells / total / per_chunk
    print(f"  chunk {done}/{total}  {rate:,.0f} cells/s  ETA {(total - done) * per_chunk:.0f} s",
          flush=True)


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs the sweep and writes collapse.csv, collapse.json, collapse.png (+ .pdf) into `workdir`.

  The workdir is locked for the run (`locking.workdir_lock`), the memory the
  compiled call needs is checked first (`check_memory`), and the files are
  written as one set (`files.result_set`): a reader sees the earlier set or
  the new one, never a mix, and a failure keeps the earlier set.
  """
  grid = grid_from_config(config)
  fig_cfg = config["figure"]
  fig_act = errors.choice("figure.activation", fig_cfg["activation"], activations.names())
  fig_dims = _ints(fig_cfg["dims"], "figure.dims", "embedding dimension n")
  check_memory(grid)
  workdir = files.ensure_workdir(workdir)
  with locking.workdir_lock(workdir):
    return _run(config, grid, fig_act, fig_dims, workdir)


def _run(config: Any, grid: Grid, fig_act: str, fig_dims: Sequence[int],
         workdir: str) -> dict[str, Any]:
  print(f"collapse sweep: {grid.manifold} (d={','.join(map(str, grid.ds))}, "
        f"{grid.points} points) x {len(grid.activations)} activations x "
        f"n={grid.dims[0]}..{grid.dims[-1]} ({len(grid.dims)} dims) x {grid.seeds} seeds "
        f"= {grid.cells:,} cells, one compiled call", flush=True)
  results = sweep(grid, progress=_Progress(grid.cells))
  print(f"  compiled in {results['compile_s']:.1f} s, ran in {results['run_s']:.1f} s", flush=True)
  rows = summarize(results)
  from resjax import plots  # pylint: disable=g-import-not-at-top (matplotlib: slow import)
  fig_act = plots.focus_activation(grid.activations, fig_act)  # The one the figure shows.
  recoveries = figure_recoveries(grid, fig_act, fig_dims) if grid.manifold == "spiral" else None
  to_dict = getattr(config, "to_dict", None)
  with files.result_set(workdir) as new:
    files.write_csv(os.path.join(new, "collapse.csv"), rows)
    files.write_json(os.path.join(new, "collapse.json"), {
        "config": to_dict() if to_dict else dict(config),
        "grid": dataclasses.asdict(grid),
        "timing": {"compile_s": results["compile_s"], "run_s": results["run_s"]},
        "results": rows})
    fig = plots.collapse_figure(results, recoveries)
    written = files.save_figure(fig, os.path.join(new, "collapse.png"))
  for name in dict.fromkeys(("relu",) + grid.activations[:1]):
    if name in grid.activations:
      print(table(rows, name, tuple(n for n in (1, 2, 3, 5, 15, 30, 64, grid.dims[-1])
                                    if n in grid.dims)))
  paths = [os.path.join(workdir, f"collapse.{ext}") for ext in ("csv", "json")]
  paths += [os.path.join(workdir, os.path.basename(p)) for p in written]
  print("wrote " + "\n      ".join(paths))
  return {"rows": rows, "results": results}
