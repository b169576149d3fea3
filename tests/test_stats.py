"""resjax.stats: formulas against scipy, and coverage of the intervals by simulation."""
import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from resjax import collapse, manifolds, stats


def test_mean_ci_is_scipys_t_interval():
  rng = np.random.default_rng(0)
  for n in (2, 3, 8, 64):
    v = rng.standard_normal(n) * 3 + 1
    mean, lo, hi = stats.mean_ci(v)
    ref = sps.ttest_1samp(v, 0.0).confidence_interval(0.95)
    assert mean == pytest.approx(v.mean())
    assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-10)
  # Vectorised over leading axes, non-finite values dropped, NaN bounds below two values.
  v_NxS = rng.uniform(size=(3, 5))
  m, lo, hi = stats.mean_ci(v_NxS)
  for i in range(3):
    assert (m[i], lo[i], hi[i]) == pytest.approx(stats.mean_ci(v_NxS[i]))
  assert stats.mean_ci([1.0, np.nan, 3.0, np.inf]) == pytest.approx(stats.mean_ci([1.0, 3.0]))
  assert math.isnan(stats.mean_ci([2.0])[1]) and stats.mean_ci([2.0])[0] == 2.0
  assert all(math.isnan(x) for x in stats.mean_ci([]))
  assert stats.mean_ci([0.01, 0.02, 0.9], bounds=(0.0, 1.0))[1] == 0.0


def test_geo_mean_ci_is_the_t_interval_of_the_logs():
  v = np.array([1e-3, 2e-2, 5e-3, 1e-1])
  g, lo, hi = stats.geo_mean_ci(v)
  ref = sps.ttest_1samp(np.log(v), 0.0).confidence_interval(0.95)
  assert g == pytest.approx(sps.gmean(v))
  assert (lo, hi) == pytest.approx((math.exp(ref.low), math.exp(ref.high)))
  assert stats.geo_mean_ci([0.0, 1.0], floor=1e-12)[0] == pytest.approx(1e-6)


def test_wilson_is_scipys():
  for k, n in ((0, 8), (3, 8), (8, 8), (17, 250), (1, 1)):
    p, lo, hi = stats.wilson(k, n)
    ref = sps.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert p == k / n and (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-12)
  assert all(math.isnan(x) for x in stats.wilson(0, 0))


def test_bootstraps():
  rng = np.random.default_rng(1)
  v = rng.exponential(size=40)
  mean, lo, hi = stats.seed_bootstrap_ci(v, draws=20000)
  ref = sps.bootstrap((v,), np.mean, method="percentile", n_resamples=20000,
                      random_state=np.random.default_rng(2)).confidence_interval
  assert mean == pytest.approx(v.mean())
  assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=0.03)



def test_median_interval_is_the_order_statistics_one():
  # n = 40: [x_(14), x_(27)] (1 - 2 P(Bin(40, 1/2) <= 13) = 0.962; k = 15 gives 0.919).
  v = np.random.default_rng(1).exponential(size=40)
  med, lo, hi = stats.median_ci(v)
  s = np.sort(v)
  assert med == np.median(v) and (lo, hi) == (s[13], s[26])
  assert 1 - 2 * sps.binom.cdf(13, 40, 0.5) >= 0.95 > 1 - 2 * sps.binom.cdf(14, 40, 0.5)
  # inf (target never reached) is an order statistic like any other.
  med, lo, hi = stats.median_ci([10, 20, 30, 40, np.inf, np.inf, np.inf, np.nan])
  assert med == 40 and (lo, hi) == (10, np.inf)
  # Too few values for a 95% interval: [min, max] of 5 holds the median with 0.9375.
  med, lo, hi = stats.median_ci([3.0, 1.0, 2.0, 5.0, 4.0])
  assert med == 3.0 and np.isnan([lo, hi]).all()
  # Coverage of the true median, skewed values, n = 6 and 9.
  rng = np.random.default_rng(7)
  for n in (6, 9):
    got = [stats.median_ci(rng.exponential(size=n))[1:] for _ in range(4000)]
    covered = np.mean([lo <= math.log(2) <= hi for lo, hi in got])
    assert 0.95 <= covered <= 0.99, (n, covered)


