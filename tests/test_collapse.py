"""The collapse sweep: padding, one compilation, theory, decoders, reference values, bad config.

Most tests share one sweep over a small grid that pads both n and d (balls in
d = 1, 2, 3 dims, scaled by 4 so that ReLU6 saturates and tanh leaves its
invertible region), so the whole file compiles only a handful of programs.
"""
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring

from scipy import optimize, special

import configs.collapse
from resjax import activations, collapse, errors, manifolds, stats
from resjax.collapse import decoders, embedding
from benchmarks import collapse as bench

_ACTS = ("relu", "relu6", "gelu", "identity", "tanh")
_N_MAX = 12
_SCALE = 4.0


def _compiles(fn):
  """(fn(), number of XLA compilations it triggered)."""
  events = []
  listener = lambda name, *_, **__: events.append(name)
  monitoring.register_event_duration_secs_listener(listener)
  try:
    out = fn()
  finally:
    monitoring.unregister_event_duration_listener(listener)
  return out, events.count("/jax/core/compile/backend_compile_duration")


@pytest.fixture(scope="module")
def grid():
  # 3 x 48 draws in chunks of 7: the last chunk is padded with repeated draws.
  return collapse.SweepSpec(activations=_ACTS, dims=(1, 2, 3, 4, 5, 6, 8, 10, _N_MAX), seeds=48,
                       manifold="ball", ds=(1, 2, 3), points=300, chunk=7, scale=_SCALE)


@pytest.fixture(scope="module")
def swept(grid):
  return _compiles(lambda: collapse.sweep(grid))


def _draw(seed, s, d):
  """The unpadded T [N_MAX, d] of seed index s and manifold dim d: T_n is its first n rows.

  (Column j is its own stream and a prefix of a draw equals the shorter draw:
  test_padded_draw_equals_unpadded_draw checks both.)
  """
  return np.asarray(jax.jit(collapse.draw_embedding, static_argnums=(1, 2))(
      collapse.embedding_key(seed, s, d), _N_MAX, d))


def test_whole_grid_compiles_exactly_once(swept, grid):
  results, compiles = swept
  assert compiles == 1
  assert results["pinv_error"].shape == (3, len(_ACTS), len(grid.dims), grid.seeds)
  assert results["collapsed_frac_theory"].shape == (3, len(_ACTS), len(grid.dims))
  assert np.isfinite(results["refit_error"]).all()


def test_figure_recoveries_use_the_sweeps_t_with_or_without_the_constrained_decoder():
  spec = collapse.SweepSpec(activations=("relu",), dims=(1, 2, 5), seeds=1, points=80,
                            manifold="spiral", ds=(2,), chunk=0, seed=3)
  full = collapse.figure_recoveries(spec, "relu", (2, 5), seed_index=1)
  lean = collapse.figure_recoveries(spec, "relu", (2, 5), seed_index=1, constrained=False)
  t = _draw(3, 1, 2)
  for n, a, b in zip((2, 5), full["panels"], lean["panels"]):
    ref = collapse.recover(full["x"], t[:n], "relu")
    np.testing.assert_array_equal(a["pinv"], ref["pinv"])
    assert "constrained" in a and "constrained" not in b and "constrained_error" not in b
    for key in ("pinv", "refit", "span", "pinv_error", "refit_error", "span_error"):
      np.testing.assert_array_equal(a[key], b[key])


def test_the_sweeps_first_draw_is_the_figures_t():
  # The job hands the sweep's first draw to the figure instead of drawing T
  # again: the same T (seed index 0, first manifold dim), zero padded.
  spec = collapse.SweepSpec(activations=("relu",), dims=(1, 2, 5), seeds=2, points=80,
                            manifold="ball", ds=(2, 3), chunk=1, seed=3)
  first = collapse.sweep(spec)["first_draw"]
  assert first.shape == (5, 3)
  np.testing.assert_array_equal(first[:, 2], 0.0)
  np.testing.assert_array_equal(first[:5, :2], np.asarray(collapse.draw_embedding(
      collapse.embedding_key(3, 0, 2), 5, 2)))
  spiral = collapse.SweepSpec(activations=("relu",), dims=(1, 2, 5), seeds=1, points=80, seed=3)
  drawn = collapse.figure_recoveries(spiral, "relu", (2, 5), constrained=False)
  given = collapse.figure_recoveries(spiral, "relu", (2, 5), constrained=False,
                                     t_NxD=np.pad(first[:, :2], ((0, 3), (0, 1))))
  for a, b in zip(drawn["panels"], given["panels"]):
    for key in ("pinv", "refit", "span", "refit_error"):
      np.testing.assert_array_equal(a[key], b[key])
  short = collapse.figure_recoveries(spiral, "relu", (2, 5), constrained=False,
                                     t_NxD=first[:4])  # Too few rows: drawn again.
  np.testing.assert_array_equal(short["panels"][1]["pinv"], drawn["panels"][1]["pinv"])


