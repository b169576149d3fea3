"""Datasets that ship with the code: 2-D spirals, 8x8 digits, a d-dimensional
manifold task, MNIST-1D."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import io
import json
import os
import random
import threading

import numpy as np

from resjax import files, schema
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


_MANIFOLD_DEFAULTS = dict(d=2, ambient=16, num_classes=3, num_train=1500, num_test=1500,
                          shift=0.0)
MANIFOLD_RULES = {"d": schema.Int(1, 10_000), "ambient": schema.Int(1, 100_000),
                  "num_classes": schema.Int(2, 10_000), "num_train": schema.POSITIVE,
                  "num_test": schema.POSITIVE,
                  "shift": schema.Float(0.0, 2.0, high_open=True, fix=(
                      "use a number in [0, 2) (the label function's shift in latent units; "
                      "its period is 2; 0 = even labels, 0.25 = neither even nor odd)"))}
# Latent draws that fix the class thresholds (quantiles of f), whatever the split sizes.
_MANIFOLD_REFERENCE = 1 << 16


def manifold(seed: int, *, d: int, ambient: int, num_classes: int, num_train: int,
             num_test: int, shift: float = 0.0) -> tuple[Split, Split, int]:
  """A d-dimensional task embedded in `ambient` dimensions: inputs of rank d.

  Latent u ~ U[-1, 1]^d; the input is x = Q u for a fixed random orthonormal
  Q [ambient, d] drawn from (seed, d, ambient), so every d gets its own
  embedding. The class is the quantile bin of f(u) = sum_j cos(pi (u_j - shift))
  (every latent coordinate matters equally; thresholds from a fixed reference
  draw, so the classes are balanced in expectation). shift = 0 makes the labels
  even in every u_j (f(u) = f(-u)); any other shift in (0, 2) but 1 does not
  (0.5: odd; 0.25: neither). pi u_j spans one period, so every shift gives each
  term, and f, the same distribution. Train and test come from independent
  streams of the same seed, which also draws Q.
  """
  schema.check_value("data.ambient", ambient, schema.Int(d))  # The one rule that depends on d.
  g_AxD = np.random.default_rng([seed, 3, d, ambient]).standard_normal((ambient, d))
  q_AxD, _ = np.linalg.qr(g_AxD)

  def f(u_NxD: np.ndarray) -> np.ndarray:
    return np.cos(np.pi * (u_NxD - shift)).sum(axis=1)

  reference = np.random.default_rng([seed, 2, d]).uniform(-1.0, 1.0, (_MANIFOLD_REFERENCE, d))
  cuts = np.quantile(f(reference), np.arange(1, num_classes) / num_classes)

  def draw(n: int, stream: int) -> Split:
    u_NxD = np.random.default_rng([seed, stream, d]).uniform(-1.0, 1.0, (n, d))
    labels = np.searchsorted(cuts, f(u_NxD)).astype(np.int32)
    return Split((u_NxD @ q_AxD.T).astype(np.float32), labels)

  return draw(num_train, 0), draw(num_test, 1), int(num_classes)


# The `mnist1d` package's seed (`get_dataset_args().seed`): the published dataset.
MNIST1D_SEED = 42
# `make_dataset` draws from NumPy's and Python's global random state, which is
# saved and restored around it; one generation at a time, so no other loader
# of this process reads or moves that state meanwhile.
_MNIST1D_LOCK = threading.Lock()


_MNIST1D_KEYS = ("x", "y", "x_test", "y_test")


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(generation_seed: int) -> tuple[np.ndarray, ...]:
  """(x_train, y_train, x_test, y_test) of `make_dataset` at `generation_seed`,
  read-only, generated once per process, and kept beside the compilation cache
  when there is one (`_mnist1d_kept`): a later process reads them instead."""
  from mnist1d import data as mnist1d_data  # pylint: disable=g-import-not-at-top

  args = mnist1d_data.get_dataset_args()
  args.seed = generation_seed
  path = _mnist1d_kept(dict(vars(args)))
  made = _read_kept(path)
  if made is None:
    with _MNIST1D_LOCK:
      np_state, py_state = np.random.get_state(), random.getstate()
      try:
        made = mnist1d_data.make_dataset(args)
      finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    made = {k: np.asarray(made[k], np.float32 if k.startswith("x") else np.int32)
            for k in _MNIST1D_KEYS}
    if path:
      buffer = io.BytesIO()
      np.savez(buffer, **made)
      with contextlib.suppress(OSError):  # A read-only cache: only not kept.
        files.write_bytes(path, buffer.getvalue())
  out = (made["x"][..., None], made["y"], made["x_test"][..., None], made["y_test"])
  for a in out:
    a.setflags(write=False)
  return out


def _mnist1d_kept(args: dict) -> str | None:
  """Where the set `make_dataset(args)` generates is kept: under the compilation
  cache (`program_cache.cache_dir`), named by the arguments and the versions of
  mnist1d, NumPy and SciPy that generate it; None when the cache is off."""
  from resjax import program_cache  # pylint: disable=g-import-not-at-top  (imports JAX)

  directory = program_cache.cache_dir()
  if not directory:
    return None
  versions = [(p, importlib.metadata.version(p)) for p in ("mnist1d", "numpy", "scipy")]
  digest = hashlib.sha256(json.dumps([args, versions], sort_keys=True, default=str).encode())
  return os.path.join(directory, f"mnist1d-{digest.hexdigest()[:32]}.npz")


def _read_kept(path: str | None) -> dict[str, np.ndarray] | None:
  """The kept arrays at `path`, or None when absent or not a whole MNIST-1D set."""
  if not path:
    return None
  try:
    with np.load(path, allow_pickle=False) as kept:
      made = {k: np.asarray(kept[k]) for k in _MNIST1D_KEYS}
  except Exception:  # pylint: disable=broad-except  # Absent, cut short or foreign.
    return None
  x, y, x_test, y_test = (made[k] for k in _MNIST1D_KEYS)
  whole = (x.dtype == x_test.dtype == np.float32 and y.dtype == y_test.dtype == np.int32
           and x.ndim == x_test.ndim == 2 and x.shape[1] == x_test.shape[1]
           and y.shape == x.shape[:1] and y_test.shape == x_test.shape[:1])
  return made if whole else None


def mnist1d(seed: int) -> tuple[Split, Split, int]:
  """MNIST-1D (Greydanus 2020): float32 [N, 40, 1] sequences of 10 classes,
  4,000 train / 1,000 test, from the `mnist1d` package's `make_dataset` with
  its default arguments, offline.

  `seed` shifts the package's generation seed: it draws with 42 + seed
  (mod 2**32), so seed 0 is the published dataset and any other seed a fresh
  draw of every random transform (padding, scale, translation, noise, shear)
  and of the order and split, from the same ten templates. Generated once per
  process and seed; the global random states are left as they were.
  """
  x, y, x_test, y_test = _mnist1d_arrays((MNIST1D_SEED + seed) % 2**32)
  return Split(x.copy(), y.copy()), Split(x_test.copy(), y_test.copy()), 10


# name -> (generator(seed, **options), default options, their rules)
GENERATORS = {"spirals": (spirals, _SPIRAL_DEFAULTS, SPIRAL_RULES),
              "digits": (digits, _DIGITS_DEFAULTS, DIGITS_RULES),
              "manifold": (manifold, _MANIFOLD_DEFAULTS, MANIFOLD_RULES),
              "mnist1d": (mnist1d, {}, {})}
