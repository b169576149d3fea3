"""program_cache: a traced program kept on disk, so a rerun skips tracing and gets the same numbers."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resjax import program_cache

TRACES = []


def _fn(x, y, *, power):
  TRACES.append(power)  # Runs once per trace, never when the program comes from disk.
  return jnp.sum(jnp.linalg.svd(x @ x.T, compute_uv=False) ** power) + y


def _args(n=4):
  x = np.arange(n * 3, dtype=np.float32).reshape(n, 3) / 7
  return x, np.float32(0.5)


@pytest.fixture(autouse=True)
def _no_traces():
  TRACES.clear()


def test_a_rerun_loads_the_program_without_tracing_and_gets_the_same_numbers(tmp_path):
  args = _args()
  want = jax.jit(_fn, static_argnames="power")(*args, power=2)
  TRACES.clear()
  first = program_cache.compile(_fn, args, static={"power": 2}, directory=str(tmp_path))
  assert TRACES == [2] and len(os.listdir(tmp_path)) == 1
  again = program_cache.compile(_fn, args, static={"power": 2}, directory=str(tmp_path))
  assert TRACES == [2]  # Not traced again.
  assert np.asarray(first(*args)) == np.asarray(again(*args)) == np.asarray(want)
  assert "jit__fn" in again.as_text().splitlines()[0]  # Named after the function.


def test_the_key_follows_static_arguments_shapes_and_options():
  args = _args()
  base = program_cache.key(_fn, args, {"power": 2}, None)
  assert base == program_cache.key(_fn, _args(), {"power": 2}, None)
  assert base != program_cache.key(_fn, args, {"power": 3}, None)
  assert base != program_cache.key(_fn, _args(5), {"power": 2}, None)
  assert base != program_cache.key(_fn, args, {"power": 2}, {"xla_backend_optimization_level": 1})


def test_the_key_follows_flax_flags():
  import flax
  args = _args()
  base = program_cache.key(_fn, args, {"power": 2}, None)
  before = flax.config.flax_fix_rng_separator
  flax.config.update("flax_fix_rng_separator", not before)
  try:
    assert program_cache.key(_fn, args, {"power": 2}, None) != base
  finally:
    flax.config.update("flax_fix_rng_separator", before)
  assert program_cache.key(_fn, args, {"power": 2}, None) == base


def test_the_key_follows_the_sources(monkeypatch):
  args = _args()
  base = program_cache.key(_fn, args, {"power": 2}, None)
  monkeypatch.setattr(program_cache, "sources_digest", lambda: "edited")
  assert program_cache.key(_fn, args, {"power": 2}, None) != base


def test_an_unreadable_entry_is_traced_again_and_replaced(tmp_path):
  args = _args()
  want = np.asarray(jax.jit(_fn, static_argnames="power")(*args, power=2))
  TRACES.clear()
  path = tmp_path / (program_cache.key(_fn, args, {"power": 2}, None) + ".bin")
  path.write_bytes(b"not a program")
  got = program_cache.compile(_fn, args, static={"power": 2}, directory=str(tmp_path))
  assert TRACES == [2] and path.read_bytes() != b"not a program"
  assert np.asarray(got(*args)) == want
  program_cache.compile(_fn, args, static={"power": 2}, directory=str(tmp_path))
  assert TRACES == [2]  # The replaced entry loads.


def test_without_a_directory_nothing_is_kept(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  got = program_cache.compile(_fn, _args(), static={"power": 1}, directory="")
  assert float(got(*_args())) > 0 and not os.listdir(tmp_path)


def _host(x):
  return jax.pure_callback(lambda v: np.asarray(v) * 2, jax.ShapeDtypeStruct(x.shape, x.dtype), x)


def test_a_program_that_cannot_be_exported_is_compiled_as_jit_would(tmp_path):
  x = np.ones(3, np.float32)
  got = program_cache.compile(_host, (x,), directory=str(tmp_path))
  np.testing.assert_array_equal(got(x), 2 * x)
  assert not os.listdir(tmp_path)


@pytest.fixture
def cache_dir(tmp_path):
  before = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", str(tmp_path))
  yield tmp_path
  jax.config.update("jax_compilation_cache_dir", before)


def test_grid_initial_states_from_the_kept_program_equal_the_traced_ones(cache_dir):
  from configs import embedded
  from resjax import grid, train
  config = embedded.get_config("spirals_mlp")
  config.model.depth = 3  # What is kept does not depend on the depth (spirals_mlp: 24).
  config.grid.seeds, config.grid.model.width = (0, 1), (4, 8)
  nets = grid.nets(config)
  jax.config.update("jax_compilation_cache_dir", "")
  want = train.initial_states(nets, (2,), 3)
  jax.config.update("jax_compilation_cache_dir", str(cache_dir))
  for _ in range(2):  # Computed and kept, then read back.
    got = train.initial_states(nets, (2,), 3)
    assert os.listdir(cache_dir / program_cache.SUBDIR)
    for g, w in zip(got, want):
      arrays = lambda s: {**s.arrays(), "hparams": s.hparams, "gates": s.gates, "mask": s.mask}
      assert jax.tree.structure(arrays(g)) == jax.tree.structure(arrays(w))
      jax.tree.map(np.testing.assert_array_equal, arrays(g), arrays(w))
      # The static fields: a new model of the same config each time, as a trace makes.
      assert repr(g.apply_fn.__self__) == repr(w.apply_fn.__self__)
      assert g.preprocess == w.preprocess and repr(g.optimizer) == repr(w.optimizer)
  kept = [n for n in os.listdir(cache_dir / program_cache.SUBDIR) if n.endswith(".out")]
  assert len(kept) == 1  # The states themselves, beside the program.
  config.grid.seeds = (2, 3)  # Other seeds: the same program, other states.
  other = grid.nets(config)
  got = train.initial_states(other, (2,), 3)
  jax.config.update("jax_compilation_cache_dir", "")
  want = train.initial_states(other, (2,), 3)
  for g, w in zip(got, want):
    jax.tree.map(np.testing.assert_array_equal, g.arrays(), w.arrays())
  first = jax.tree.leaves(train.initial_states(nets, (2,), 3)[0].params)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got[0].params), first))


def test_models_sharing_seeds_in_other_patterns_keep_their_own_states(cache_dir):
  # Models whose seeds coincide share one input of the kept program: two lists
  # with the same models and the same distinct seeds, shared differently, must
  # not read each other's states.
  from configs import embedded
  from resjax import sharding, train

  def net(width, seed):
    config = embedded.get_config("spirals_mlp")
    config.model.width, config.model.depth, config.seed = width, 3, seed
    return config

  mesh = sharding.make_mesh(jax.devices()[:1])
  shared = [net(4, 0), net(4, 1), net(8, 0), net(8, 2)]
  for nets in (shared + [net(16, 0), net(16, 1)], shared + [net(16, 0), net(16, 2)]):
    got = train.initial_states(nets, (2,), 3)
    for g, config in zip(got, nets):
      want = train.create_train_state(config, mesh, (2,), 3)
      jax.tree.map(np.testing.assert_array_equal, g.arrays(), jax.device_get(want.arrays()))


def test_outputs_are_read_back_without_tracing_or_running(tmp_path, monkeypatch):
  args = _args()
  want = np.asarray(jax.jit(_fn, static_argnames="power")(*args, power=2))
  TRACES.clear()
  first = program_cache.outputs(_fn, args, static={"power": 2}, directory=str(tmp_path))
  assert TRACES == [2] and isinstance(first, np.ndarray) and first == want
  monkeypatch.setattr(jax, "jit", None)  # Nothing may compile now.
  assert program_cache.outputs(_fn, args, static={"power": 2}, directory=str(tmp_path)) == want
  assert TRACES == [2]
  other = (args[0], np.float32(1.5))  # Other values of the same shapes: computed.
  monkeypatch.undo()
  assert program_cache.outputs(_fn, other, static={"power": 2},
                               directory=str(tmp_path)) == want + 1
  assert len([n for n in os.listdir(tmp_path) if n.endswith(".out")]) == 2


def test_outputs_without_a_directory_are_kept_in_memory_as_copies(monkeypatch):
  monkeypatch.setattr(program_cache, "_MEMORY", type(program_cache._MEMORY)())
  x, _ = _args()
  args = (x, np.float32(2.5))  # Values no other test uses.
  first = program_cache.outputs(_fn, args, static={"power": 3}, directory="")
  assert TRACES == [3] and len(program_cache._MEMORY) == 1
  monkeypatch.setattr(jax, "jit", None)  # Nothing may compile now.
  again = program_cache.outputs(_fn, args, static={"power": 3}, directory="")
  (kept,) = next(iter(program_cache._MEMORY.values()))[1]
  assert TRACES == [3] and again == first and not np.shares_memory(again, kept)
  monkeypatch.undo()  # Kept no more: computed again.
  monkeypatch.setattr(program_cache, "_MEMORY", type(program_cache._MEMORY)())
  monkeypatch.setattr(program_cache, "MEMORY_TOTAL_BYTES", 0)
  program_cache.outputs(_fn, args, static={"power": 3}, directory="")
  assert TRACES == [3, 3] and not program_cache._MEMORY


def test_outputs_over_the_limit_or_unreadable_are_computed(tmp_path):
  args = _args()
  program_cache.outputs(_fn, args, static={"power": 2}, directory=str(tmp_path), max_bytes=1)
  assert not [n for n in os.listdir(tmp_path) if n.endswith(".out")]
  want = program_cache.outputs(_fn, args, static={"power": 2}, directory=str(tmp_path))
  (path,) = [tmp_path / n for n in os.listdir(tmp_path) if n.endswith(".out")]
  path.write_bytes(b"garbage")
  TRACES.clear()
  assert program_cache.outputs(_fn, args, static={"power": 2}, directory=str(tmp_path)) == want
  assert TRACES == [2] and path.read_bytes() != b"garbage"  # Computed again and replaced.


def test_outputs_are_kept_apart_per_xla_flags(tmp_path, monkeypatch):
  args = _args()
  program_cache.outputs(_fn, args, static={"power": 2}, directory=str(tmp_path))
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")  # Could change the bits.
  TRACES.clear()
  program_cache.outputs(_fn, args, static={"power": 2}, directory=str(tmp_path))
  assert TRACES == [2]  # Not read from the entry of other flags.
  assert len([n for n in os.listdir(tmp_path) if n.endswith(".out")]) == 2


def test_kept_outputs_beyond_the_total_go_oldest_first(tmp_path, monkeypatch):
  x, _ = _args()
  program_cache.outputs(_fn, (x, np.float32(0.0)), static={"power": 2}, directory=str(tmp_path))
  (one,) = [n for n in os.listdir(tmp_path) if n.endswith(".out")]
  size = os.path.getsize(tmp_path / one)
  monkeypatch.setattr(program_cache, "KEPT_TOTAL_BYTES", 2 * size)
  os.utime(tmp_path / one, (1, 1))  # The oldest.
  for y in (1.0, 2.0):
    program_cache.outputs(_fn, (x, np.float32(y)), static={"power": 2}, directory=str(tmp_path))
  left = [n for n in os.listdir(tmp_path) if n.endswith(".out")]
  assert len(left) == 2 and one not in left