def test_padded_draw_equals_unpadded_draw():
  @jax.jit
  def draws(key):
    return (jax.random.normal(key, (64, 3)), jax.random.normal(key, (5, 3)),
            embedding.draw_padded(key, 5, 2, 64, 3), collapse.draw_embedding(key, 5, 2))

  long, short, padded, t5 = map(np.asarray, draws(jax.random.key(7)))
  # The property the padding relies on (partitionable threefry): a longer
  # leading axis extends the stream, so a prefix equals the shorter draw.
  np.testing.assert_array_equal(long[:5], short)
  np.testing.assert_array_equal(padded[:5, :2], t5)
  assert np.all(padded[5:] == 0) and np.all(padded[:, 2:] == 0)


@pytest.mark.parametrize("s", [0, 47])  # 47 sits in the padded last chunk
def test_padded_sweep_equals_unpadded_numpy(swept, grid, s):
  results, _ = swept
  for k, d in enumerate(grid.ds):
    t_NxD = _draw(grid.seed, s, d)
    x_PxD = manifolds.ball(grid.points, d, seed=grid.seed) * np.float32(_SCALE)
    for i, n in enumerate(grid.dims):
      for a, name in enumerate(_ACTS):
        want = collapse.reference_metrics(x_PxD, t_NxD[:n], name)
        got = np.array([results[m][k, a, i, s] for m in collapse.METRICS])
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6,
                                   err_msg=f"{name} d={d} n={n}")


def test_padded_sweep_equals_unpadded_jax(swept, grid):
  results, _ = swept
  x_PxD = jnp.asarray(manifolds.sample("ball", grid.points, 2, seed=grid.seed, scale=_SCALE))
  n, i, a = 5, grid.dims.index(5), _ACTS.index("relu")
  t_SxNxD = np.stack([_draw(grid.seed, s, 2)[:n] for s in range(4)])
  direct = jax.jit(jax.vmap(lambda t: collapse.cell_metrics(x_PxD, t, n, 2, ("relu",))))(
      t_SxNxD)
  for m, metric in enumerate(collapse.METRICS):
    np.testing.assert_allclose(results[metric][1, a, i, :4], np.asarray(direct[:, 0, m]),
                               rtol=2e-5, atol=1e-7, err_msg=metric)


def test_identity_has_no_error(swept, grid):
  results, _ = swept
  a = _ACTS.index("identity")
  dims = np.array(grid.dims)
  for k, d in enumerate(grid.ds):
    for e in collapse.ERRORS:
      assert np.all(results[f"{e}_error"][k, a, dims >= d] < 1e-6), (e, d)
  # n = 1 < d = 2 keeps the projection onto one random direction: half of |x|^2.
  assert results["span_error"][1, a, 0].mean() == pytest.approx(0.5, abs=0.1)
  assert results["span_error_theory"][1, a, 0] == pytest.approx(0.5)


def test_relu_errors_fall_with_n(swept, grid):
  results, _ = swept
  a = _ACTS.index("relu")
  i2, i5, i12 = (grid.dims.index(n) for n in (2, 5, 12))
  for k in range(len(grid.ds)):
    refit_N = results["refit_error"][k, a].mean(-1)
    assert refit_N[i2] > refit_N[i5] + 0.05 > refit_N[i12] + 0.1, refit_N
    # T_n are nested, so per seed the span decoder's loss can only shrink as n grows.
    span_NxS = results["span_error"][k, a]
    assert np.all(np.diff(span_NxS, axis=0) <= 1e-6)
    assert span_NxS[i2].mean() > 10 * span_NxS[i12].mean()


@pytest.mark.parametrize("name", ["relu", "relu6", "gelu"])
def test_measured_fractions_match_binomial_theory(swept, grid, name):
  results, _ = swept
  a = _ACTS.index(name)
  tested = 0
  for measured, theory in (("collapsed_frac", "collapsed_frac_theory"),
                           ("dead_frac", "dead_frac_theory"),
                           ("span_error", "span_error_theory")):
    # In d = 1 all points on a half-line share one sign pattern, so a seed
    # collapses half the points or none: 48 seeds cannot estimate its spread.
    for k, d in enumerate(grid.ds[1:], 1):
      for i, n in enumerate(grid.dims):
        want = results[theory][k, a, i]
        v_S = results[measured][k, a, i]
        if not 0.01 <= want <= 0.99:  # z-test where the per-seed spread is estimable
          continue
        se = v_S.std(ddof=1) / math.sqrt(len(v_S))
        assert abs(v_S.mean() - want) <= 4 * se + 1e-6, (measured, d, n, v_S.mean(), want)
        tested += 1
  assert tested >= 10