def test_detectable_effect_has_the_power_it_claims():
  for n, sd in ((8, 0.3), (5, 1.0), (20, 0.05)):
    delta = stats.detectable(sd, n)
    t = sps.t.ppf(0.975, n - 1)
    nc = delta * np.sqrt(n) / sd  # Both tails of the noncentral t, from scipy.stats.
    power = sps.nct.sf(t, n - 1, nc) + sps.nct.cdf(-t, n - 1, nc)
    assert power == pytest.approx(0.8, abs=2e-3), (n, sd, power)
  # More pairs detect smaller effects; the normal approximation is a lower bound.
  assert stats.detectable(1.0, 16) < stats.detectable(1.0, 8)
  assert stats.detectable(1.0, 8) > (sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) / np.sqrt(8)
  assert np.isnan(stats.detectable(1.0, 1))


def test_pairs_needed_is_the_fewest_with_the_power():
  for sd, effect in ((1.17, 1.0), (1.45, 1.0), (0.3, 0.1)):
    n = stats.pairs_needed(sd, effect)
    t = sps.t.ppf(0.975, n - 1)
    power = lambda k: sps.nct.sf(sps.t.ppf(0.975, k - 1), k - 1, effect * np.sqrt(k) / sd)
    assert power(n) >= 0.8 - 2e-3 > power(n - 1), (sd, effect, n, t)
  assert stats.pairs_needed(1.0, 1e-6, most=50) == 0  # More than `most` pairs needed.
  # The SD behind a reported interval gives that interval back.
  rng = np.random.default_rng(4)
  d = rng.standard_normal(7) * 1.3 + 0.5
  _, lo, hi = stats.mean_ci(d)
  assert stats.paired_sd(lo, hi, 7) == pytest.approx(np.std(d, ddof=1), rel=1e-10)


def test_paired_contrast_and_holm():
  rng = np.random.default_rng(3)
  a = rng.standard_normal(10)
  b = a - 0.8 + 0.3 * rng.standard_normal(10)
  c = stats.paired(a, b)
  ref = sps.ttest_rel(a, b)
  ci = ref.confidence_interval(0.95)
  assert c["mean"] == pytest.approx(np.mean(a - b)) and c["n"] == 10
  assert (c["lo"], c["hi"]) == pytest.approx((ci.low, ci.high))
  assert c["p"] == pytest.approx(ref.pvalue) and c["excludes_zero"]
  assert stats.paired([1.0, np.nan, 2.0, 3.0], [0.0, 0.0, 2.5, 2.0])["n"] == 3
  assert not stats.paired([1.0], [0.0])["excludes_zero"]
  # Holm by hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, then running maxima.
  adjusted, reject = stats.holm([0.01, 0.04, 0.03, 0.005, np.nan])
  np.testing.assert_allclose(adjusted[:4], [0.03, 0.06, 0.06, 0.02])
  assert np.isnan(adjusted[4]) and list(reject) == [True, False, False, True, False]
  np.testing.assert_allclose(stats.holm([0.9, 0.01, 0.3])[0], [0.9, 0.03, 0.6])


def test_paired_differences_that_do_not_vary_use_the_sign_test():
  # The same nonzero difference in every pair: no t-interval of width 0 and p = 0.
  for n in range(2, 9):
    c = stats.paired(np.full(n, 0.0625), np.zeros(n))
    assert c["test"] == "sign" and c["sd"] == 0 and c["p"] == pytest.approx(2.0 ** (1 - n))
    assert c["excludes_zero"] == (n >= 6)  # 1 - 2^(1-n) >= 0.95 from n = 6.
    assert (c["lo"] == c["hi"] == 0.0625) if n >= 6 else np.isnan([c["lo"], c["hi"]]).all()
    assert np.isnan(stats.detectable(c["sd"], n))
  # Sums that do not come out exact still count as equal differences.
  assert stats.paired([0.3, 0.3, 0.3], [0.2, 0.2, 0.2])["test"] == "sign"
  same = stats.paired([0.5, 0.25], [0.5, 0.25])
  assert (same["p"], same["sd"], same["test"], same["excludes_zero"]) == (1.0, 0.0, "t", False)
  # Type I error, exactly, under a two-point null (each difference +d or -d, equally
  # likely, all 2^n sign patterns): the t-test alone rejected every all-equal pattern
  # (half the patterns at n = 2); with the sign test, at most 5% for n <= 6.
  for n in range(2, 7):
    rejected = sum(stats.paired(np.array(signs) / 64, np.zeros(n))["excludes_zero"]
                   for signs in itertools.product((-1.0, 1.0), repeat=n))
    assert rejected / 2 ** n <= 0.05, n


