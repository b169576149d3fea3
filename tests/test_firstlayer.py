"""FirstLayerNet (the collapse study's model): net k of a grid over `first` x
`width` trains exactly like the single run with its settings."""
import jax
import ml_collections
import numpy as np
import pytest

from configs import embedded
from resjax import errors, grid, models
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