def test_relu_theory_is_the_binomial_tail(swept, grid):
  results, _ = swept
  a = _ACTS.index("relu")
  for k, d in enumerate(grid.ds):
    for i, n in enumerate(grid.dims):
      tail = sum(math.comb(n, j) for j in range(min(d, n + 1))) / 2 ** n
      assert results["collapsed_frac_theory"][k, a, i] == pytest.approx(tail, rel=1e-9)
      assert results["dead_frac_theory"][k, a, i] == pytest.approx(2.0 ** -n, rel=1e-9)
      assert results["linear_frac_theory"][k, a, i] == pytest.approx(2.0 ** -n, rel=1e-9)
  assert np.all(np.isnan(results["linear_frac"][:, _ACTS.index("tanh")]))
  # GELU is on duty where z > 0, as ReLU: the same theory; tanh's region is not
  # sign-symmetric in the sense the span theory needs.
  np.testing.assert_allclose(results["span_error_theory"][:, _ACTS.index("gelu")],
                             results["span_error_theory"][:, a])
  assert np.all(np.isnan(results["span_error_theory"][:, _ACTS.index("tanh")]))


def test_summary_rows_and_intervals(swept, grid):
  rows = collapse.summarize(swept[0])
  assert len(rows) == len(grid.ds) * len(_ACTS) * len(grid.dims)
  for col in ("activation", "d", "dim", "seeds", "pinv_error_mean", "pinv_error_lo",
              "pinv_error_hi", "refit_error_mean", "refit_error_lo", "refit_error_hi",
              "span_error_mean", "span_error_lo", "span_error_hi", "span_error_theory",
              "constrained_error_mean", "constrained_error_lo", "constrained_error_hi",
              "collapsed_frac", "collapsed_frac_theory", "dead_frac", "active_frac",
              "linear_frac"):
    assert col in rows[0]
  for r in rows:
    assert r["refit_error_lo"] <= r["refit_error_mean"] <= r["refit_error_hi"]
    for m in ("collapsed_frac", "dead_frac", "active_frac", "linear_frac"):
      if not math.isnan(r[m]):
        assert 0.0 <= r[f"{m}_lo"] <= r[m] <= r[f"{m}_hi"] <= 1.0, (m, r)
  # Fractions of points: seeds as clusters (stats.cluster_wilson); when no seed
  # shows a collapsed point the interval still has an upper bound above 0.
  relu = [r for r in rows if r["activation"] == "relu"]
  zero = [r for r in relu if r["collapsed_frac"] == 0]
  assert zero and all(r["collapsed_frac_hi"] > 0 for r in zero)
  r = relu[-1]
  k = list(swept[0]["d"]).index(r["d"])
  i = list(swept[0]["dims"]).index(r["dim"])
  want = stats.cluster_wilson(swept[0]["dead_frac"][k, _ACTS.index("relu"), i], grid.points)
  assert (r["dead_frac"], r["dead_frac_lo"], r["dead_frac_hi"]) == pytest.approx(want, rel=1e-5)
  assert all(r["active_frac"] == pytest.approx(0.5, abs=0.05) for r in relu)
  assert "relu" in collapse.table(rows)


def test_reference_refit_values_on_the_spiral():
  # A NumPy loop on a 3-turn spiral gives about 0.46, 0.14, 0.08, 0.01.
  grid = collapse.SweepSpec(activations=("relu",), dims=(2, 15, 30, 256), seeds=24, points=400)
  refit_N = collapse.sweep(grid)["refit_error"][0, 0].mean(-1)
  for got, (lo, hi) in zip(refit_N, [(0.40, 0.52), (0.10, 0.20), (0.05, 0.13), (0.003, 0.03)]):
    assert lo < got < hi, refit_N


