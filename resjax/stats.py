"""Every interval and test the project reports, in one place.

All intervals are two-sided at `confidence` (95% by default) and come as
(estimate, lo, hi). Functions that take per-seed values reduce over the last
axis and drop non-finite entries (a metric that is NaN for some seeds uses the
rest); a 1-D input gives Python floats, a larger one arrays over the leading
axes. Too few values for an interval give NaN bounds.

  mean_ci          mean and Student-t interval (optionally clipped to a range)
  geo_mean_ci      geometric mean, t-interval of the logs (positive values)
  wilson           proportion of independent trials, Wilson score interval
  cluster_wilson   mean of per-seed fractions, seeds as clusters: Wilson score
                   interval on the pooled fraction with an effective sample
                   size from the spread between seeds (good in the tails, where
                   the t-interval is not; tests/test_stats.py checks coverage)
  bootstrap_ci     percentile bootstrap over seeds (seed_bootstrap_ci: of the
                   mean of per-seed values)
  median_ci        the median's distribution-free order-statistic interval
  paired           paired contrast: mean difference, t-interval, p-value
  detectable       the smallest mean difference a paired t-test of n pairs
                   with a given SD detects with a given power (noncentral t)
  pairs_needed     the fewest pairs whose detectable difference is at most a
                   given effect (the seeds a design needs)
  paired_sd        the SD of paired differences behind a reported t-interval
  holm             Holm's step-down correction for a family of p-values

Quantiles come from `scipy.special` (cheap to import); tests check every
formula against `scipy.stats`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import numpy as np
from scipy import special

ArrayLike = Any  # a sequence or array of floats


def _quantile(confidence: float) -> float:
  return float(special.ndtri(0.5 + confidence / 2))


def _t_quantile(df, confidence: float):
  """Student-t quantile for two-sided `confidence`; NaN for df < 1."""
  df = np.asarray(df, np.float64)
  with np.errstate(invalid="ignore"):
    return np.where(df >= 1, special.stdtrit(np.maximum(df, 1), 0.5 + confidence / 2), np.nan)


def _out(*arrays):
  """Python floats for 0-d results, arrays otherwise."""
  return tuple(float(a) if np.ndim(a) == 0 else np.asarray(a, np.float64) for a in arrays)


def _moments(v: ArrayLike):
  """Count, mean and sample variance over the last axis of the finite entries."""
  v = np.asarray(v, np.float64)
  ok = np.isfinite(v)
  n = ok.sum(-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean = np.where(ok, v, 0.0).sum(-1) / n
    dev = np.where(ok, v - np.expand_dims(mean, -1), 0.0)
    var = (dev * dev).sum(-1) / (n - 1)
  return n, mean, np.where(n >= 2, var, np.nan)


def mean_ci(v: ArrayLike, confidence: float = 0.95,
            bounds: Optional[tuple[float, float]] = None):
  """Mean and t-interval over the last axis; `bounds` clips the interval to a range."""
  n, mean, var = _moments(v)
  with np.errstate(invalid="ignore"):
    half = _t_quantile(n - 1, confidence) * np.sqrt(var / n)
  lo, hi = mean - half, mean + half
  if bounds is not None:
    lo, hi = np.clip(lo, *bounds), np.clip(hi, *bounds)  # NaN stays NaN
  return _out(mean, lo, hi)


def geo_mean_ci(v: ArrayLike, confidence: float = 0.95, floor: float = 1e-300):
  """Geometric mean and its interval: a t-interval of the logs (values below `floor` floored)."""
  v = np.asarray(v, np.float64)
  with np.errstate(invalid="ignore"):
    logs = np.where(np.isnan(v), np.nan, np.log(np.maximum(v, floor)))
  return _out(*np.exp(np.asarray(mean_ci(logs, confidence), np.float64)))


def _wilson_bounds(p, n, q):
  """Wilson score bounds for proportion p of n trials (n may be fractional), quantile q."""
  with np.errstate(invalid="ignore", divide="ignore"):
    q2n = q * q / n
    centre = (p + q2n / 2) / (1 + q2n)
    half = q * np.sqrt(p * (1 - p) / n + q2n / (4 * n)) / (1 + q2n)
  lo = np.clip(np.minimum(centre - half, p), 0.0, 1.0)
  hi = np.clip(np.maximum(centre + half, p), 0.0, 1.0)
  return lo, hi


def wilson(successes: ArrayLike, n: ArrayLike, confidence: float = 0.95):
  """Proportion successes / n of independent trials and its Wilson score interval."""
  k, n = np.asarray(successes, np.float64), np.asarray(n, np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    p = np.where(n > 0, k / np.where(n > 0, n, 1), np.nan)
  lo, hi = _wilson_bounds(p, n, _quantile(confidence))
  return _out(p, lo, hi)


def cluster_wilson(frac_S: ArrayLike, size: Optional[float] = None, confidence: float = 0.95):
  """Mean of per-seed fractions in [0, 1] with an interval that treats seeds as clusters.

  Each seed contributes `size` correlated trials (e.g. the points of one draw
  of T). The pooled fraction p is the mean over the S seeds and its standard
  error se = sd / sqrt(S) is taken from the spread between seeds; the Binomial
  sample with that variance has n_eff = p(1 - p) / se^2 trials (all trials
  over the design effect), kept within [S, S * size]: a design effect between
  1 and the cluster size. When it cannot be estimated (p = 0 or 1: every seed
  at the same bound) n_eff = S, each seed one trial, so all-zero seeds still
  give an upper bound (about t^2 / (S + t^2): 0.41 for 8 seeds, 0.059 for 64).
  The interval is the Wilson score interval on (p, n_eff) with a Student-t
  quantile (as Korn & Graubard 1998 do for survey proportions) whose degrees
  of freedom are Satterthwaite's for the sample variance,
  2 (sum w)^2 / sum (w - mean w)^2 with w the squared deviations, kept within
  [1, S - 1]: S - 1 or near it for Gaussian-like values, about twice the
  number of non-zero seeds when most seeds are 0, so a tail fraction seen in
  one or two seeds gets the wide interval it needs. It needs S >= 2.
  """
  f = np.asarray(frac_S, np.float64)
  n, p, var = _moments(f)
  with np.errstate(invalid="ignore", divide="ignore"):
    w = np.where(np.isfinite(f), f - np.expand_dims(p, -1), 0.0) ** 2
    w_bar = w.sum(-1) / n
    spread = np.where(np.isfinite(f), w - np.expand_dims(w_bar, -1), 0.0) ** 2
    df = np.clip(np.where(spread.sum(-1) > 0, 2 * (n * w_bar) ** 2 / spread.sum(-1), n - 1),
                 1, n - 1)
    n_eff = np.where(var > 0, p * (1 - p) / (var / n), np.inf)
    cap = n * size if size is not None else np.inf
    n_eff = np.clip(n_eff, n, cap)
    n_eff = np.where((p <= 0) | (p >= 1), n, n_eff)
  lo, hi = _wilson_bounds(np.clip(p, 0.0, 1.0), n_eff, _t_quantile(df, confidence))
  return _out(p, np.where(n >= 2, lo, np.nan), np.where(n >= 2, hi, np.nan))


def bootstrap_ci(v: Sequence[float], statistic: Callable[..., Any] = np.median,
                 confidence: float = 0.95, draws: int = 2000, seed: int = 0):
  """Statistic of 1-D values and its percentile-bootstrap interval (inf values allowed).

  `statistic(x, axis=1)` is applied to `draws` resamples with replacement;
  the bounds are resampled values' quantiles by the 'nearest' rule, so a
  statistic that is inf in some resamples (e.g. "never reached") keeps inf.
  """
  v = np.asarray(v, np.float64).ravel()
  v = v[~np.isnan(v)]
  if v.size == 0:
    return math.nan, math.nan, math.nan
  rng = np.random.default_rng(seed)
  boot = statistic(rng.choice(v, size=(draws, v.size), replace=True), axis=1)
  alpha = (1 - confidence) / 2
  lo, hi = np.quantile(boot, [alpha, 1 - alpha], method="nearest")
  return float(statistic(v[None], axis=1)[0]), float(lo), float(hi)


def median_ci(v: Sequence[float], confidence: float = 0.95):
  """Median and its distribution-free interval [x_(k), x_(n+1-k)] of the sorted
  values, k the largest with 1 - 2 P(Binomial(n, 1/2) < k) >= `confidence`;
  NaN bounds where even [min, max] falls short (n < 6 at 95%: [min, max] of 3
  values holds the median with probability 0.75). inf (e.g. a target not
  reached) is allowed; NaN values are dropped."""
  v = np.sort(np.asarray(v, np.float64).ravel())
  v = v[~np.isnan(v)]
  n = v.size
  if n == 0:
    return math.nan, math.nan, math.nan
  k = 0  # Coverage of [x_(k), x_(n+1-k)] is 1 - 2 bdtr(k - 1, n, 1/2).
  while k + 1 <= (n + 1) // 2 and 1 - 2 * special.bdtr(k, n, 0.5) >= confidence:
    k += 1
  if k == 0:
    return float(np.median(v)), math.nan, math.nan
  return float(np.median(v)), float(v[k - 1]), float(v[n - k])


def seed_bootstrap_ci(v_S: Sequence[float], seed: int = 0, draws: int = 2000,
                      confidence: float = 0.95):
  """Mean of per-seed values and its seed-level (cluster) percentile-bootstrap interval."""
  return bootstrap_ci(v_S, np.mean, confidence, draws, seed)


def t_test_p(v: ArrayLike):
  """Two-sided p-value of the one-sample t-test of mean 0 over the last axis (finite values)."""
  n, mean, var = _moments(v)
  with np.errstate(invalid="ignore", divide="ignore"):
    t = mean / np.sqrt(var / n)
    p = np.where(var > 0, 2 * special.stdtr(np.maximum(n - 1, 1), -np.abs(t)),
                 np.where(mean == 0, 1.0, 0.0))
  p = np.where(n >= 2, p, np.nan)
  return float(p) if np.ndim(p) == 0 else p


# Paired differences within SAME x the largest |value| (at least 1) of one
# another count as equal (`paired`).
SAME = 1e-9


def fisher_ci(r: float, se: float, confidence: float = 0.95) -> tuple[float, float]:
  """Interval of a correlation r from Fisher's z = atanh(r) with standard error
  `se`: 1 / sqrt(n - 3) for Pearson's r of n pairs (n - q - 3 with q variables
  partialled out), sqrt(1.06 / (n - 3)) for Spearman's rho (Fieller, Hartley and
  Pearson 1957). NaN bounds where r or se is not finite."""
  if not (math.isfinite(r) and math.isfinite(se) and se > 0):
    return float("nan"), float("nan")
  z, half = math.atanh(max(min(r, 1 - 1e-15), -1 + 1e-15)), _quantile(confidence) * se
  return math.tanh(z - half), math.tanh(z + half)


def sign_test_p(n: int) -> float:
  """Two-sided p of the exact sign test when all `n` nonzero paired differences
  share one sign: 2^(1-n) (1 for n < 1)."""
  return 1.0 if n < 1 else min(1.0, 2.0 ** (1 - n))


def paired(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
  """Paired contrast of a - b (aligned by seed; pairs with a non-finite value are dropped).

  Returns the mean difference with its t-interval, the number of pairs, the
  t-test p-value, whether the interval excludes 0, the SD of the differences
  ('sd'; exactly 0 where they are all equal) and 'test' ('t').

  Where every pair differs by the same nonzero amount d, up to rounding
  (`SAME`; discrete metrics such as accuracies on a small test set make that
  likely with few pairs), the t-interval has no width and its p is 0, which
  says more than n pairs can.
  The exact sign test stands in ('test': 'sign'): p = 2^(1-n), and the
  interval is [d, d], the order-statistic interval of the median, whose
  confidence 1 - 2^(1-n) must reach `confidence` (n >= 6 at 95%); below that
  the interval is NaN and excludes nothing.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  diff = a - b
  ok = np.isfinite(diff)
  diff = diff[ok]
  mean, lo, hi = mean_ci(diff, confidence)
  p, test = t_test_p(diff), "t"
  sd = float(np.std(diff, ddof=1)) if diff.size >= 2 else float("nan")
  # Equal up to rounding: 0.7 - 0.67 and 0.8 - 0.77 differ in the 17th digit.
  tol = SAME * max(1.0, float(np.max(np.abs(np.r_[a[ok], b[ok]])))) if diff.size else 0.0
  if diff.size >= 2 and float(np.ptp(diff)) <= tol:
    sd = 0.0
    if abs(mean) <= tol:  # No difference in any pair.
      mean = lo = hi = 0.0
      p = 1.0
    else:
      lo = hi = mean
      p, test = sign_test_p(diff.size), "sign"
      if 1.0 - p < confidence:
        lo = hi = float("nan")
  return {"mean": mean, "lo": lo, "hi": hi, "n": int(diff.size), "p": p, "sd": sd,
          "test": test,
          "excludes_zero": bool(np.isfinite(lo) and (lo > 0 or hi < 0))}


