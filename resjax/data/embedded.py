"""Datasets that ship with the code: 2-D spirals, 8x8 digits, a d-dimensional manifold task."""
from __future__ import annotations

import numpy as np

from resjax import schema
from resjax.data.dataset import Split


_SPIRAL_DEFAULTS = dict(num_arms=3, noise=0.03, turns=1.5, num_train=1500, num_test=1500)
# Points lie within radius 1: noise and turns beyond 1e6 only make float32 noise
# (a million turns put neighbouring points of an arm far apart already).
SPIRAL_RULES = {"num_arms": schema.Int(2, 10_000), "noise": schema.Float(0, 1e6),
                "turns": schema.Float(0, 1e6, low_open=True), "num_train": schema.POSITIVE,
                "num_test": schema.POSITIVE}
# Arms start this far from the origin, where they would otherwise merge.
_SPIRAL_INNER_RADIUS = 0.1


def spirals(seed: int, *, num_arms: int, noise: float, turns: float, num_train: int,
            num_test: int) -> tuple[Split, Split, int]:
  """K interleaved 2-D spiral arms; the class is the arm.

  A point at position t ~ U(0, 1) along arm k sits at radius
  0.1 + 0.9 t and angle 2 pi (k / K + turns * t), plus isotropic Gaussian
  noise of std `noise`.
  Train and test come from independent streams of the same seed.
  """
  def draw(n: int, stream: int) -> Split:
    rng = np.random.default_rng([seed, stream])
    labels = rng.permutation(np.arange(n) % num_arms)  # balanced classes
    t = rng.uniform(0.0, 1.0, n)
    angle = 2 * np.pi * (labels / num_arms + turns * t)
    radius = _SPIRAL_INNER_RADIUS + (1 - _SPIRAL_INNER_RADIUS) * t
    x_Nx2 = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    x_Nx2 += noise * rng.standard_normal((n, 2))
    return Split(x_Nx2.astype(np.float32), labels.astype(np.int32))

  return draw(num_train, 0), draw(num_test, 1), num_arms


_DIGITS_DEFAULTS = dict(num_test=360)
DIGITS_COUNT = 1797  # scikit-learn's digits.
DIGITS_RULES = {"num_test": schema.Int(1, DIGITS_COUNT - 1)}


def digits(seed: int, *, num_test: int) -> tuple[Split, Split, int]:
  """scikit-learn's 1,797 8x8 handwritten digits, as uint8 [N, 8, 8, 1] in 0..255."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  n = len(digits.target)
  assert n == DIGITS_COUNT, n
  # Raw values are integers 0..16.
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng([seed, 2]).permutation(n)
  test, train = order[:num_test], order[num_test:]
  return Split(images[train], labels[train]), Split(images[test], labels[test]), 10


_MANIFOLD_DEFAULTS = dict(d=2, ambient=16, num_classes=3, num_train=1500, num_test=1500)
MANIFOLD_RULES = {"d": schema.Int(1, 10_000), "ambient": schema.Int(1, 100_000),
                  "num_classes": schema.Int(2, 10_000), "num_train": schema.POSITIVE,
                  "num_test": schema.POSITIVE}
# Latent draws that fix the class thresholds (quantiles of f), whatever the split sizes.
_MANIFOLD_REFERENCE = 1 << 16


def manifold(seed: int, *, d: int, ambient: int, num_classes: int, num_train: int,
             num_test: int) -> tuple[Split, Split, int]:
  """A d-dimensional task embedded in `ambient` dimensions: inputs of rank d.

  Latent u ~ U[-1, 1]^d; the input is x = Q u for a fixed random orthonormal
  Q [ambient, d] drawn from (seed, d, ambient), so every d gets its own
  embedding. The class is the quantile bin of f(u) = sum_j cos(pi u_j) (every
  latent coordinate matters equally; thresholds from a fixed reference draw,
  so the classes are balanced in expectation). Train and test come from
  independent streams of the same seed.
  """
  schema.check_value("data.ambient", ambient, schema.Int(d))  # The one rule that depends on d.
  g_AxD = np.random.default_rng([seed, 3, d, ambient]).standard_normal((ambient, d))
  q_AxD, _ = np.linalg.qr(g_AxD)

  def f(u_NxD: np.ndarray) -> np.ndarray:
    return np.cos(np.pi * u_NxD).sum(axis=1)

  reference = np.random.default_rng([seed, 2, d]).uniform(-1.0, 1.0, (_MANIFOLD_REFERENCE, d))
  cuts = np.quantile(f(reference), np.arange(1, num_classes) / num_classes)

  def draw(n: int, stream: int) -> Split:
    u_NxD = np.random.default_rng([seed, stream, d]).uniform(-1.0, 1.0, (n, d))
    labels = np.searchsorted(cuts, f(u_NxD)).astype(np.int32)
    return Split((u_NxD @ q_AxD.T).astype(np.float32), labels)

  return draw(num_train, 0), draw(num_test, 1), int(num_classes)


# name -> (generator(seed, **options), default options, their rules)
GENERATORS = {"spirals": (spirals, _SPIRAL_DEFAULTS, SPIRAL_RULES),
              "digits": (digits, _DIGITS_DEFAULTS, DIGITS_RULES),
              "manifold": (manifold, _MANIFOLD_DEFAULTS, MANIFOLD_RULES)}