def test_quick_benchmark_times_all_three(capsys):
  figures = bench.run(quick=True)
  for key in ("a_compile_s", "a_steady_s", "b_s", "c_compile_s", "b_over_a_total",
              "c_over_a_total", "a_temp_mib", "a_peak_rss_mib"):
    assert figures[key] > 0, key
  assert set(figures["a_steady_s_by_chunk"]) == {1, 2}
  assert all(t > 0 for t in figures["a_steady_s_by_chunk"].values())
  assert set(figures["a_emitters"]) == {"older", "newer"}
  assert all(v["compile_s"] > 0 and v["steady_s"] > 0 for v in figures["a_emitters"].values())
  # The quick grid (relu, d = 2) starts without the solver and never needs it;
  # the memory figure compiled the program with it.
  assert not figures["a_started_with_solver"] and figures["a_rerun_chunks"] == 0
  assert figures["a_solver_compile_s"] > 0
  out = capsys.readouterr().out
  assert "ratios" in out and "steady run by chunk size" in out and "fusion emitters" in out
  assert "started without the QP solver; 0 chunks ran again with it" in out
  # ReLU alone has no bound but 0: the rule never starts with the solver at d = 2.
  assert [r["scale"] for r in figures["a_solver_need"]] == [1.0, 20.0]
  assert not any(r["starts_with_solver"] for r in figures["a_solver_need"])
  assert all(sum(r["need"].values()) <= r["draws"] == 2 for r in figures["a_solver_need"])


def test_activation_regions_match_active():
  z = jnp.linspace(-8.0, 8.0, 4001)
  specs = [activations.get(name) for name in activations.names()]
  masks = jax.jit(lambda z: [act.active(z) for act in specs])(z)
  for name, act, mask in zip(activations.names(), specs, masks):
    lo, hi = act.region
    np.testing.assert_array_equal(np.asarray(mask), (np.asarray(z) > lo) & (np.asarray(z) < hi),
                                  err_msg=name)


def test_config_parsing_and_comma_lists():
  config = configs.collapse.get_config()
  grid = collapse.spec_from_config(config)
  assert grid.dims == tuple(range(1, 65)) and grid.seeds >= 64 and grid.points >= 1000
  assert grid.activations == activations.names()
  config.activations = ("relu,tanh",)  # what --config.activations=relu,tanh gives
  config.dims = (5, 2, 3)
  grid = collapse.spec_from_config(config)
  assert grid.activations == ("relu", "tanh") and grid.dims == (2, 3, 5)


@pytest.mark.parametrize("field, value, needle", [
    ("activations", ("relu", "swish"), "activations=('relu', 'swish') is not allowed"),
    ("dims", (2, 0), "dims=(2, 0) is not allowed"),
    ("dims", (2.5,), "dims=(2.5,) is not allowed"),
    ("dims", (2, 2), "dims=(2, 2) is not allowed; give a non-empty list of distinct values"),
    ("activations", (), "activations=() is not allowed"),
    ("seeds", 0, "seeds=0"),
    ("chunk", -1, "chunk=-1"),
])
def test_bad_config_is_one_readable_line(field, value, needle):
  config = configs.collapse.get_config()
  config[field] = value
  with pytest.raises(errors.ConfigError) as info:
    collapse.spec_from_config(config)
  assert needle in str(info.value) and "\n" not in str(info.value)


def test_constrained_decoder_is_never_worse_and_helps_relu(swept, grid):
  results, _ = swept
  span, con = results["span_error"], results["constrained_error"]
  # Least norm over a subset of the span decoder's solutions (those that also
  # meet the silent units' constraints): never further from x, per point.
  assert np.all(con <= span * (1 + 1e-4) + 1e-7)
  a, k, i = _ACTS.index("relu"), grid.ds.index(2), grid.dims.index(3)
  assert con[k, a, i].mean() < 0.9 * span[k, a, i].mean()
  # Identity has no silent units: both decoders agree.
  a = _ACTS.index("identity")
  np.testing.assert_array_equal(con[:, a], span[:, a])


def test_saturation_at_scale(swept, grid):
  results, _ = swept
  relu, relu6 = _ACTS.index("relu"), _ACTS.index("relu6")
  k = grid.ds.index(3)
  # At scale 4 some pre-activations pass 6: ReLU6 collapses more often than ReLU.
  assert np.all(results["collapsed_frac_theory"][k, relu6] >= results["collapsed_frac_theory"][
      k, relu] - 1e-12)
  i = grid.dims.index(_N_MAX)
  assert results["collapsed_frac"][k, relu6, i].mean() > results["collapsed_frac"][k, relu, i].mean()


