"""The collapse sweep: padding, one compilation, theory, reference values, bad config.

Most tests share one sweep over a small grid that pads both n and d (balls in
d = 1, 2, 3 dims), so the whole file compiles only a handful of programs.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring

import configs.collapse
from resjax import activations, collapse, errors, manifolds, stats
from resjax.bench import collapse as bench

_ACTS = ("relu", "relu6", "gelu", "identity", "tanh")
_N_MAX = 12


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
  return collapse.Grid(activations=_ACTS, dims=(1, 2, 3, 4, 5, 6, 8, 10, _N_MAX), seeds=48,
                       manifold="ball", ds=(1, 2, 3), points=300, chunk=7)


@pytest.fixture(scope="module")
def swept(grid):
  return _compiles(lambda: collapse.sweep(grid))


@jax.jit
def _draw(seed, s):
  """The unpadded T [N_MAX, 3] of seed index s: T_n for d is its first n rows, d columns.

  (Column j is its own stream and a prefix of a draw equals the shorter draw:
  test_padded_draw_equals_unpadded_draw checks both.)
  """
  return collapse.draw_embedding(jax.random.fold_in(jax.random.key(seed), s), _N_MAX, 3)


def test_whole_grid_compiles_exactly_once(swept, grid):
  results, compiles = swept
  assert compiles == 1
  assert results["pinv_error"].shape == (3, len(_ACTS), len(grid.dims), grid.seeds)
  assert results["collapsed_frac_theory"].shape == (3, len(_ACTS), len(grid.dims))
  assert np.isfinite(results["refit_error"]).all()


def test_padded_draw_equals_unpadded_draw():
  @jax.jit
  def draws(key):
    return (jax.random.normal(key, (64, 3)), jax.random.normal(key, (5, 3)),
            collapse._draw_padded(key, 5, 2, 64, 3), collapse.draw_embedding(key, 5, 2))

  long, short, padded, t5 = map(np.asarray, draws(jax.random.key(7)))
  # The property the padding relies on (partitionable threefry): a longer
  # leading axis extends the stream, so a prefix equals the shorter draw.
  np.testing.assert_array_equal(long[:5], short)
  np.testing.assert_array_equal(padded[:5, :2], t5)
  assert np.all(padded[5:] == 0) and np.all(padded[:, 2:] == 0)


@pytest.mark.parametrize("s", [0, 1, 47])  # 47 sits in the padded last chunk
def test_padded_sweep_equals_unpadded_numpy(swept, grid, s):
  results, _ = swept
  t_NxD = np.asarray(_draw(grid.seed, s))
  for k, d in enumerate(grid.ds):
    x_PxD = manifolds.ball(grid.points, d, seed=grid.seed)
    for i, n in enumerate(grid.dims):
      for a, name in enumerate(_ACTS):
        want = collapse.reference_metrics(x_PxD, t_NxD[:n, :d], name)
        got = np.array([results[m][k, a, i, s] for m in collapse.METRICS])
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6,
                                   err_msg=f"{name} d={d} n={n}")


def test_padded_sweep_equals_unpadded_jax(swept, grid):
  results, _ = swept
  x_PxD = jnp.asarray(manifolds.ball(grid.points, 2, seed=grid.seed))
  n, i, a = 5, grid.dims.index(5), _ACTS.index("relu")
  t_SxNxD = np.stack([np.asarray(_draw(grid.seed, s))[:n, :2] for s in range(4)])
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
  assert results["oracle_error"][1, a, 0].mean() == pytest.approx(0.5, abs=0.1)
  assert results["oracle_error_theory"][1, a, 0] == pytest.approx(0.5)


def test_relu_errors_fall_with_n(swept, grid):
  results, _ = swept
  a = _ACTS.index("relu")
  i2, i5, i12 = (grid.dims.index(n) for n in (2, 5, 12))
  for k in range(len(grid.ds)):
    refit_N = results["refit_error"][k, a].mean(-1)
    assert refit_N[i2] > refit_N[i5] + 0.05 > refit_N[i12] + 0.1, refit_N
    # T_n are nested, so per seed the oracle's loss can only shrink as n grows.
    oracle_NxS = results["oracle_error"][k, a]
    assert np.all(np.diff(oracle_NxS, axis=0) <= 1e-6)
    assert oracle_NxS[i2].mean() > 10 * oracle_NxS[i12].mean()


@pytest.mark.parametrize("name", ["relu", "relu6", "gelu"])
def test_measured_fractions_match_binomial_theory(swept, grid, name):
  results, _ = swept
  a = _ACTS.index(name)
  tested = 0
  for measured, theory in (("collapsed_frac", "collapsed_frac_theory"),
                           ("dead_frac", "dead_frac_theory"),
                           ("oracle_error", "oracle_error_theory")):
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
  assert np.all(np.isnan(results["oracle_error_theory"][:, _ACTS.index("gelu")]))


def test_summary_rows_and_intervals(swept, grid):
  rows = collapse.summarize(swept[0])
  assert len(rows) == len(grid.ds) * len(_ACTS) * len(grid.dims)
  for col in ("activation", "d", "dim", "seeds", "pinv_error_mean", "pinv_error_lo",
              "pinv_error_hi", "refit_error_mean", "refit_error_lo", "refit_error_hi",
              "oracle_error_mean", "oracle_error_lo", "oracle_error_hi", "collapsed_frac",
              "collapsed_frac_theory", "dead_frac", "active_frac", "linear_frac"):
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
  grid = collapse.Grid(activations=("relu",), dims=(2, 15, 30, 256), seeds=24, points=400)
  refit_N = collapse.sweep(grid)["refit_error"][0, 0].mean(-1)
  for got, (lo, hi) in zip(refit_N, [(0.40, 0.52), (0.10, 0.20), (0.05, 0.13), (0.003, 0.03)]):
    assert lo < got < hi, refit_N


def test_quick_benchmark_times_all_three(capsys):
  figures = bench.run(quick=True)
  for key in ("a_compile_s", "a_steady_s", "b_s", "c_compile_s", "b_over_a_total",
              "c_over_a_total", "a_temp_mib", "a_peak_rss_mib"):
    assert figures[key] > 0, key
  assert "ratios" in capsys.readouterr().out


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
  grid = collapse.grid_from_config(config)
  assert grid.dims == tuple(range(1, 65)) and grid.seeds >= 64 and grid.points >= 1000
  assert grid.activations == activations.names()
  config.activations = ("relu,tanh",)  # what --config.activations=relu,tanh gives
  config.dims = ("5, 2,3",)
  grid = collapse.grid_from_config(config)
  assert grid.activations == ("relu", "tanh") and grid.dims == (2, 3, 5)


@pytest.mark.parametrize("field, value, needle", [
    ("activations", ("relu", "swish"), "activations='swish'"),
    ("dims", (2, 0), "dims contains 0"),
    ("dims", (2.5,), "dims contains 2.5"),
    ("seeds", 0, "seeds=0"),
    ("chunk", -1, "chunk=-1"),
])
def test_bad_config_is_one_readable_line(field, value, needle):
  config = configs.collapse.get_config()
  config[field] = value
  with pytest.raises(errors.ConfigError) as info:
    collapse.grid_from_config(config)
  assert needle in str(info.value) and "\n" not in str(info.value)