def test_cluster_wilson_basics():
  # All seeds 0: still an upper bound, Wilson's for 0 of S trials with the t_(S-1) quantile.
  for s in (8, 64):
    p, lo, hi = stats.cluster_wilson(np.zeros(s), size=1000)
    q2 = sps.t.ppf(0.975, s - 1) ** 2
    assert p == 0 and lo == 0 and hi == pytest.approx(q2 / (s + q2)) and hi > 0
  # Seeds as independent trials of size 1 (0/1 values): close to Wilson on the count.
  v = np.array([1, 0, 0, 1, 1, 0, 1, 1, 0, 1] * 5, np.float64)
  _, lo, hi = stats.cluster_wilson(v, size=1)
  ref = sps.binomtest(int(v.sum()), v.size).proportion_ci(0.95, method="wilson")
  assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=0.01)
  # Always inside [0, 1] and around its estimate; NaN seeds dropped; one seed: NaN bounds.
  rng = np.random.default_rng(4)
  f_NxS = rng.beta(0.3, 20, size=(50, 8)) * (rng.uniform(size=(50, 8)) < 0.3)
  p, lo, hi = stats.cluster_wilson(f_NxS, size=1000)
  assert np.all((0 <= lo) & (lo <= p) & (p <= hi) & (hi <= 1))
  assert stats.cluster_wilson([0.1, np.nan, 0.2]) == pytest.approx(stats.cluster_wilson([0.1, 0.2]))
  assert math.isnan(stats.cluster_wilson([0.1])[2])


# ---------------------------------------------------------------- coverage
#
# The collapse sweep's situation, simulated exactly: the 1000-point spiral, a
# Gaussian T (n x 2) per seed, a point collapses when fewer than d = 2 ReLU
# units are on duty. A unit is on duty on the half-plane T_i x > 0, i.e. on the
# arc of directions within pi/2 of T_i's angle, so the per-seed fraction is
# counted from the 2n arc ends and the sorted point angles without a P x n
# array. Over T the expected fraction is P(Binomial(n, 1/2) < 2) for every
# point; within one T the points' indicators are strongly correlated (they
# collapse on whole arcs), so the per-seed fractions are mostly 0 with rare
# large values once n >= 8.


def _spiral_angles(points: int = 1000) -> np.ndarray:
  x = manifolds.spiral(points).astype(np.float64)
  return np.sort(np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * np.pi))


def _collapsed_fracs(t_DxNx2: np.ndarray, theta_P: np.ndarray) -> np.ndarray:
  """Per draw, the fraction of points (sorted angles theta_P) with < 2 units on duty."""
  phi_DxN = np.arctan2(t_DxNx2[..., 1], t_DxNx2[..., 0])
  start, end = np.mod(phi_DxN - np.pi / 2, 2 * np.pi), np.mod(phi_DxN + np.pi / 2, 2 * np.pi)
  count0_D = np.sum(start > end, -1)  # arcs that wrap around angle 0 cover it
  events = np.concatenate([start, end], -1)
  order = np.argsort(events, -1)
  events = np.take_along_axis(events, order, -1)
  delta = np.take_along_axis(np.concatenate([np.ones_like(start), -np.ones_like(end)], -1),
                             order, -1)
  count_DxE = count0_D[:, None] + np.cumsum(delta, -1).astype(np.int64)  # after each event
  below_DxE = np.searchsorted(theta_P, events)  # points before each event
  seg_DxE = np.diff(np.concatenate([below_DxE, np.full_like(below_DxE[:, :1], len(theta_P))],
                                   -1), axis=-1)
  collapsed = (count0_D < 2) * below_DxE[:, 0] + np.sum((count_DxE < 2) * seg_DxE, -1)
  return collapsed / len(theta_P)


def test_simulated_fractions_are_the_sweeps():
  theta = _spiral_angles()
  x = manifolds.spiral(1000)
  rng = np.random.default_rng(5)
  for n in (2, 3, 4, 6, 9):
    t_DxNx2 = rng.standard_normal((4, n, 2))
    fast = _collapsed_fracs(t_DxNx2, theta)
    for t, f in zip(t_DxNx2, fast):
      on_PxN = collapse.recover(x, t, "relu")["on_duty"]
      assert f == np.mean(on_PxN.sum(1) < 2)