def _random_qps(count, seed=0):
  """Small least-norm QPs as the constrained decoder meets them: Gaussian T, a
  point x, fewer than d units on duty, ReLU (z <= 0) or ReLU6 (z <= 0 or z >= 6)."""
  rng = np.random.default_rng(seed)
  out = []
  while len(out) < count:
    d = int(rng.integers(2, 5))
    n = int(rng.integers(d, 13))
    t_NxD = rng.standard_normal((n, d))
    x_D = rng.standard_normal(d) * 3
    lo, hi = (0.0, 6.0) if len(out) % 2 else (0.0, np.inf)
    z_N = t_NxD @ x_D
    on_N = (z_N > lo) & (z_N < hi)
    if on_N.sum() < d:
      out.append((t_NxD, x_D, z_N, on_N, lo, hi))
  return out


def _jax_qps(problems, steps):
  """The sweep's float32 QP solver on every problem at once (padded to 12 units, 4 dims)."""
  n_max, d_max = 12, 4
  m = len(problems)
  t_MxNxD, a_MxJxD = np.zeros((m, n_max, d_max)), np.zeros((m, d_max, d_max))
  zf_MxJ, side_MxN, b_MxN = np.zeros((m, d_max)), np.zeros((m, n_max)), np.zeros((m, n_max))
  k_M = np.zeros(m, np.int32)
  for i, (t_NxD, _, z_N, on_N, lo, hi) in enumerate(problems):
    n, d = t_NxD.shape
    k_M[i] = on_N.sum()
    t_MxNxD[i, :n, :d] = t_NxD
    a_MxJxD[i, :k_M[i], :d] = t_NxD[on_N]
    zf_MxJ[i, :k_M[i]] = z_N[on_N]
    side_MxN[i, :n] = np.where(z_N <= lo, 1.0, np.where(z_N >= hi, -1.0, 0.0))
    b_MxN[i, :n] = np.where(z_N <= lo, lo, np.where(z_N >= hi, hi if np.isfinite(hi) else 0, 0))

  @jax.jit
  def solve(t_NxD, a_JxD, zf_J, side_N, b_N, k):
    x0 = decoders.span_solutions(a_JxD[None], zf_J[None])[:, k]
    kind = (jnp.arange(d_max) < k).astype(jnp.int32)[None]
    return decoders.min_norm_qp(x0, a_JxD[None], kind, t_NxD, side_N[None], b_N[None],
                                side_N[None] != 0, jnp.zeros(1, bool), steps)[0]

  f32 = lambda v: jnp.asarray(v, jnp.float32)
  return np.asarray(jax.vmap(solve)(f32(t_MxNxD), f32(a_MxJxD), f32(zf_MxJ), f32(side_MxN),
                                    f32(b_MxN), jnp.asarray(k_M)))


def _slsqp(a_KxD, c_K, g_MxD, h_M):
  cons = [{"type": "ineq", "fun": lambda x: h_M - g_MxD @ x, "jac": lambda x: -g_MxD}]
  if len(a_KxD):
    cons.append({"type": "eq", "fun": lambda x: a_KxD @ x - c_K, "jac": lambda x: a_KxD})
  return optimize.minimize(lambda x: 0.5 * x @ x, np.zeros(g_MxD.shape[1]), jac=lambda x: x,
                           constraints=cons, method="SLSQP",
                           options={"ftol": 1e-14, "maxiter": 500}).x


def test_constrained_qp_matches_scipy():
  # 60 QPs like the sweep's (d = 2..4, up to 12 units): the float32 active-set
  # solver with QP_STEPS * d_max steps matches scipy's NNLS (the float64
  # reference), which matches SLSQP; with 2 steps some are not yet solved.
  problems = _random_qps(60)
  got_MxD = _jax_qps(problems, collapse.QP_STEPS * 4)
  few_MxD = _jax_qps(problems, 2)
  worst, unsolved = 0.0, 0
  for (t_NxD, x_D, z_N, on_N, lo, hi), got, few in zip(problems, got_MxD, few_MxD):
    d = t_NxD.shape[1]
    below, above = z_N <= lo, z_N >= hi
    g_MxD = np.vstack([t_NxD[below], -t_NxD[above]])
    h_M = np.concatenate([np.full(below.sum(), lo), np.full(above.sum(), -hi)])
    want = collapse.least_norm_qp(t_NxD[on_N], z_N[on_N], g_MxD, h_M)
    np.testing.assert_allclose(want, _slsqp(t_NxD[on_N], z_N[on_N], g_MxD, h_M),
                               atol=1e-6 * np.abs(x_D).max())
    scale = np.abs(x_D).max()
    worst = max(worst, np.abs(got[:d] - want).max() / scale)
    unsolved += np.abs(few[:d] - want).max() > 1e-3 * scale
  assert worst < 1e-4, worst
  assert unsolved > 0


