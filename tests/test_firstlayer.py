"""FirstLayerNet (the collapse study's model): net k of a grid over `first` x
`width` trains exactly like the single run with its settings."""
import jax
import ml_collections
import numpy as np
import pytest

from configs import embedded
from resjax import errors, grid, models, train
from tests.test_grid import _check_equal


def _config():
  config = embedded.get_config("tiny_mlp")
  config.data.num_train, config.data.num_test = 256, 64
  config.model = ml_collections.ConfigDict(dict(
      name="firstlayer", width=4, first="relu", head_width=8, head_depth=2,
      activation="relu"))
  return config


def test_variants_compute_what_they_say():
  x = jax.random.normal(jax.random.key(0), (5, 2))
  outs = {}
  for first in models.FIRST_LAYERS:
    model = models.build("firstlayer", 3, width=4, first=first, head_width=8)
    variables = model.init(jax.random.key(1), x)
    outs[first] = variables
    logits, taps = model.apply(variables, x, mutable=["preacts", "shortcut", "branch"])
    assert logits.shape == (5, 3)
    names = set(taps["preacts"])
    assert names == {"relu": {"first", "head0", "head1"}, "linear": {"head0", "head1"},
                     "residual": {"first_branch", "head0", "head1"}}[first]
  # The shared weights start equal across variants.
  for name in ("first_dense", "head0_dense", "head1_dense", "classifier"):
    np.testing.assert_array_equal(outs["relu"]["params"][name]["kernel"],
                                  outs["residual"]["params"][name]["kernel"])
  with pytest.raises(errors.ConfigError, match="model.first"):
    models.build("firstlayer", 3, first="tanh")


def test_first_by_width_grid_equals_single_runs():
  config = _config()
  config.grid.model.first = ("relu", "linear", "residual")
  config.grid.model.width = (2, 5)
  assert len(grid.nets(config)) == 6
  _check_equal(config, jax.devices()[:2])


def test_first_grid_with_seeds_equals_single_runs():
  config = _config()
  config.grid.model.first = ("linear", "residual")
  config.grid.seeds = (0, 1)
  _check_equal(config, jax.devices()[:1])


def test_first_bias_init_sets_the_first_bias_and_zero_changes_nothing():
  x = jax.random.normal(jax.random.key(0), (5, 2))
  today = models.build("firstlayer", 3, width=4).init(jax.random.key(1), x)
  zero = models.build("firstlayer", 3, width=4, first_bias_init=0.0).init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, today, zero)
  half = models.build("firstlayer", 3, width=4, first_bias_init=0.5).init(jax.random.key(1), x)
  np.testing.assert_array_equal(half["params"]["first_dense"]["bias"], np.full(4, 0.5))
  np.testing.assert_array_equal(half["params"]["first_dense"]["kernel"],
                                today["params"]["first_dense"]["kernel"])
  for bad in (float("nan"), "0.5", True):
    with pytest.raises(errors.ConfigError, match="model.first_bias_init="):
      models.build("firstlayer", 3, first_bias_init=bad)


def test_first_bias_init_grid_equals_single_runs():
  config = _config()  # The config leaves the field at its default; the grid adds it.
  assert "first_bias_init" not in config.model
  config.grid.model.first_bias_init = (0, 0.5)  # As --config.grid.model.first_bias_init=0,0.5.
  config.grid.model.first = ("relu", "residual")
  assert not grid.validate(config)
  nets = grid.nets(config)
  assert [(n.model.first, n.model.first_bias_init) for n in nets] == [
      ("relu", 0), ("relu", 0.5), ("residual", 0), ("residual", 0.5)]
  _check_equal(config, jax.devices()[:2])


def test_first_bias_init_grid_saves_and_resumes(tmp_path):
  from resjax import checkpoints
  config = _config()
  config.grid.model.first_bias_init = (0.0, 0.5)
  config.train.checkpoint_every = 2
  whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
  train.train_and_evaluate(config, whole)
  train.train_and_evaluate(config, parts, should_stop=lambda step: step == 2)
  train.train_and_evaluate(config, parts)
  a, b = checkpoints.load(whole)[1], checkpoints.load(parts)[1]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a.arrays()),
               jax.device_get(b.arrays()))
  net, state = checkpoints.load(whole, net=1)
  assert net.model.first_bias_init == 0.5 and int(state.step) == 4
