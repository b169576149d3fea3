"""The float64 NumPy reference: each decoder straight from its definition, one cell at a time.

No padding, no prefixes, no batching: what the compiled sweep is tested
against (tests/test_collapse.py), and what draws the figure's Fig. 1 panels.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax
import numpy as np
from scipy import special

from resjax import activations, manifolds
from resjax.collapse import decoders, embedding, linalg
from resjax.collapse import spec as spec_lib

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
  u_PxD = NUMPY_FNS[activation](z_PxN) @ np.linalg.pinv(t_NxD, rcond=linalg.PINV_RTOL).T
  b_DxD = np.linalg.lstsq(u_PxD, x_PxD, rcond=math.sqrt(linalg.GRAM_RTOL))[0]
  lo, hi = activations.get(activation).region
  on_PxN = (z_PxN > lo) & (z_PxN < hi)
  # Span: least squares on each point's on-duty rows, T_S^+ z_S.
  rows_PxNxD = on_PxN[:, :, None] * t_NxD[None]
  span_PxD = np.einsum("pdn,pn->pd", np.linalg.pinv(rows_PxNxD, rcond=linalg.PINV_RTOL),
                       z_PxN * on_PxN)
  out = {"pinv": u_PxD, "refit": u_PxD @ b_DxD, "span": span_PxD, "on_duty": on_PxN}
  if constrained:
    con_PxD = span_PxD.copy()
    d = t_NxD.shape[1]
    for i in np.flatnonzero(on_PxN.sum(1) < d):
      below, above = z_PxN[i] <= lo, z_PxN[i] >= hi
      g = np.vstack([t_NxD[below], -t_NxD[above]])
      h = np.concatenate([np.full(below.sum(), lo), np.full(above.sum(), -hi)])
      con_PxD[i] = decoders.least_norm_qp(t_NxD[on_PxN[i]], z_PxN[i, on_PxN[i]], g, h)
    out["constrained"] = con_PxD
  return out


def reference_metrics(x_PxD: np.ndarray, t_NxD: np.ndarray, activation: str) -> np.ndarray:
  """The METRICS of one cell from `recover` (NumPy, float64, unpadded)."""
  rec = recover(x_PxD, t_NxD, activation)
  x_PxD = np.asarray(x_PxD, np.float64)
  n, d = np.shape(t_NxD)
  total = np.sum(x_PxD ** 2)
  count_P = rec["on_duty"].sum(1)
  return np.array([*(np.sum((x_PxD - rec[e]) ** 2) / total for e in spec_lib.ERRORS),
                   np.mean(count_P < d), np.mean(count_P == 0), np.mean(count_P) / n,
                   np.mean(count_P == n) if activations.get(activation).identity_on_active
                   else np.nan])


def figure_recoveries(spec: spec_lib.SweepSpec, activation: str, dims: Sequence[int],
                      seed_index: int = 0, constrained: bool = True,
                      t_NxD: Optional[np.ndarray] = None) -> dict[str, Any]:
  """Input cloud (first manifold dim) and its recoveries at `dims` with the sweep's T.

  `constrained=False` leaves out the constrained decoder (an NNLS per point,
  and SciPy's optimize to import), which the sweep's figure does not draw.
  `t_NxD`: that T as the sweep drew it (its `first_draw`, seed index 0; zero
  padded), which spares drawing it again (a compile); ignored when it has
  fewer than max(dims) rows.
  """
  d = spec.ds[0]
  x_PxD = manifolds.sample(spec.manifold, spec.points, d, seed=spec.seed, turns=spec.turns,
                           scale=spec.scale)
  if t_NxD is not None and seed_index == 0 and len(t_NxD) >= max(dims):
    t_NxD = np.asarray(t_NxD)[:max(dims), :d]
  else:  # Key and draw in one program: one trace and compile, not one per random op.
    draw = jax.jit(lambda seed, s: embedding.draw_embedding(
        embedding.embedding_key(seed, s, d), max(dims), d))
    t_NxD = np.asarray(draw(np.uint32(spec.seed), np.int32(seed_index)))
  total = float(np.sum(x_PxD.astype(np.float64) ** 2))
  panels = []
  for n in dims:
    rec = recover(x_PxD, t_NxD[:n], activation, constrained)  # T_n: the first n rows
    rec.update(n=n, **{f"{e}_error": float(np.sum((x_PxD - rec[e]) ** 2) / total)
                       for e in spec_lib.ERRORS if e in rec})
    panels.append(rec)
  return {"x": x_PxD, "activation": activation, "panels": panels}