def test_prefixes_past_the_closed_form_window_are_solved_as_qps():
  # d = 1: the window is QP_WINDOW units, so n = 17 and 20 lie past it, where
  # every QP with no unit on duty goes to the active-set solver. At scale 20
  # ReLU6 and tanh leave many points with none on duty there (checked below,
  # so that the path is taken); the sweep matches the float64 NNLS reference.
  dims, n_max = (2, 17, 20), 20
  assert collapse.QP_WINDOW < 17
  spec = collapse.SweepSpec(activations=("relu6", "tanh"), dims=dims, seeds=2, manifold="ball",
                            ds=(1,), points=200, chunk=1, scale=20.0)
  results = collapse.sweep(spec)
  x_PxD = manifolds.sample("ball", spec.points, 1, seed=spec.seed, scale=spec.scale)
  far_qps = 0
  for s in range(spec.seeds):
    t_NxD = np.asarray(collapse.draw_embedding(collapse.embedding_key(spec.seed, s, 1), n_max, 1))
    for a, name in enumerate(spec.activations):
      lo, hi = activations.get(name).region
      z_NxP = t_NxD @ x_PxD.T
      far_qps += int(np.sum(~np.any((z_NxP > lo) & (z_NxP < hi), axis=0)))
      for i, n in enumerate(dims):
        want = collapse.reference_metrics(x_PxD, t_NxD[:n], name)
        got = np.array([results[m][0, a, i, s] for m in collapse.METRICS])
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6, err_msg=f"{name} n={n}")
  assert far_qps > 0


def test_gelu_inverse_reaches_float32_rounding_in_its_default_steps():
  z = np.concatenate([np.geomspace(1e-6, 1, 4000), np.linspace(1, 12, 4000)]).astype(np.float32)
  gelu = activations.get("gelu")
  y = np.asarray(gelu.fn(z)).astype(np.float64)
  want = y / special.ndtr(y)  # Newton in float64, to convergence
  for _ in range(60):
    slope = special.ndtr(want) + want * np.exp(-0.5 * want * want) / np.sqrt(2 * np.pi)
    want = np.maximum(want - (want * special.ndtr(want) - y) / slope, y)
  got = np.asarray(jax.jit(gelu.inverse)(y.astype(np.float32)))
  assert np.max(np.abs(got - want) / want) < 2.5e-7  # A step fewer leaves 4e-7.


def test_inverses_round_trip_in_float32_on_their_regions():
  for name in activations.names():
    act = activations.get(name)
    lo, hi = act.region
    z = np.linspace(max(lo, -100.0), min(hi, 30.0), 20001)[1:-1].astype(np.float32)
    back = np.asarray(jax.jit(lambda z: act.inverse(act.fn(z)))(z))
    assert np.abs(back - z).max() <= activations.ROUNDTRIP_TOL * np.maximum(1, np.abs(z)).max(), name
  # Past the region's edge the float32 inverse is off by more than the tolerance.
  for name, z in (("tanh", 7.0), ("elu", -14.0)):
    act = activations.get(name)
    assert abs(float(act.inverse(act.fn(jnp.float32(z)))) - z) > activations.ROUNDTRIP_TOL
  # GELU: every y in (min, 0) has two preimages, one on each side of the minimum,
  # so only y > 0 (z > 0) is invertible without knowing the branch.
  gelu = lambda z: z * special.ndtr(z)
  for z1 in (-0.1, -0.4, -0.7):
    z2 = optimize.brentq(lambda z: gelu(z) - gelu(z1), -10, activations.GELU_ARGMIN)
    assert z2 < activations.GELU_ARGMIN < z1 and abs(gelu(z2) - gelu(z1)) < 1e-12
  assert activations.get("gelu").region == (0.0, math.inf)


def test_embeddings_are_independent_across_d_and_reproducible():
  t1, t2, t3 = (_draw(0, 5, d) for d in (1, 2, 3))
  np.testing.assert_array_equal(_draw(0, 5, 3), t3)  # the same seed: the same T
  for small, big in ((t1, t3), (t2, t3), (t1, t2)):
    for j in range(small.shape[1]):
      for l in range(big.shape[1]):
        assert abs(np.corrcoef(small[:, j], big[:, l])[0, 1]) < 0.99
  assert not np.array_equal(_draw(0, 6, 3), t3)
  padded = np.asarray(jax.jit(embedding.draw_padded, static_argnums=(3, 4))(
      collapse.embedding_key(0, 5, 2), 7, 2, 16, 3))
  np.testing.assert_array_equal(padded[:7, :2], t2[:7])


