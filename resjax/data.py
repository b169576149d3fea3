"""Datasets held in host memory, index streams, and on-device augmentation.

Host side (NumPy): `load` reads a whole dataset into memory, either from
prepared tfds ArrayRecord files (random access, no TensorFlow at read time) or
from a generator that ships with the code ('spirals', 'digits').
`train_indices` / `local_rows` / `eval_batches` turn it into batches that are a
pure function of (seed, step), so a resumed run sees exactly the same data.

Device side (jit-able): `preprocess` normalizes (per channel, or by the
per-pixel mean as He et al. do: `NORMALIZE`), `augment` draws a random
pad-and-crop and horizontal flip per example.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import json
import math
import os
import queue
import threading
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from resjax import errors

TFDS_NAMES = ("cifar10", "cifar100", "mnist", "fashion_mnist", "svhn_cropped")
EMBEDDED_NAMES = ("spirals", "digits", "manifold")
NAMES = TFDS_NAMES + EMBEDDED_NAMES
# How `load` computes the statistics `preprocess` applies (`config.data.normalize`).
NORMALIZE = ("per_channel", "per_pixel_mean")

# Examples deserialized per batched ArrayRecord read.
_READ_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in host memory.

  inputs: uint8 [N, H, W, C] for images, float32 [N, D] for features.
  labels: int32 [N].
  """
  inputs: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    errors.check(len(self.inputs) == len(self.labels),
                 f"Split has {len(self.inputs)} inputs but {len(self.labels)} labels")

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A train and a test split plus the statistics used to normalize them.

  mean/std are float32, computed on the train split (images in 0..255 units):
  normalize='per_channel': mean and std per channel [C] (per feature [D]);
  normalize='per_pixel_mean': mean per pixel [H, W, C] ([D]), std per channel
  [C] of the inputs around that mean (`pixel_stats`).
  """
  name: str
  train: Split
  test: Split
  num_classes: int
  mean: np.ndarray
  std: np.ndarray
  normalize: str = "per_channel"

  @property
  def is_image(self) -> bool:
    return self.train.inputs.ndim == 4

  @property
  def input_shape(self) -> tuple[int, ...]:
    """Shape of one example (no batch axis)."""
    return tuple(self.train.inputs.shape[1:])


# ----------------------------------------------------------------------------
# Loading.


def load(name: str, *, data_dir: str | os.PathLike | None = None, seed: int = 0,
         normalize: str = "per_channel", **options: Any) -> Dataset:
  """Loads dataset `name` fully into host memory.

  Args:
    name: one of `NAMES`.
    data_dir: tfds data directory (tfds datasets only; None = tfds default).
    seed: generation / split seed of the embedded datasets (tfds data ignores it).
    normalize: the statistics in `mean` / `std`, one of `NORMALIZE`:
      'per_channel' (mean and std per channel) or 'per_pixel_mean' (He et al.:
      the mean image is subtracted; then divided by the per-channel std around
      it, so inputs keep the scale of 'per_channel' and the learning rates).
    **options: embedded-dataset options: 'spirals' takes num_arms, noise,
      turns, num_train, num_test; 'digits' takes num_test; 'manifold' takes d,
      ambient, num_classes, num_train, num_test.

  Raises:
    ConfigError: unknown name, option or value (the message `launch.train`
      gives for it), or tfds data that is not prepared (the message gives the
      command that prepares it).
  """
  _allowed("data.name", name, lambda v: isinstance(v, str) and v in NAMES,
           f"choose one of: {', '.join(NAMES)}")
  _allowed("data.data_dir", data_dir, lambda v: v is None or isinstance(v, (str, os.PathLike)),
           "use a directory path or None (the tfds default)")
  _allowed("data.seed", seed, lambda v: isinstance(v, (int, np.integer))
           and not isinstance(v, bool) and v >= 0, "use an integer >= 0")
  _allowed("data.normalize", normalize, lambda v: isinstance(v, str) and v in NORMALIZE,
           f"choose one of: {', '.join(NORMALIZE)}")
  if name == "spirals":
    train, test, num_classes = _spirals(seed, **_options(name, options, _SPIRAL_DEFAULTS))
  elif name == "digits":
    train, test, num_classes = _digits(seed, **_options(name, options, _DIGITS_DEFAULTS))
  elif name == "manifold":
    train, test, num_classes = _manifold(seed, **_options(name, options, _MANIFOLD_DEFAULTS))
  else:
    _options(name, options, {})
    train, test, num_classes = _load_tfds(name, data_dir)
  stats = pixel_stats if normalize == "per_pixel_mean" else channel_stats
  mean, std = stats(train.inputs)
  return Dataset(name=name, train=train, test=test, num_classes=num_classes,
                 mean=mean, std=std, normalize=normalize)


def _allowed(field: str, value: Any, ok, fix: str) -> None:
  """The check and message of `train.validate`: 'FIELD=VALUE is not allowed; FIX'."""
  if not ok(value):
    raise errors.ConfigError(f"{field}={value!r} is not allowed; {fix}")


def _options(name: str, options: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
  unknown = sorted(set(options) - set(defaults))
  if unknown:
    allowed = ", ".join(defaults) if defaults else "none"
    raise errors.ConfigError(
        f"data.{unknown[0]} is not an option of data.name={name!r}; "
        f"its options: {allowed}")
  return {**defaults, **options}


def prepare_command(name: str, data_dir: str | os.PathLike | None = None) -> str:
  """The shell command that prepares tfds dataset `name` as ArrayRecord files."""
  command = (f"pip install -e '.[prepare]' && "
             f"tfds build {name} --file_format=array_record")
  return command + (f" --data_dir={data_dir}" if data_dir else "")


def _load_tfds(name: str, data_dir) -> tuple[Split, Split, int]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if data_dir:
    data_dir = os.path.expanduser(os.fspath(data_dir))
  root = data_dir or tfds.core.constants.DATA_DIR
  try:
    # download=False: never touch the network; missing data fails at once.
    sources = tfds.data_source(
        name, split=["train", "test"], data_dir=data_dir, download=False,
        try_gcs=False, builder_kwargs={"file_format": "array_record"})
  except (KeyError, NotImplementedError, ValueError, FileNotFoundError) as e:
    raise errors.ConfigError(
        f"data.name={name!r} {_diagnose(name, root, e)} in data.data_dir={root}; "
        f"prepare it once with: {prepare_command(name, root)}") from None
  features = sources[0].dataset_info.features
  image_shape = tuple(features["image"].shape)
  num_classes = int(features["label"].num_classes)
  train, test = (_read_split(s, image_shape) for s in sources)
  return train, test, num_classes


def _diagnose(name: str, root: str, error: Exception) -> str:
  """Why tfds could not open `name` under `root`, in a few words."""
  formats = set()
  for path in glob.glob(os.path.join(root, name, "**", "dataset_info.json"), recursive=True):
    try:
      with open(path) as f:
        formats.add(json.load(f).get("fileFormat", "tfrecord"))
    except (OSError, ValueError):
      continue
  if formats and "array_record" not in formats:
    return f"is prepared as {'/'.join(sorted(formats))}, which has no random access"
  if isinstance(error, KeyError):  # tfds: "`splits` is empty", nothing generated
    return "has no prepared ArrayRecord data"
  reason = errors.first_line(error) or type(error).__name__
  return f"cannot be read as ArrayRecord ({reason[:200]})"


def _read_split(source, image_shape: tuple[int, ...]) -> Split:
  """Reads a tfds data source into uint8 images and int32 labels, chunk by chunk."""
  n = len(source)
  images = np.empty((n, *image_shape), np.uint8)
  labels = np.empty((n,), np.int32)
  for start in range(0, n, _READ_CHUNK):
    keys = list(range(start, min(n, start + _READ_CHUNK)))
    for i, example in zip(keys, source.__getitems__(keys)):
      images[i] = example["image"]
      labels[i] = example["label"]
  return Split(images, labels)


_SPIRAL_DEFAULTS = dict(num_arms=3, noise=0.03, turns=1.5, num_train=1500, num_test=1500)
# Arms start this far from the origin, where they would otherwise merge.
_SPIRAL_INNER_RADIUS = 0.1


def _spirals(seed: int, *, num_arms: int, noise: float, turns: float, num_train: int,
             num_test: int) -> tuple[Split, Split, int]:
  """K interleaved 2-D spiral arms; the class is the arm.

  A point at position t ~ U(0, 1) along arm k sits at radius
  0.1 + 0.9 t and angle 2 pi (k / K + turns * t), plus isotropic Gaussian
  noise of std `noise`.
  Train and test come from independent streams of the same seed.
  """
  errors.check(isinstance(num_arms, (int, np.integer)) and num_arms >= 2,
               f"data.num_arms={num_arms!r} must be an integer >= 2")
  for field, value, ok, fix in (("noise", noise, lambda v: v >= 0, ">= 0"),
                                 ("turns", turns, lambda v: v > 0, "> 0")):
    errors.check(isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
                 and ok(value), f"data.{field}={value!r} must be a number {fix}")
  for field, value in (("num_train", num_train), ("num_test", num_test)):
    errors.check(isinstance(value, (int, np.integer)) and value >= 1,
                 f"data.{field}={value!r} must be an integer >= 1")

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


def _digits(seed: int, *, num_test: int) -> tuple[Split, Split, int]:
  """scikit-learn's 1,797 8x8 handwritten digits, as uint8 [N, 8, 8, 1] in 0..255."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  n = len(digits.target)
  errors.check(isinstance(num_test, (int, np.integer)) and 1 <= num_test < n,
               f"data.num_test={num_test!r} must be an integer in [1, {n - 1}]")
  # Raw values are integers 0..16.
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng([seed, 2]).permutation(n)
  test, train = order[:num_test], order[num_test:]
  return Split(images[train], labels[train]), Split(images[test], labels[test]), 10


