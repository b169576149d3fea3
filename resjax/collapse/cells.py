"""Per-cell metric math: every METRICS value of T_n for all prefixes n of one draw of T.

For one draw T_NxD and a point cloud x_PxD: the pinv and refit errors, the
span and constrained decoders' errors (`decoders`), and the duty statistics
(collapsed / dead / active / all-on fractions). Everything that depends on n
is a sum over the first n units, so prefix sums give every n at once.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from resjax import activations
from resjax.collapse import decoders, linalg

Array = jax.Array


def _metrics_at(x_PxD: Array, t_NxD: Array, d: Array, names: Sequence[str], n_Q: Array,
                solve: bool = True) -> tuple[Array, Array]:
  """(metrics [A, Q, len(METRICS)] of T_n (the first n rows of T_NxD) for each n in n_Q, left).

  left, solve: as `decoders.constrained_errors` gives and takes them.

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
  z_NxP = linalg.small(t_NxD, x_PxD.T)
  n_units = t_NxD.shape[0]
  first_QxN = jnp.arange(n_units)[None, :] < n_Q[:, None]
  pinv_QxDxN = linalg.pinv(jnp.where(first_QxN[:, :, None], t_NxD[None], 0.0))
  y_AxNxP = jnp.stack([act.fn(z_NxP) for act in specs])
  # T^+ given to every activation, not shared: each activation's T^+ y is then
  # a batched matmul whose output needs no transpose.
  pinv_AxQxDxN = jnp.broadcast_to(pinv_QxDxN, (len(specs),) + pinv_QxDxN.shape)
  err_AxQx2 = jax.vmap(_errors, (None, 0, 0, None))(x_PxD, pinv_AxQxDxN, y_AxNxP, total)
  on_RxNxP = jnp.stack([activations.Activation(None, None, False, r).active(z_NxP)
                        for r in regions])
  # Counts on duty of every prefix: a unit's rank among those on duty up to it.
  rank_RxNxP = decoders.unit_ranks(on_RxNxP)
  count_RxQxP = jnp.take(rank_RxNxP, n_Q - 1, axis=1)
  duty_RxQx4 = jax.vmap(_duty_stats, (0, None, None))(count_RxQxP, n_Q, d)
  # The decoders read y: act^-1(y) on the units on duty.
  on_AxNxP = on_RxNxP[r_A]
  safe = [act.fn(jnp.float32(0.5)) for act in specs]  # 0.5 is in every region
  zhat_AxNxP = jnp.stack([jnp.where(on_AxNxP[a], act.inverse(jnp.where(on_AxNxP[a], y, safe[a])),
                                    0.0) for a, (act, y) in enumerate(zip(specs, y_AxNxP))])
  a_AxPxJxD, zf_AxPxJ = jax.vmap(decoders.first_on, (None, 0, 0, 0, None))(
      t_NxD, on_AxNxP, rank_RxNxP[r_A], zhat_AxNxP, d)
  xs_AxPxJ1xD = jax.vmap(decoders.span_solutions)(a_AxPxJxD, zf_AxPxJ)
  sq_AxPxJ1 = jnp.sum((x_PxD[None, :, None] - xs_AxPxJ1xD) ** 2, -1)
  count_AxQxP = count_RxQxP[r_A]
  k_AxQxP = jnp.minimum(count_AxQxP, d)
  span_AxQxP = jnp.take_along_axis(jnp.swapaxes(sq_AxPxJ1, 1, 2), k_AxQxP, axis=1)
  con_AxQxP, left = span_AxQxP, jnp.zeros((), bool)
  bounded = [a for a, act in enumerate(specs) if act.region != (-math.inf, math.inf)]
  if bounded:
    sel = np.array(bounded)
    side_AxNxP, b_AxNxP = _silent_constraints([specs[a].region for a in bounded], z_NxP)
    con, left = decoders.constrained_errors(
        x_PxD, t_NxD, d, n_Q, count_AxQxP[sel], a_AxPxJxD[sel], xs_AxPxJ1xD[sel], side_AxNxP,
        b_AxNxP, span_AxQxP[sel], solve=solve)
    con_AxQxP = con_AxQxP.at[sel].set(con)
  dec_AxQx2 = jnp.stack([span_AxQxP.sum(-1), con_AxQxP.sum(-1)], -1) / total
  duty_AxQx4 = duty_RxQx4[r_A]
  linear_A = np.array([1.0 if act.identity_on_active else np.nan for act in specs], np.float32)
  duty_AxQx4 = duty_AxQx4.at[:, :, 3].multiply(linear_A[:, None])
  return jnp.concatenate([err_AxQx2, dec_AxQx2, duty_AxQx4], -1).astype(jnp.float32), left


