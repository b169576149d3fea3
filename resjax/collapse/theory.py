"""The Binomial theory beside the measurements: collapse, dead and linear odds, span error.

A unit's pre-activation T_i x ~ N(0, |x|^2), so it is on duty with
probability p(x) = P(lo < N(0, |x|^2) < hi) for the activation's region
(lo, hi), and the point collapses with probability P(Binomial(n, p(x)) < d);
for ReLU p = 1/2. Float64 NumPy on the sweep's points, no draws of T.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import special

from resjax import activations
from resjax.collapse import spec as spec_lib


def _binom_cdf(k: int, n: np.ndarray, p: np.ndarray) -> np.ndarray:
  """P(Binomial(n, p) <= k), elementwise."""
  if k < 0:
    return np.zeros(np.shape(n))
  n = np.asarray(n, np.int64)
  return np.where(k >= n, 1.0, special.bdtr(k, np.maximum(n, k + 1), p))


def predict(x_KxPxD: np.ndarray, ds: Sequence[int], names: Sequence[str],
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
  out = {key: np.zeros((len(ds), len(names), len(dims))) for key in spec_lib.THEORY}
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