_MANIFOLD_DEFAULTS = dict(d=2, ambient=16, num_classes=3, num_train=1500, num_test=1500)
# Latent draws that fix the class thresholds (quantiles of f), whatever the split sizes.
_MANIFOLD_REFERENCE = 1 << 16


def _manifold(seed: int, *, d: int, ambient: int, num_classes: int, num_train: int,
              num_test: int) -> tuple[Split, Split, int]:
  """A d-dimensional task embedded in `ambient` dimensions: inputs of rank d.

  Latent u ~ U[-1, 1]^d; the input is x = Q u for a fixed random orthonormal
  Q [ambient, d] drawn from (seed, d, ambient), so every d gets its own
  embedding. The class is the quantile bin of f(u) = sum_j cos(pi u_j) (every
  latent coordinate matters equally; thresholds from a fixed reference draw,
  so the classes are balanced in expectation). Train and test come from
  independent streams of the same seed.
  """
  for field, value, low in (("d", d, 1), ("ambient", ambient, d), ("num_classes", num_classes, 2),
                            ("num_train", num_train, 1), ("num_test", num_test, 1)):
    errors.check(isinstance(value, (int, np.integer)) and not isinstance(value, bool)
                 and value >= low, f"data.{field}={value!r} must be an integer >= {low}")
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