@pytest.mark.parametrize("field, value, needle", [
    ("activations", ("relu", "swish"), "activations=('relu', 'swish') is not allowed"),
    ("seeds", 0, "seeds=0"),
    ("seeds", 100_000_000, "the sweep needs about"),
])
def test_sweep_validates_as_the_launcher_does(field, value, needle):
  config = configs.collapse.get_config()
  config[field] = value
  with pytest.raises(errors.ConfigError) as info:
    collapse.sweep(config)
  assert needle in str(info.value) and "\n" not in str(info.value)
  if needle != "the sweep needs about":
    with pytest.raises(errors.ConfigError) as launcher:
      collapse.spec_from_config(config)
    assert str(launcher.value) == str(info.value)
  grid = collapse.SweepSpec(activations=("relu",), dims=(2,), seeds=1, scale=-1.0)
  with pytest.raises(errors.ConfigError,
                     match=r"manifold.scale=-1.0 is not allowed; use a number in \[1e-12, 1e\+12\]"):
    collapse.sweep(grid)


@pytest.mark.parametrize("field, value, needle", [
    ("manifold.turns", float("inf"), "manifold.turns=inf is not allowed"),
    ("manifold.scale", 1e-30, "manifold.scale=1e-30 is not allowed; use a number in [1e-12"),
    ("seed", True, "seed=True is not allowed"),
    ("seed", 2**32, "seed=4294967296 is not allowed; use an integer >= 0 and < 2**32"),
    ("seeds", 2.0, "seeds=2.0 is not allowed"),
])
def test_non_finite_underflowing_bool_and_overflowing_values_are_refused(field, value, needle):
  config = configs.collapse.get_config().to_dict()  # A dict: no ConfigDict type checks.
  group, _, name = field.rpartition(".")
  (config[group] if group else config)[name] = value
  with pytest.raises(errors.ConfigError) as info:
    collapse.sweep(config)
  assert str(info.value).startswith(needle) and "\n" not in str(info.value)


def test_a_config_that_is_not_one_is_refused():
  for bad in (None, 3, "configs/collapse.py"):
    with pytest.raises(errors.ConfigError, match=r"is not allowed; pass a collapse config"):
      collapse.sweep(bad)


def test_numpy_integers_and_seeds_past_int32_are_accepted():
  config = configs.collapse.get_config("quick").to_dict()
  config.update(activations=("relu",), dims=(2, 3), seeds=np.int64(2), seed=2**31 + 5)
  config["manifold"]["points"] = 20
  spec = collapse.spec_from_config(config)
  assert spec.seeds == 2 and type(spec.seeds) is int and spec.seed == 2**31 + 5
  results = collapse.sweep(config)
  assert np.isfinite(results["collapsed_frac"]).all()


def test_run_reports_through_log_and_prints_nothing(tmp_path, capsys):
  config = configs.collapse.get_config("quick")
  config.activations, config.dims, config.seeds = ("relu",), (1, 2, 3), 2
  config.manifold.points, config.figure.dims = 50, (2, 3)
  lines = []
  out = collapse.run(config, str(tmp_path), log=lines.append)
  assert capsys.readouterr().out == ""
  assert lines[0].startswith("collapse sweep: spiral (d=2, 50 points) x 1 activations")
  assert any(line.startswith("  compiled in ") for line in lines)
  assert any(line.startswith("relu: relative errors") for line in lines)
  assert lines[-1].startswith(f"wrote {tmp_path}/collapse.csv")
  assert len(out["rows"]) == 3 and os.path.exists(tmp_path / "collapse.png")


def test_imports_run_one_way_and_leave_matplotlib_out():
  """collapse -> plotting, never back; importing the sweep does not import matplotlib."""
  code = ("import sys; import resjax.collapse; assert 'matplotlib' not in sys.modules; "
          "[sys.modules.pop(m) for m in list(sys.modules) if m.startswith('resjax')]; "
          "import resjax.plotting.collapse; assert 'resjax.collapse' not in sys.modules")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
  assert proc.returncode == 0, proc.stderr