def _coverage(seeds: int, n: int, reps: int, rng) -> dict[str, float]:
  theta = _spiral_angles()
  f_RxS = _collapsed_fracs(rng.standard_normal((reps * seeds, n, 2)), theta).reshape(reps, seeds)
  truth = sps.binom.cdf(1, n, 0.5)  # P(Binomial(n, 1/2) < 2)
  out = {}
  for name, (_, lo, hi) in (("t", stats.mean_ci(f_RxS, bounds=(0.0, 1.0))),
                            ("cluster", stats.cluster_wilson(f_RxS, size=len(theta)))):
    out[name] = float(np.mean((lo <= truth) & (truth <= hi)))
    out[name + "_width"] = float(np.median(hi - lo))
  out["all_zero"] = float(np.mean(f_RxS.max(1) == 0))
  return out


# (seeds, n): the tail cells of the collapse sweep, 2000 simulated sweeps each.
_TAILS = ((8, 8), (8, 12), (8, 15), (64, 12), (64, 15))


def test_cluster_wilson_covers_the_collapse_tails_where_the_t_interval_does_not():
  rng = np.random.default_rng(6)
  got = {case: _coverage(*case, reps=2000, rng=rng) for case in _TAILS}
  print({case: {k: round(v, 4) for k, v in c.items()} for case, c in got.items()})
  for case, c in got.items():
    assert 0.90 <= c["cluster"] <= 0.99, (case, c)
    assert c["t"] < 0.85, (case, c)
  assert got[(64, 15)]["all_zero"] > 0.3  # the exact-zero case is common there


def test_cluster_wilson_is_no_wider_than_t_away_from_the_tails():
  # n = 4: P(collapse) = 5/16, every seed has collapsed points (measured: both ~93%).
  c = _coverage(8, 4, reps=2000, rng=np.random.default_rng(7))
  assert 0.90 <= c["cluster"] <= 0.98 and 0.90 <= c["t"] <= 0.98, c
  assert c["cluster_width"] <= 1.05 * c["t_width"], c


def test_paired_interval_covers_on_discrete_accuracies_with_two_seeds():
  # A tiny study's situation: test accuracies on 64 points (steps of 1/64), two
  # seeds, no true difference. About 7% of draws give the same nonzero difference
  # in both pairs, where a t-interval would be [d, d] and miss 0 (coverage about
  # 0.92); with the sign test they give no interval.
  rng = np.random.default_rng(5)
  draws, covered, without = 3000, 0, 0
  for _ in range(draws):
    a, b = rng.binomial(64, 0.9, size=(2, 2)) / 64
    c = stats.paired(a, b)
    if np.isnan(c["lo"]):
      without += 1
    covered += not c["excludes_zero"]
  assert covered / draws >= 0.95 and 0.04 <= without / draws <= 0.11


def test_paired_differences_equal_up_to_rounding_count_as_equal():
  # +3 points in both seeds, as accuracies read back from JSON: 0.7 - 0.67 and
  # 0.8 - 0.77 differ in the 17th digit.
  c = stats.paired([0.7, 0.8], [0.67, 0.77])
  assert c["test"] == "sign" and c["sd"] == 0 and c["p"] == 0.5 and not c["excludes_zero"]
  none = stats.paired([0.1 + 0.2, 0.3], [0.3, 0.1 + 0.2])  # No difference, up to rounding.
  assert (none["mean"], none["p"], none["sd"], none["test"]) == (0.0, 1.0, 0.0, "t")
  assert stats.paired([0.7, 0.8001], [0.67, 0.77])["test"] == "t"  # A real spread stays a t-test.


def test_fisher_intervals_of_correlations_cover():
  # Pearson's r and Spearman's rho of 15 bivariate normal pairs with correlation 0.5.
  rng = np.random.default_rng(6)
  cov = [[1.0, 0.5], [0.5, 1.0]]
  rho_s = 6 / np.pi * np.arcsin(0.25)  # Spearman's rho of that normal.
  hits = {"pearson": 0, "spearman": 0}
  draws = 2000
  for _ in range(draws):
    x, y = rng.multivariate_normal([0, 0], cov, size=15).T
    lo, hi = stats.fisher_ci(float(np.corrcoef(x, y)[0, 1]), 1 / math.sqrt(12))
    hits["pearson"] += lo <= 0.5 <= hi
    lo, hi = stats.fisher_ci(float(sps.spearmanr(x, y)[0]), math.sqrt(1.06 / 12))
    hits["spearman"] += lo <= rho_s <= hi
  for name, h in hits.items():
    assert 0.93 <= h / draws <= 0.975, (name, h / draws)
  assert np.isnan(stats.fisher_ci(float("nan"), 0.3)).all()
