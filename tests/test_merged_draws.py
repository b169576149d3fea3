"""merged_draws: a program's threefry hashes in one call per wave, the same numbers bit for bit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import embedded
from resjax import merged_draws
from resjax.grid import spec
from resjax.train import state as train_state


def _draws(seed, scale):
  """Draws of every kind a net's init and a study make, on old- and new-style keys."""
  raw = jax.random.PRNGKey(seed)
  a, b = jax.random.split(raw)
  new = jax.random.key(seed + 7)
  keys = jax.random.split(new, (2, 3))
  return {
      "normal": jax.random.normal(a, (5, 3)) * scale,
      "uniform": jax.random.uniform(jax.random.fold_in(b, 11), (7,)),
      "truncated": jax.random.truncated_normal(jax.random.fold_in(raw, seed), -2.0, 2.0, (4, 4)),
      "bits8": jax.random.bits(new, (9,), dtype=jnp.uint8),
      "bits16": jax.random.bits(jax.random.fold_in(new, 3), (2, 5), dtype=jnp.uint16),
      "per_key": jax.vmap(jax.vmap(lambda k: jax.random.normal(k, (3,))))(keys),
      "folded": jax.random.key_data(
          jax.vmap(lambda m: jax.random.fold_in(new, m))(jnp.arange(4, dtype=jnp.uint32))),
      "bernoulli": jax.random.bernoulli(b, 0.3, (6,)),
      "permutation": jax.random.permutation(a, 10),
      "split": jax.random.split(b, 3),
  }


def _same(x, y):
  assert jax.tree.structure(x) == jax.tree.structure(y)
  for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
    assert u.dtype == v.dtype and u.shape == v.shape
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_every_kind_of_draw_is_the_same_bit_for_bit_in_fewer_hash_calls():
  args = (np.uint32(3), np.float32(2.0))
  want = jax.jit(_draws)(*args)
  got = jax.jit(merged_draws.merged_draws(_draws))(*args)
  _same(got, want)
  before, after = merged_draws.threefry_calls(_draws, *args)
  assert after < before / 3, (before, after)


def test_a_grids_initial_states_are_the_same_bit_for_bit_in_three_hash_calls():
  config = embedded.get_config("spirals_mlp")
  config.model.depth = 3
  config.grid.seeds, config.grid.model.width = (0, 1), (4, 16)
  nets = spec.nets(config)
  inits = [jax.vmap(train_state.init_fn(nets[k], (2,), 2, None, None)) for k in (0, 2)]

  def init_all(seeds):
    keys = jax.vmap(train_state.rngs)(seeds)
    return [init(*keys).arrays() for init in inits]

  seeds = np.asarray([0, 1], np.uint32)
  _same(jax.jit(merged_draws.merged_draws(init_all))(seeds), jax.jit(init_all)(seeds))
  before, after = merged_draws.threefry_calls(init_all, seeds)
  assert (after, before > 20) == (3, True), (before, after)


def test_a_conv_nets_init_is_the_same_bit_for_bit():
  config = embedded.get_config("tiny")
  init = train_state.init_fn(config, (8, 8, 1), 10, None, None)
  keys = train_state.rngs(int(config.seed))
  _same(jax.jit(merged_draws.merged_draws(init))(*keys).arrays(), jax.jit(init)(*keys).arrays())


def test_waves_larger_than_a_call_are_split_and_stay_the_same(monkeypatch):
  args = (np.uint32(5), np.float32(1.0))
  want = jax.jit(_draws)(*args)
  _, whole = merged_draws.threefry_calls(_draws, *args)
  monkeypatch.setattr(merged_draws, "MAX_CALL", 8)
  _same(jax.jit(merged_draws.merged_draws(_draws))(*args), want)
  _, split = merged_draws.threefry_calls(_draws, *args)
  assert split > whole


@pytest.mark.parametrize("case", ["rbg keys", "effects"])
def test_programs_it_does_not_cover_are_traced_as_they_are(case):
  if case == "rbg keys":
    def fn(seed):
      return jax.random.normal(jax.random.key(seed, impl="rbg"), (4,))
  else:
    def fn(seed):
      jax.debug.callback(lambda s: None, seed, ordered=True)
      return jax.random.normal(jax.random.PRNGKey(seed), (4,))
  seed = np.uint32(1)
  np.testing.assert_array_equal(jax.jit(merged_draws.merged_draws(fn))(seed), jax.jit(fn)(seed))


def test_off_the_cpu_the_function_is_left_alone():
  assert merged_draws.merged_draws(_draws, "gpu") is _draws


def test_a_draw_made_twice_is_made_once_and_literals_are_told_apart_by_their_bits():
  def once(seed):
    a = jax.random.normal(jax.random.PRNGKey(seed), (3,))
    return a, a

  def twice(seed):  # Two models of a grid sharing a seed derive the same numbers.
    return tuple(jax.random.normal(jax.random.PRNGKey(seed), (3,)) for _ in range(2))

  seed = np.uint32(4)
  size = [len(jax.make_jaxpr(merged_draws.merged_draws(f))(seed).jaxpr.eqns) for f in (once, twice)]
  assert size[0] == size[1], size
  _same(jax.jit(merged_draws.merged_draws(twice))(seed), jax.jit(twice)(seed))

  def zeros(x):
    return x * 0.0, x * -0.0  # Equal as floats, not as bits: -0.0 and 0.0 for x = -1.

  got = jax.jit(merged_draws.merged_draws(zeros))(np.float32(-1.0))
  assert [np.signbit(v) for v in got] == [True, False]