def _shifted_sums(flat: np.ndarray, shift: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-column sums of (x - shift) and (x - shift)^2 of [N, F] rows, float64, in chunks."""
  total = np.zeros(flat.shape[1])
  total_sq = np.zeros(flat.shape[1])
  rows = max(1, chunk // flat.shape[1])
  for i in range(0, len(flat), rows):
    d = flat[i:i + rows].astype(np.float64) - shift
    total += d.sum(axis=0)
    total_sq += np.einsum("ij,ij->j", d, d)
  return total, total_sq


def channel_stats(inputs: np.ndarray, chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (last axis) mean and std in float32, accumulated in float64.

  One pass over chunks of about `chunk` values. Sums run down the example
  axis of [N, H*W*C] (contiguous, fast in NumPy) and are shifted by the first
  example's channel values, which keeps the variance accurate for features
  with a large mean. A constant channel gets std 1 (normalizes to 0, not inf).
  """
  errors.check(inputs.ndim >= 2 and len(inputs) > 0 and inputs.shape[-1] > 0,
               f"cannot compute channel statistics of an array of shape {inputs.shape}")
  c = inputs.shape[-1]
  flat = inputs.reshape(len(inputs), -1)
  shift = np.tile(flat[0, :c].astype(np.float64), flat.shape[1] // c)
  total, total_sq = _shifted_sums(flat, shift, chunk)
  n = flat.size // c
  mean_shifted = total.reshape(-1, c).sum(axis=0) / n
  var = np.maximum(total_sq.reshape(-1, c).sum(axis=0) / n - mean_shifted**2, 0.0)
  std = np.sqrt(var)
  std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(shift[:c])), std, 1.0)
  return (mean_shifted + shift[:c]).astype(np.float32), std.astype(np.float32)