def _silent_constraints(regions: Sequence[tuple[float, float]],
                        z_NxP: Array) -> tuple[Array, Array]:
  """Sides [A, N, P] (1 below the region, -1 above, 0 on duty) and bounds b of the silent units."""
  sides, bounds = [], []
  for lo, hi in regions:
    below, above = z_NxP <= lo, z_NxP >= hi
    sides.append(jnp.where(below, 1, jnp.where(above, -1, 0)).astype(jnp.float32))
    bounds.append(jnp.where(below, lo if lo > -math.inf else 0.0,
                            jnp.where(above, hi if hi < math.inf else 0.0, 0.0)))
  return jnp.stack(sides), jnp.stack(bounds)


def _duty_stats(count_QxP, n_Q, d):
  """Collapsed / dead / active / all-on fractions [Q, 4] from the counts on duty."""
  return jnp.stack([
      jnp.mean(count_QxP < d, axis=1), jnp.mean(count_QxP == 0, axis=1),
      jnp.mean(count_QxP, axis=1) / n_Q, jnp.mean(count_QxP == n_Q[:, None], axis=1)], -1)


def _errors(x_PxD, pinv_QxDxN, y_NxP, total):
  """pinv and refit errors [Q, 2] for every prefix from one activation's outputs.

  The decoded points are kept as [Q, D, P] (points minor): T_n^+ y for all n
  is then one matmul [Q*D, N] @ [N, P], with no transposes of [Q, P, D]
  tensors around it.
  """
  x_DxP = x_PxD.T
  u_QxDxP = jnp.einsum("ndi,ip->ndp", pinv_QxDxN, y_NxP, precision=linalg.HIGHEST)
  uu_QxDxD = jnp.einsum("ndp,nep->nde", u_QxDxP, u_QxDxP, precision=linalg.HIGHEST)
  ux_QxDxD = jnp.einsum("ndp,ep->nde", u_QxDxP, x_DxP, precision=linalg.HIGHEST)
  b_QxDxD = linalg.small(linalg.psd_pinv(uu_QxDxD), ux_QxDxD)
  fit_QxDxP = jnp.sum(b_QxDxD[..., :, :, None] * u_QxDxP[..., :, None, :], axis=-3)
  return jnp.stack([
      jnp.sum((x_DxP - u_QxDxP) ** 2, axis=(1, 2)) / total,
      jnp.sum((x_DxP - fit_QxDxP) ** 2, axis=(1, 2)) / total], -1)


def prefix_metrics(x_PxD: Array, t_NxD: Array, d: Array, names: Sequence[str], *,
                   solve: bool = True) -> tuple[Array, Array]:
  """(metrics [A, N, len(METRICS)] for every n = 1..N, T_n being the first n rows of T_NxD,
  left): as `decoders.constrained_errors` gives left and takes solve."""
  return _metrics_at(x_PxD, t_NxD, d, names, jnp.arange(1, t_NxD.shape[0] + 1), solve)


def cell_metrics(x_PxD: Array, t_NxD: Array, n: Array, d: Array,
                 names: Sequence[str]) -> Array:
  """Metrics [A, len(METRICS)] of one cell: T_n is the first n rows of T_NxD (n traced).

  The per-cell counterpart of `prefix_metrics` (and the per-n baseline of the
  benchmark); rows of T past n and columns past d may be zero padding.
  """
  return _metrics_at(x_PxD, t_NxD, d, names, jnp.reshape(n, (1,)).astype(jnp.int32))[0][:, 0]