def detectable(sd: float, n: int, power: float = 0.8, confidence: float = 0.95) -> float:
  """The smallest true mean difference |delta| that the two-sided paired t-test of
  `n` pairs whose differences have SD `sd` rejects (at 1 - confidence) with
  probability `power`: delta = nc sd / sqrt(n), nc the noncentrality at which the
  noncentral t(n - 1) exceeds the t quantile with probability `power` (the
  opposite tail, below 1e-3 for n >= 3 at 80% power, ignored). NaN for n < 2 and
  for an SD of 0: differences that do not vary measure no noise to size power by."""
  if n < 2 or not np.isfinite(sd) or sd <= 0:
    return float("nan")
  t = float(_t_quantile(n - 1, confidence))
  return float(special.nctdtrinc(n - 1, 1.0 - power, t) * sd / math.sqrt(n))


def pairs_needed(sd: float, effect: float, power: float = 0.8, confidence: float = 0.95,
                 most: int = 10_000) -> int:
  """The fewest pairs n >= 2 with `detectable(sd, n, power, confidence)` <= |effect|
  (0 when more than `most` would be needed)."""
  return next((n for n in range(2, most + 1)
               if detectable(sd, n, power, confidence) <= abs(effect)), 0)


def paired_sd(lo: float, hi: float, n: int, confidence: float = 0.95) -> float:
  """The SD of the n paired differences behind a reported t-interval [lo, hi]:
  half-width * sqrt(n) / t_{n-1}."""
  return float((hi - lo) / 2 * math.sqrt(n) / _t_quantile(n - 1, confidence))


def holm(p: Sequence[float], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
  """Holm's step-down correction: adjusted p-values and which hypotheses are rejected.

  The m p-values are sorted ascending; the i-th smallest (from 0) is adjusted
  to max over j <= i of min(1, (m - j) p_(j)). NaN p-values are not counted
  in m and are never rejected.
  """
  p = np.asarray(p, np.float64)
  adjusted = np.full(p.shape, np.nan)
  ok = np.flatnonzero(np.isfinite(p))
  order = ok[np.argsort(p[ok], kind="stable")]
  m = order.size
  if m:
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
  with np.errstate(invalid="ignore"):
    return adjusted, np.isfinite(adjusted) & (adjusted <= alpha)