def test_progress_comes_as_chunks_end_not_after_all_are_dispatched():
  from resjax.collapse import compiled as compiled_lib
  dispatched, seen = [], []

  def fake(x, d, k, s, seed):  # One chunk's metrics: its draws' k values; no QP left.
    dispatched.append(int(k[0]))
    return (np.asarray(k, np.float32)[:, None, None, None], np.zeros(len(k), bool),
            np.zeros((len(k), 1, 1)))

  program = compiled_lib.SweepProgram(fake, chunk=2)
  k = np.arange(20)
  out = program(None, None, k, k, 0, progress=lambda i, n: seen.append((i, n, len(dispatched))))
  np.testing.assert_array_equal(out[:, 0, 0, 0], k)  # Every chunk, in order.
  assert [(i, n) for i, n, _ in seen] == [(i, 10) for i in range(1, 11)]
  # When chunk i is reported, at most IN_FLIGHT chunks beyond it were dispatched.
  assert all(d <= min(i + compiled_lib.IN_FLIGHT, 10) for i, _, d in seen), seen


def test_a_chunk_that_leaves_a_qp_unsolved_runs_again_with_the_solver():
  from resjax.collapse import compiled as compiled_lib
  calls = []

  def program(name, value):
    def run(x, d, k, s, seed):  # Chunk 3 (draws 6, 7) leaves a QP to the solver.
      calls.append((name, int(k[0]) // 2))
      return (np.full((len(k), 1, 1, 1), value, np.float32), np.isin(k, (6, 7)),
              np.zeros((len(k), 1, 1)))
    return run

  compiles = []
  sweep = compiled_lib.SweepProgram(program("fast", 1.0), chunk=2, with_solver=lambda: (
      compiles.append(1), program("full", 2.0))[1])
  k = np.arange(20)
  out = sweep(None, None, k, k, 0)
  # Chunks 0-2 keep the fast program's numbers and 3 is run again with the
  # full one. 4 and 5 were dispatched before it was compiled (IN_FLIGHT = 2)
  # and left nothing: they are kept. Every chunk after them runs the full
  # program only.
  assert compiled_lib.IN_FLIGHT == 2
  np.testing.assert_array_equal(out[::2, 0, 0, 0], [1, 1, 1, 2, 1, 1, 2, 2, 2, 2])
  assert compiles == [1] and sweep.rerun_chunks == 1
  assert sorted(calls) == sorted([("fast", i) for i in range(6)] + [("full", i) for i in
                                                                    (3, 6, 7, 8, 9)]), calls
  # A program compiled with the solver from the start runs nothing twice.
  calls.clear()
  full_only = compiled_lib.SweepProgram(program("full", 2.0), chunk=2)
  np.testing.assert_array_equal(full_only(None, None, k, k, 0)[:, 0, 0, 0], [2.0] * 20)
  assert len(calls) == 10 and full_only.rerun_chunks == 0


def test_which_sweeps_start_with_the_solver():
  config = configs.collapse.get_config()
  spec = collapse.spec_from_config(config)
  x = manifolds.padded(spec.manifold, spec.points, spec.ds, seed=spec.seed, turns=spec.turns,
                       scale=spec.scale)
  from resjax.collapse import compiled as compiled_lib
  assert not compiled_lib.starts_with_solver(spec, x)  # The default sweep: none needs it.
  assert compiled_lib.starts_with_solver(spec, 20 * x)  # ReLU6 and tanh saturate.
  relu = collapse.SweepSpec(activations=("relu", "identity"), dims=(2,), seeds=1)
  assert not compiled_lib.starts_with_solver(relu, 20 * x)  # No bound but 0.
  ball = collapse.SweepSpec(activations=("relu",), dims=(2,), seeds=1, manifold="ball",
                            ds=(1, 3))
  assert compiled_lib.starts_with_solver(ball, x)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_starting_without_the_solver_gives_the_same_numbers(monkeypatch, scale):
  # At scale 3 some chunks leave QPs to the solver (checked: they are run
  # again), at scale 1 none does; either way the numbers are the ones of the
  # program compiled with the solver, bit for bit.
  from resjax.collapse import compiled as compiled_lib
  spec = collapse.SweepSpec(activations=("relu", "relu6", "tanh"), dims=(1, 2, 3, 5, 8, 20),
                            seeds=8, points=300, chunk=2, scale=scale)
  monkeypatch.setattr(compiled_lib, "starts_with_solver", lambda *_: True)
  want = collapse.sweep(spec)
  monkeypatch.setattr(compiled_lib, "starts_with_solver", lambda *_: False)
  got = collapse.sweep(spec)
  assert want["rerun_chunks"] == 0
  assert (got["rerun_chunks"] > 0) == (scale > 1), got["rerun_chunks"]
  for m in collapse.METRICS:
    np.testing.assert_array_equal(got[m], want[m], err_msg=m)