def pixel_stats(inputs: np.ndarray, chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
  """Per-pixel mean [H, W, C] and per-channel std [C] around it, float32.

  The mean image of He et al. (per feature [D] for feature vectors). The std
  of channel c is the root mean over pixels of each pixel's variance, so
  (x - mean) / std has zero mean at every pixel and unit variance per channel.
  Accumulated in float64 over chunks of about `chunk` values, shifted by the
  first example; a constant channel gets std 1.
  """
  errors.check(inputs.ndim >= 2 and len(inputs) > 0 and inputs.shape[-1] > 0,
               f"cannot compute pixel statistics of an array of shape {inputs.shape}")
  c = inputs.shape[-1]
  flat = inputs.reshape(len(inputs), -1)
  shift = flat[0].astype(np.float64)
  total, total_sq = _shifted_sums(flat, shift, chunk)
  mean_shifted = total / len(flat)
  var = np.maximum(total_sq / len(flat) - mean_shifted**2, 0.0).reshape(-1, c).mean(axis=0)
  mean = mean_shifted + shift
  std = np.sqrt(var)
  scale = np.abs(mean.reshape(-1, c)).max(axis=0)
  std = np.where(std > 1e-12 * np.maximum(1.0, scale), std, 1.0)
  return mean.reshape(inputs.shape[1:]).astype(np.float32), std.astype(np.float32)


# ----------------------------------------------------------------------------
# Index streams and batches (host side, pure functions of their arguments).


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  order.setflags(write=False)
  return order


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  """Full batches per epoch (the remainder is dropped)."""
  errors.check(global_batch >= 1, f"data.batch_size={global_batch} must be >= 1")
  errors.check(num_examples >= global_batch,
               f"data.batch_size={global_batch} exceeds the {num_examples} training "
               "examples; use a smaller batch")
  return num_examples // global_batch


def train_indices(step: int, *, seed: int, num_examples: int, global_batch: int) -> np.ndarray:
  """Example indices of the global training batch at `step`.

  Epoch e = step // steps_per_epoch visits a permutation drawn from (seed, e);
  the last num_examples % global_batch examples of each permutation are
  skipped. Depends only on its arguments, so resuming at `step` is exact.
  """
  errors.check(step >= 0, f"step={step} must be >= 0")
  per_epoch = steps_per_epoch(num_examples, global_batch)
  epoch, i = divmod(int(step), per_epoch)
  order = _epoch_permutation(int(seed), epoch, int(num_examples))
  return order[i * global_batch:(i + 1) * global_batch]


def local_rows(global_batch: int, process_index: int, process_count: int) -> slice:
  """The contiguous rows of a global batch that process `process_index` feeds."""
  errors.check(process_count >= 1 and 0 <= process_index < process_count,
               f"process_index={process_index} must be in [0, {process_count})")
  errors.check(global_batch % process_count == 0,
               f"data.batch_size={global_batch} must be divisible by the "
               f"{process_count} processes")
  per_process = global_batch // process_count
  return slice(process_index * per_process, (process_index + 1) * per_process)


def train_batch(split: Split, step: int, *, seed: int, global_batch: int,
                process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
  """This process's rows of the training batch at `step`: {'inputs', 'labels'}."""
  indices = train_indices(step, seed=seed, num_examples=len(split), global_batch=global_batch)
  indices = indices[local_rows(global_batch, process_index, process_count)]
  return {"inputs": split.inputs[indices], "labels": split.labels[indices]}


def num_eval_batches(num_examples: int, global_batch: int) -> int:
  """How many batches `eval_batches` yields."""
  return math.ceil(num_examples / global_batch)


def eval_batches(split: Split, global_batch: int) -> Iterator[dict[str, np.ndarray]]:
  """Yields the whole split in order as {'inputs', 'labels', 'mask'} batches.

  Every batch has `global_batch` rows (one compiled shape); the last one is
  padded with zeros, and `mask` (float32) is 1 on real examples, 0 on padding.
  Each process slices its rows with `local_rows`.
  """
  errors.check(global_batch >= 1, f"eval batch size {global_batch} must be >= 1")
  n = len(split)
  for start in range(0, n, global_batch):
    stop = min(n, start + global_batch)
    if stop - start == global_batch:
      yield {"inputs": split.inputs[start:stop], "labels": split.labels[start:stop],
             "mask": np.ones((global_batch,), np.float32)}
      continue
    inputs = np.zeros((global_batch, *split.inputs.shape[1:]), split.inputs.dtype)
    labels = np.zeros((global_batch,), split.labels.dtype)
    mask = np.zeros((global_batch,), np.float32)
    inputs[:stop - start] = split.inputs[start:stop]
    labels[:stop - start] = split.labels[start:stop]
    mask[:stop - start] = 1.0
    yield {"inputs": inputs, "labels": labels, "mask": mask}


class _Failure:

  def __init__(self, exception: BaseException):
    self.exception = exception


_DONE = object()


def prefetch(iterable: Iterable[Any], size: int = 2) -> Iterator[Any]:
  """Iterates `iterable` in a background thread, keeping up to `size` items ready.

  Use it to overlap host batch assembly and host-to-device transfer with the
  compiled step, e.g. `prefetch(to_global(b) for b in batches)`. Exceptions in
  the producer are re-raised in the consumer; closing the iterator early stops
  the thread and waits (up to 30 s) for the item it is making.
  """
  errors.check(size >= 1, f"prefetch size={size} must be >= 1")
  items: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        items.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for item in iterable:
        if not put(item):
          return
    except BaseException as e:  # pylint: disable=broad-except
      put(_Failure(e))
    else:
      put(_DONE)

  thread = threading.Thread(target=produce, name="resjax-prefetch", daemon=True)
  thread.start()
  try:
    while True:
      item = items.get()
      if item is _DONE:
        return
      if isinstance(item, _Failure):
        raise item.exception
      yield item
  finally:
    stop.set()
    # Wait for the batch in progress: a daemon thread still inside JAX's C++
    # (a transfer) when the interpreter exits aborts the process.
    thread.join(timeout=30)


# ----------------------------------------------------------------------------
# On device (jit-able).


def preprocess(inputs: jax.Array, mean, std) -> jax.Array:
  """(inputs - mean) / std in float32.

  mean and std each hold one value per channel / feature (last axis) or one
  per input element (a per-pixel mean [H, W, C], or the same flattened to
  H*W*C values, as a checkpoint stores it). Works for uint8 images (mean/std
  in 0..255 units) and float features alike.
  """
  x = jnp.asarray(inputs).astype(jnp.float32)
  return (x - _per_element(mean, x.shape[1:])) / _per_element(std, x.shape[1:])


def _per_element(v, shape: tuple[int, ...]) -> jax.Array:
  """Per-channel values as they are; per-element values in the example's shape."""
  v = jnp.asarray(v, jnp.float32)
  if v.ndim == 1 and len(shape) > 1 and v.size == math.prod(shape) != shape[-1]:
    return v.reshape(shape)
  return v


def crop_and_flip(x_BxHxWxC: jax.Array, dy_B: jax.Array, dx_B: jax.Array,
                  flip_B: jax.Array) -> jax.Array:
  """Shifts each image by (dy, dx) with zero fill, then mirrors it if flip.

  out[b, i, j] = x[b, i + dy[b], j' + dx[b]] with j' = W-1-j when flip[b]
  (else j), and 0 where that falls outside the image: the H x W window at
  offset (pad + dy, pad + dx) of the image zero-padded by pad, then flipped.
  """
  _, h, w, _ = x_BxHxWxC.shape
  rows_BxH = jnp.arange(h)[None, :] + dy_B[:, None]
  j = jnp.arange(w)[None, :]
  cols_BxW = jnp.where(flip_B[:, None], w - 1 - j, j) + dx_B[:, None]

  # A gather per example under vmap keeps the batch axis a gather batch
  # dimension, so a batch sharded over devices is gathered locally.
  def one(img_HxWxC, rows_H, cols_W):
    inside_HxW = (((rows_H >= 0) & (rows_H < h))[:, None]
                  & ((cols_W >= 0) & (cols_W < w))[None, :])
    out = img_HxWxC[jnp.clip(rows_H, 0, h - 1)[:, None], jnp.clip(cols_W, 0, w - 1)[None, :]]
    return jnp.where(inside_HxW[..., None], out, jnp.zeros((), out.dtype))

  return jax.vmap(one)(x_BxHxWxC, rows_BxH, cols_BxW)


def augment(rng: jax.Array, x_BxHxWxC: jax.Array, pad: int = 4, flip: bool = True) -> jax.Array:
  """Random crop of each image zero-padded by `pad`, then a random h-flip.

  Offsets are uniform in [-pad, pad] per axis and example; each example is
  flipped with probability 1/2 when `flip`. Same rng, same output. `pad` and
  `flip` are static. Zero fill means the mean pixel when x is already
  normalized by `preprocess` (as in He et al.), black when x is raw uint8.
  """
  errors.check(pad >= 0, f"augment pad={pad} must be >= 0")
  b = x_BxHxWxC.shape[0]
  rng_y, rng_x, rng_flip = jax.random.split(rng, 3)
  dy_B = jax.random.randint(rng_y, (b,), -pad, pad + 1)
  dx_B = jax.random.randint(rng_x, (b,), -pad, pad + 1)
  if flip:
    flip_B = jax.random.bernoulli(rng_flip, 0.5, (b,))
  else:
    flip_B = jnp.zeros((b,), bool)
  return crop_and_flip(x_BxHxWxC, dy_B, dx_B, flip_B)
