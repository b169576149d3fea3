"""The 'manifold' dataset: a d-dimensional task embedded in a fixed input dimension."""
import numpy as np
import pytest
from sklearn import neighbors

from resjax import data, errors


def _load(d, **options):
  return data.load("manifold", seed=0, **{"d": d, "num_train": 3000, "num_test": 1000, **options})


@pytest.mark.parametrize("d", [1, 3, 6])
def test_inputs_have_rank_d_in_the_ambient_dimension(d):
  ds = _load(d, ambient=16)
  assert ds.train.inputs.shape == (3000, 16) and ds.train.inputs.dtype == np.float32
  assert ds.test.inputs.shape == (1000, 16) and ds.input_shape == (16,)
  assert ds.train.labels.dtype == np.int32 and ds.num_classes == 3
  for x in (ds.train.inputs, (ds.train.inputs - ds.mean) / ds.std):  # raw and as the net sees it
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    assert s[d - 1] > 0.1 * s[0], s  # d directions of comparable spread ...
    if d < 16:
      assert s[d] < 1e-5 * s[0], s  # ... and nothing outside their span


def test_classes_are_balanced_and_every_latent_direction_matters():
  ds = _load(3, num_classes=3)
  for split in (ds.train, ds.test):
    share = np.bincount(split.labels, minlength=3) / len(split)
    assert np.all(np.abs(share - 1 / 3) < 0.04), share
  # Nearest neighbours on the full inputs vs on the inputs with one latent direction
  # (any one: a random unit vector of the span) projected away.
  x, xt = ds.train.inputs, ds.test.inputs
  basis = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][:3]  # [3, 16], the span
  full = neighbors.KNeighborsClassifier(5).fit(x, ds.train.labels).score(xt, ds.test.labels)
  assert full > 0.85, full
  rng = np.random.default_rng(0)
  for _ in range(3):
    v = rng.standard_normal(3) @ basis
    v /= np.linalg.norm(v)
    drop = lambda a, v=v: a - np.outer(a @ v, v)
    lost = neighbors.KNeighborsClassifier(5).fit(drop(x), ds.train.labels).score(
        drop(xt), ds.test.labels)
    assert lost < full - 0.15, (full, lost)


def test_reproducible_by_seed_with_its_own_embedding_per_d():
  a, b = _load(3), _load(3)
  np.testing.assert_array_equal(a.train.inputs, b.train.inputs)
  np.testing.assert_array_equal(a.test.labels, b.test.labels)
  other = data.load("manifold", seed=1, d=3, num_train=3000, num_test=1000)
  assert not np.allclose(other.train.inputs, a.train.inputs)
  assert not np.array_equal(a.train.inputs[:5], a.test.inputs[:5])  # independent splits
  # The d = 1 direction is not inside the d = 3 span (independent embeddings).
  one = _load(1).train.inputs
  u = np.linalg.svd(one - one.mean(0), full_matrices=False)[2][0]
  span = np.linalg.svd(a.train.inputs - a.train.inputs.mean(0), full_matrices=False)[2][:3]
  assert np.linalg.norm(span @ u) < 0.99


@pytest.mark.parametrize("options,match", [
    (dict(d=0), "data.d=0"), (dict(d=4, ambient=3), "data.ambient=3"),
    (dict(num_classes=1), "data.num_classes=1"), (dict(turns=2.0), "not an option"),
])
def test_bad_options_are_config_errors(options, match):
  with pytest.raises(errors.ConfigError, match=match):
    data.load("manifold", **options)


def test_shift_makes_the_labels_not_even_and_keeps_their_balance():
  even, shifted = _load(2), _load(2, shift=0.25)
  np.testing.assert_array_equal(even.train.inputs, shifted.train.inputs)  # same Q, same points
  # Labels of u and -u: the inputs are linear in u, so -x is the point -u.
  for ds, even_expected in ((even, True), (shifted, False)):
    x, y = ds.train.inputs, ds.train.labels
    nearest = neighbors.KNeighborsClassifier(1).fit(x, y).predict(-x)
    agree = np.mean(nearest == y)
    assert (agree > 0.9) if even_expected else (agree < 0.7), agree
    share = np.bincount(y, minlength=3) / len(y)
    assert np.all(np.abs(share - 1 / 3) < 0.04), share


@pytest.mark.parametrize("shift", [-0.1, 2.0, "x"])
def test_shift_outside_one_period_is_refused(shift):
  with pytest.raises(errors.ConfigError, match="shift"):
    _load(2, shift=shift)
