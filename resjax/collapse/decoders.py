"""The decoders that read y = act(T x): span solutions and the constrained least-norm QP.

The span decoder solves act^-1(y_i) = T_i x on the units on duty (least
norm); the constrained decoder also enforces the silent units' constraints
(T_i x <= lo below the region, >= hi above it), a QP per point. `min_norm_qp`
solves those QPs in JAX at static shapes, where `constrained_errors` finds
no shorter way (most have none to solve, or one free direction: a closed
form); `least_norm_qp` is its float64 NumPy twin (an exact NNLS), the
reference the tests hold them to.

QP_STEPS: at most that many active-set steps per unit of d_max (each adds or
drops one constraint; tests/test_collapse.py checks the result against
scipy.optimize.nnls). QP_TOL: a constraint counts as violated beyond that
fraction of its scale. QP_BATCH: up to QP_BATCH * d_max QPs per point and
activation are solved at a time. QP_WINDOW: prefixes of up to that many units
per unit of d_max are decoded without `min_norm_qp` where they can be (past
them, fewer than d units on duty is rare: under 1e-8 of ReLU points at d = 2).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from resjax.collapse import linalg

Array = jax.Array

QP_STEPS = 4
QP_TOL = 1e-5
QP_BATCH = 1
QP_WINDOW = 16


def unit_ranks(on_NxP: Array) -> Array:
  """Each unit's rank among the units on duty up to it, inclusive, [N, P] (int32).

  Row n - 1 is the count on duty among the first n units. A matmul with a
  triangle of ones: exact in float32 up to 2^24 units.
  """
  n_units = on_NxP.shape[-2]
  upto_NxN = (jnp.arange(n_units)[None, :] <= jnp.arange(n_units)[:, None]).astype(jnp.float32)
  return linalg.mm(upto_NxN, on_NxP.astype(jnp.float32)).astype(jnp.int32)


def first_on(t_NxD: Array, on_NxP: Array, rank_NxP: Array, zhat_NxP: Array,
             d: Array) -> tuple[Array, Array]:
  """Rows a_PxJxD and decoded pre-activations zf_PxJ of each point's first d units on duty.

  J = d_max; slots past d or past the point's count stay zero. With fewer than
  d on duty these are all of them, which is when the decoders lose anything.
  rank_NxP: `unit_ranks(on_NxP)`; slot j gathers the unit of rank j + 1.
  (One-hot products over the unit axis made XLA transpose [J, N, P] tensors:
  a sixth of the default sweep's run on a CPU.)
  """
  n_units, d_max = t_NxD.shape
  slot_J = jnp.arange(d_max)
  pick_JxNxP = (on_NxP[None] & (rank_NxP[None] == slot_J[:, None, None] + 1)
                & (slot_J < d)[:, None, None])
  unit_JxP = jnp.sum(jnp.where(pick_JxNxP, jnp.arange(n_units)[:, None], 0), axis=1)
  hit_PxJ = jnp.any(pick_JxNxP, axis=1).T
  a_PxJxD = jnp.where(hit_PxJ[..., None], t_NxD[unit_JxP.T], 0.0)
  zf_PxJ = jnp.where(hit_PxJ, jnp.take_along_axis(zhat_NxP, unit_JxP, axis=0).T, 0.0)
  return a_PxJxD, zf_PxJ


def span_solutions(a_PxJxD: Array, zf_PxJ: Array) -> Array:
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
      v_PxD = v_PxD - linalg.dot(q_PxD, v_PxD)[:, None] * q_PxD
    norm_P = jnp.linalg.norm(v_PxD, axis=-1)
    ok_P = norm_P > linalg.GS_RTOL * jnp.linalg.norm(a_PxD, axis=-1)
    safe_P = jnp.where(ok_P, norm_P, 1.0)
    q_PxD = jnp.where(ok_P[:, None], v_PxD / safe_P[:, None], 0.0)
    step_P = jnp.where(ok_P, (zf_PxJ[:, j] - linalg.dot(a_PxD, x_PxD)) / safe_P, 0.0)
    x_PxD = x_PxD + step_P[:, None] * q_PxD
    basis.append(q_PxD)
    out.append(x_PxD)
  return jnp.stack(out, 1)


def slot_basis(nrm_MxSxD: Array) -> tuple[list[Array], list[list[Array]]]:
  """Modified Gram-Schmidt of the S slot normals: orthonormal u_j and n_j = sum_l L[j][l] u_l."""
  us, coef = [], []
  for j in range(nrm_MxSxD.shape[1]):
    v = nrm_MxSxD[:, j]
    row = []
    for u in us:
      c = linalg.dot(u, v)
      v = v - c[:, None] * u
      row.append(c)
    norm = jnp.linalg.norm(v, axis=-1)
    ok = norm > linalg.GS_RTOL * jnp.linalg.norm(nrm_MxSxD[:, j], axis=-1)
    us.append(jnp.where(ok[:, None], v / jnp.where(ok, norm, 1.0)[:, None], 0.0))
    row.append(jnp.where(ok, norm, 0.0))
    coef.append(row)
  return us, coef


def _violation_tol(tnorm: Array, xnorm: Array, bscale: Array) -> Array:
  """How far past its bound T_i x may lie before a constraint counts as violated:
  QP_TOL of its scale |T_i| |x| + |b_i| (one rule for the solver and the shortcuts)."""
  return QP_TOL * (tnorm * xnorm + bscale)


def min_norm_qp(x0_MxD, nrm_MxSxD, kind_MxS, t_NxD, side_MxN, b_MxN, valid_MxN, done_M,
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
    us, coef = slot_basis(nrm * (kind > 0)[..., None])
    # A new constraint to add where the last step finished one.
    s_MxN = side_MxN * (linalg.mm(x, t_NxD.T) - b_MxN)  # > 0: violated
    tol_MxN = _violation_tol(tnorm_N, jnp.linalg.norm(x, axis=-1, keepdims=True), bscale_MxN)
    # (Active constraints hold with equality, so they are never picked again.)
    score = jnp.where(valid_MxN & (s_MxN > tol_MxN), s_MxN / tnorm_N, -jnp.inf)
    # argmax as two plain reductions (the first index of the max, as argmax
    # gives): XLA's CPU backend runs a value-and-index reduction far slower.
    worst = jnp.max(score, -1)
    pick = jnp.min(jnp.where(score == worst[:, None], jnp.arange(score.shape[-1]),
                             score.shape[-1]), -1)
    fresh = p < 0
    done = done | (fresh & (worst == -jnp.inf))
    p = jnp.where(fresh, pick, p)
    sgn = -side_MxN[m_idx, p]
    n_p = sgn[:, None] * t_NxD[p]  # the constraint as n_p . x >= c_p
    c_p = sgn * b_MxN[m_idx, p]
    # Step direction z (null space of the active normals) and the change r of
    # the active multipliers per unit of the new one: L^T r = U n_p.
    gamma = [linalg.dot(u, n_p) for u in us]
    z = n_p - sum(g[:, None] * u for g, u in zip(gamma, us))
    s_slots = len(us)
    r = [None] * s_slots
    for j in reversed(range(s_slots)):
      acc = gamma[j] - sum(coef[l][j] * r[l] for l in range(j + 1, s_slots))
      r[j] = jnp.where(coef[j][j] > 0, acc / jnp.where(coef[j][j] > 0, coef[j][j], 1.0), 0.0)
    r = jnp.stack(r, -1)
    ratio = jnp.where((kind == 2) & (r > 1e-7), lam / jnp.where(r > 1e-7, r, 1.0), jnp.inf)
    t1, drop = jnp.min(ratio, -1), jnp.argmin(ratio, -1)
    zz = linalg.dot(z, n_p)
    moves = zz > 1e-10 * linalg.dot(n_p, n_p)
    t2 = jnp.where(moves, (c_p - linalg.dot(n_p, x)) / jnp.where(moves, zz, 1.0), jnp.inf)
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


def _null_direction(a_XxJxD: Array, d: Array) -> tuple[Array, Array]:
  """A unit v_XxD orthogonal to the rows in slots < d - 1, within the first d coordinates.

  ok_X where those d - 1 rows are independent: the solutions of their
  equations in R^d are then the line x0 + t v. v is the largest projection
  of a coordinate axis e_j (j < d) off the rows' span (its squared norm is at
  least 1/d).
  """
  lead, (slots, d_max) = a_XxJxD.shape[:-2], a_XxJxD.shape[-2:]
  rows = jnp.where((jnp.arange(slots) < d - 1)[:, None], a_XxJxD, 0.0)
  us, coef = slot_basis(rows.reshape(-1, slots, d_max))
  rank = sum((c[-1] > 0).astype(jnp.int32) for c in coef)
  proj_XxDxD = jnp.eye(d_max) - sum(u[..., :, None] * u[..., None, :] for u in us)
  left_XxD = jnp.where(jnp.arange(d_max) < d, jnp.diagonal(proj_XxDxD, axis1=-2, axis2=-1),
                       -1.0)
  j = jnp.argmax(left_XxD, -1)
  v = jnp.take_along_axis(proj_XxDxD, j[..., None, None], axis=-1)[..., 0]
  v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
  return v.reshape(*lead, d_max), (rank == d - 1).reshape(lead)


def _line_errors(x_PxD, t_WxD, d, n_Q, a_AxPxJxD, xs_AxPxJ1xD, side_AxWxP, s0_AxWxP):
  """(errors [A, Q, P], ok [A, P]) of the QPs with one free direction, every prefix at once.

  With d - 1 independent equations (ok) the solutions are x0 + t v (x0 the
  span solution, v `_null_direction`), and ||x||^2 = ||x0||^2 + t^2. Each
  silent unit bounds t from one side; the bounds of the first n units are
  running minima and maxima over the unit axis, and the least-norm t of
  prefix n is 0 clipped to them: no iterations. Only the W units given are
  read (a prefix past them gets their bounds). s0: x0's slack in each unit's
  constraint (`_slack` at slot d - 1).
  """
  width = t_WxD.shape[0]
  v_AxPxD, ok_AxP = _null_direction(a_AxPxJxD, d)
  x0_AxPxD = jnp.take(xs_AxPxJ1xD, d - 1, axis=2)
  gv_AxWxP = side_AxWxP * jnp.einsum("nd,apd->anp", t_WxD, v_AxPxD, precision=linalg.HIGHEST)
  bound_AxWxP = -s0_AxWxP / jnp.where(gv_AxWxP != 0, gv_AxWxP, 1.0)
  # The upper bounds and the negated lower ones, running minima in one
  # log-depth scan (XLA's CPU backend runs lax.cummin as a windowed
  # reduction, quadratic in the window).
  up_2xAxWxP = jnp.stack([jnp.where(gv_AxWxP > 0, bound_AxWxP, jnp.inf),
                          jnp.where(gv_AxWxP < 0, -bound_AxWxP, jnp.inf)])
  up_2xAxWxP = jax.lax.associative_scan(jnp.minimum, up_2xAxWxP, axis=2)
  at_Q = jnp.minimum(n_Q, width) - 1
  t_AxQxP = jnp.minimum(jnp.maximum(-up_2xAxWxP[1][:, at_Q], 0.0), up_2xAxWxP[0][:, at_Q])
  # ||x - x0 - t v||^2 = ||e_perp||^2 + (e . v - t)^2, e = x - x0 split along v.
  e_AxPxD = x_PxD[None] - x0_AxPxD
  ev_AxP = linalg.dot(e_AxPxD, v_AxPxD)
  perp_AxP = jnp.sum((e_AxPxD - ev_AxP[..., None] * v_AxPxD) ** 2, -1)
  return perp_AxP[:, None] + (ev_AxP[:, None] - t_AxQxP) ** 2, ok_AxP


def _slack(t_WxD, xs_AxPxJxD, side_AxWxP, b_AxWxP):
  """side_i (T_i x - b_i) [A, J, W, P]: each span solution x's slack in each unit's
  constraint (> 0: broken)."""
  z_AxJxWxP = jnp.einsum("nd,apjd->ajnp", t_WxD, xs_AxPxJxD, precision=linalg.HIGHEST)
  return side_AxWxP[:, None] * (z_AxJxWxP - b_AxWxP[:, None])


def _first_violated(t_WxD, xs_AxPxJxD, b_AxWxP, s_AxJxWxP):
  """The first silent unit each span solution violates [A, J, P] (W where none).

  A QP whose prefix ends before that unit is solved by its span solution.
  """
  width = t_WxD.shape[0]
  xnorm_AxJxP = jnp.swapaxes(jnp.linalg.norm(xs_AxPxJxD, axis=-1), 1, 2)
  tol = _violation_tol(jnp.linalg.norm(t_WxD, axis=-1)[:, None], xnorm_AxJxP[:, :, None],
                       jnp.abs(b_AxWxP)[:, None])
  return jnp.min(jnp.where(s_AxJxWxP > tol, jnp.arange(width)[:, None], width), 2)


def constrained_errors(x_PxD, t_NxD, d, n_Q, count_AxQxP, a_AxPxJxD, xs_AxPxJ1xD, side_AxNxP,
                       b_AxNxP, span_AxQxP, *, solve: bool = True):
  """(squared errors [A, Q, P] of the constrained decoder at the prefixes n_Q, left).

  Equal to the span decoder's where d units are on duty (the equations fix
  x), where none is silent, or where the span solution already meets the
  silent units' constraints. Within the first QP_WINDOW * d_max units (W):
  a prefix whose span solution breaks none of its units' constraints is
  found solved (`_first_violated`), and a QP with one free direction (d - 1
  independent equations) is solved in closed form for every prefix at once
  (`_line_errors`). The others (fewer than d - 1 equations and a broken
  constraint, or prefixes past W with fewer than d units on duty, which are
  rare) go to `min_norm_qp`, gathered from all activations together,
  QP_BATCH * d_max * A * P at a time, for as long as any is left: often
  none, and the loop never runs. left says whether any was left (it may
  say so where none was; never the other way). With solve=False the
  program holds no `min_norm_qp` (it compiles in about half the time) and
  those QPs keep the span decoder's error: where left is set, the errors
  are not the constrained decoder's. n_Q must be strictly increasing (all
  prefixes 1..N, or a single n): then only its first W entries can lie
  within W units.
  """
  q_all = count_AxQxP.shape[1]
  n_units, d_max = t_NxD.shape
  width = min(n_units, QP_WINDOW * d_max)
  near = min(q_all, width)  # n_Q increasing: prefixes past the first W are past W units.
  t_WxD, side_AxWxP, b_AxWxP = t_NxD[:width], side_AxNxP[:, :width], b_AxNxP[:, :width]
  count_AxVxP, n_V = count_AxQxP[:, :near], n_Q[:near]
  s_AxJxWxP = _slack(t_WxD, xs_AxPxJ1xD[:, :, :d_max], side_AxWxP, b_AxWxP)
  first_AxJxP = _first_violated(t_WxD, xs_AxPxJ1xD[:, :, :d_max], b_AxWxP, s_AxJxWxP)
  line_AxVxP, ok_AxP = _line_errors(x_PxD, t_WxD, d, n_V, a_AxPxJxD, xs_AxPxJ1xD, side_AxWxP,
                                    jnp.take(s_AxJxWxP, d - 1, axis=1))
  inside = (n_V <= width)[:, None]
  need = (count_AxVxP < d) & (count_AxVxP < n_V[:, None])
  line = need & inside & (count_AxVxP == d - 1) & ok_AxP[:, None]
  out_AxQxP = jnp.concatenate(
      [jnp.where(line, line_AxVxP, span_AxQxP[:, :near]), span_AxQxP[:, near:]], 1)
  far_AxQxP = count_AxQxP[:, near:]
  far = (far_AxQxP < d) & (far_AxQxP < n_Q[near:][:, None])

  def left_mask():
    """The QPs left to `min_norm_qp` [A, Q, P]."""
    solved = inside & (n_V[:, None] <= jnp.take_along_axis(
        first_AxJxP, jnp.minimum(count_AxVxP, d_max - 1), axis=1))
    return jnp.concatenate([need & ~line & ~solved, far], 1)

  # Whether any is left, without that mask (a gather per QP of a reduction
  # over the units, which XLA fuses and redoes per prefix): per slot k, the
  # last prefix with k units on duty against the span solution's first broken
  # constraint. (It may say yes where none is left; never the other way.)
  any_left = jnp.any(need & ~inside) | jnp.any(far)
  for k in range(d_max):
    last_AxP = jnp.max(jnp.where((count_AxVxP == k) & need & inside, n_V[:, None], 0), 1)
    open_AxP = (k < d - 1) | ~ok_AxP
    any_left |= jnp.any(open_AxP & (last_AxP > first_AxJxP[:, k]))
  if not solve:
    return out_AxQxP, any_left
  return jax.lax.cond(any_left, lambda out: _solve_left(
      x_PxD, t_NxD, d, n_Q, count_AxQxP, a_AxPxJxD, xs_AxPxJ1xD, side_AxNxP, b_AxNxP,
      left_mask(), out), lambda out: out, out_AxQxP), any_left


def _solve_left(x_PxD, t_NxD, d, n_Q, count_AxQxP, a_AxPxJxD, xs_AxPxJ1xD, side_AxNxP, b_AxNxP,
                left_AxQxP, out_AxQxP):
  """out_AxQxP where the QPs of left_AxQxP are solved by `min_norm_qp`, in batches."""
  n_act, q_all, p = count_AxQxP.shape
  n_units, d_max = t_NxD.shape
  size = n_act * q_all * p
  cap = int(min(size, QP_BATCH * d_max * n_act * p))
  count_F = count_AxQxP.reshape(-1)
  slot_S = jnp.arange(d_max)

  def body(state):
    # The running count of the QPs left (a binary search in it finds the
    # j-th) is built from the loop's state, so it is not hoisted out of it.
    left_F, out_F = state
    upto_F = jnp.cumsum(left_F.astype(jnp.int32))
    live_M = jnp.arange(cap) < upto_F[-1]
    idx_M = jnp.minimum(jnp.searchsorted(upto_F, jnp.arange(cap) + 1), size - 1)
    a_M, q_M, p_M = idx_M // (q_all * p), idx_M // p % q_all, idx_M % p
    k_M = jnp.minimum(count_F[idx_M], d)
    eq_MxS = slot_S < k_M[:, None]
    side_MxN = side_AxNxP[a_M, :, p_M]
    valid_MxN = (side_MxN != 0) & (jnp.arange(n_units) < n_Q[q_M][:, None])
    x_MxD = min_norm_qp(xs_AxPxJ1xD[a_M, p_M, k_M],
                        jnp.where(eq_MxS[..., None], a_AxPxJxD[a_M, p_M], 0.0),
                        eq_MxS.astype(jnp.int32), t_NxD, side_MxN, b_AxNxP[a_M, :, p_M],
                        valid_MxN, ~live_M, QP_STEPS * d_max)
    sq_M = jnp.sum((x_PxD[p_M] - x_MxD) ** 2, -1)
    out_F = out_F.at[jnp.where(live_M, idx_M, size)].set(sq_M, mode="drop")
    return left_F & (upto_F > cap), out_F

  out_F = jax.lax.while_loop(lambda s: jnp.any(s[0]), body,
                             (left_AxQxP.reshape(-1), out_AxQxP.reshape(-1)))[1]
  return out_F.reshape(n_act, q_all, p)


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
  # Imported here: SciPy's optimize costs 0.2 s to import, and only this float64
  # reference needs it (the sweep runs it on a worker thread, `collapse.job`).
  from scipy import optimize  # pylint: disable=import-outside-toplevel
  u, _ = optimize.nnls(e, f, maxiter=50 * e.shape[1])
  res = e @ u - f
  w = -res[:-1] / res[-1] if abs(res[-1]) > 1e-300 else np.zeros(v_DxW.shape[1])
  return x_a + v_DxW @ w
