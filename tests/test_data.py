"""Tests for resjax.data: loading, index streams, batches and augmentation."""
import contextlib
import io
import json
import shutil
import socket
import sys
import threading
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from conftest import mock_tfds, run_steps
from resjax import data
from resjax.data import batches
from resjax.errors import ConfigError

# Image shape and class count of each tfds dataset, from the tfds catalog.
TFDS_FEATURES = {
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "svhn_cropped": ((32, 32, 3), 10),
}


@contextlib.contextmanager
def no_network():
  """Makes every connection attempt fail loudly and records it."""
  attempts = []

  def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("network access attempted in a test")

  with mock.patch.object(socket.socket, "connect", refuse), \
      mock.patch.object(socket, "getaddrinfo", refuse):
    yield attempts


# ----------------------------------------------------------------------------
# tfds datasets.


@pytest.mark.parametrize("name", sorted(TFDS_FEATURES))
def test_mock_tfds_loads_with_real_shapes(name):
  shape, num_classes = TFDS_FEATURES[name]
  with mock_tfds(num_examples=12), no_network() as attempts:
    ds = data.load(name, data_dir="/nonexistent/tfds")
  assert not attempts
  assert ds.name == name and ds.num_classes == num_classes
  assert ds.is_image and ds.input_shape == shape
  for split in (ds.train, ds.test):
    assert split.inputs.shape == (12, *shape) and split.inputs.dtype == np.uint8
    assert split.labels.shape == (12,) and split.labels.dtype == np.int32
    assert split.labels.min() >= 0 and split.labels.max() < num_classes
  assert ds.mean.shape == ds.std.shape == (shape[-1],)
  np.testing.assert_allclose(ds.mean, ds.train.inputs.mean(axis=(0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(ds.std, ds.train.inputs.std(axis=(0, 1, 2)), rtol=1e-4)
  assert "tensorflow" not in sys.modules  # read path needs no TensorFlow


def _png(image):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def _known_image(i):
  """Image i: pixel (r, c) holds (i + r + 2 c) % 256, i and (3 i + c) % 256."""
  r, c = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
  return np.stack([(i + r + 2 * c) % 256, np.full_like(r, i), (3 * i + c) % 256],
                  axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def prepared_cifar10(tmp_path_factory):
  """A tiny cifar10 really prepared as ArrayRecord (no TensorFlow, no download).

  The builder's download and generation steps are replaced by known examples;
  writing, shuffling, dataset_info.json and the ArrayRecord files are the
  genuine tfds ones.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  root = str(tmp_path_factory.mktemp("tfds"))
  sizes = {"train": 40, "test": 9}
  cls = type(tfds.builder("cifar10", data_dir=root))

  def split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in sizes}

  def generate_examples(self, split):
    del self
    offset = 100 if split == "test" else 0
    for i in range(sizes[split]):
      yield i, {"id": f"{split}_{i}", "image": io.BytesIO(_png(_known_image(offset + i))),
                "label": (offset + i) % 10}

  try:
    with mock.patch.object(cls, "_split_generators", split_generators), \
        mock.patch.object(cls, "_generate_examples", generate_examples, create=True), \
        mock.patch.object(cls, "_make_download_manager", lambda self, **kw: mock.MagicMock()):
      config = tfds.download.DownloadConfig(
          compute_stats=tfds.download.ComputeStatsMode.SKIP, try_download_gcs=False)
      tfds.builder("cifar10", data_dir=root, file_format="array_record").download_and_prepare(
          download_config=config)
  except (AttributeError, TypeError, ImportError) as e:
    pytest.skip(f"this tfds version cannot build the offline fixture: {e}")
  return root, sizes


def test_prepared_array_record_reads_exact_examples(prepared_cifar10):
  root, sizes = prepared_cifar10
  with no_network() as attempts:
    ds = data.load("cifar10", data_dir=root)
  assert not attempts
  assert ds.num_classes == 10 and ds.input_shape == (32, 32, 3)
  for split, offset in ((ds.train, 0), (ds.test, 100)):
    assert len(split) == sizes["train" if offset == 0 else "test"]
    assert split.inputs.dtype == np.uint8 and split.labels.dtype == np.int32
    # tfds shuffles records when writing: match examples by their channel-1 id.
    ids = split.inputs[:, 0, 0, 1].astype(int)
    assert sorted(ids) == list(range(offset, offset + len(split)))
    for image, label, i in zip(split.inputs, split.labels, ids):
      np.testing.assert_array_equal(image, _known_image(i))
      assert label == i % 10
  x = ds.train.inputs.astype(np.float64)
  np.testing.assert_allclose(ds.mean, x.mean(axis=(0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(ds.std, x.std(axis=(0, 1, 2)), rtol=1e-5)
  assert "tensorflow" not in sys.modules


def test_data_prepared_in_another_format_names_the_fix(prepared_cifar10, tmp_path):
  root, _ = prepared_cifar10
  shutil.copytree(root, tmp_path / "copy")
  (info_path,) = (tmp_path / "copy" / "cifar10").glob("*/dataset_info.json")
  info = json.loads(info_path.read_text())
  info["fileFormat"] = "tfrecord"
  info_path.write_text(json.dumps(info))
  with pytest.raises(ConfigError) as e:
    data.load("cifar10", data_dir=str(tmp_path / "copy"))
  message = str(e.value)
  assert "\n" not in message and "tfrecord" in message.lower()
  assert f"--file_format=array_record --data_dir={tmp_path / 'copy'}" in message


def test_unprepared_dataset_fails_fast_with_prepare_command(tmp_path):
  start = time.perf_counter()
  with no_network() as attempts, pytest.raises(ConfigError) as e:
    data.load("svhn_cropped", data_dir=str(tmp_path))
  assert not attempts
  assert time.perf_counter() - start < 20
  message = str(e.value)
  assert "\n" not in message
  assert "svhn_cropped" in message and str(tmp_path) in message
  assert message.endswith(
      f"pip install -e '.[prepare]' && tfds build svhn_cropped --file_format=array_record "
      f"--data_dir={tmp_path}")
  assert not list(tmp_path.iterdir())  # nothing was downloaded or created


def test_unknown_name_and_option_list_the_allowed_ones():
  with pytest.raises(ConfigError) as e:
    data.load("imagenet")
  assert "\n" not in str(e.value) and "imagenet" in str(e.value)
  for name in data.NAMES:
    assert name in str(e.value)
  with pytest.raises(ConfigError, match="num_arms"):
    data.load("digits", num_arms=3)
  with pytest.raises(ConfigError, match="num_arms"):
    data.load("spirals", num_arms=1)


def test_load_checks_its_arguments_with_the_launchers_messages():
  from configs import embedded
  from resjax import train
  config = embedded.get_config("tiny")
  config.data.name = "imagenet"
  with pytest.raises(ConfigError) as launcher:  # what launch.train reports
    train.validate(config, num_devices=8)
  with pytest.raises(ConfigError) as api:
    data.load("imagenet")
  assert str(api.value) in str(launcher.value).splitlines()
  assert str(api.value).startswith("data.name='imagenet' is not allowed; choose one of: cifar10")
  for kwargs, message in [
      (dict(name=10), "data.name=10 is not allowed; choose one of: "),
      (dict(name="spirals", normalize="per_image"),
       "data.normalize='per_image' is not allowed; choose one of: per_channel, per_pixel_mean"),
      (dict(name="spirals", seed=-1), "data.seed=-1 is not allowed; use an integer >= 0"),
      (dict(name="spirals", seed="0"), "data.seed='0' is not allowed; use an integer >= 0"),
      (dict(name="cifar10", data_dir=5), "data.data_dir=5 is not allowed; use a directory path"),
      (dict(name="spirals", noise="a"), "data.noise='a' is not allowed; use a number in [0, 1000000]"),
      (dict(name="spirals", turns=None), "data.turns=None is not allowed; use a number in (0, 1000000]"),
  ]:
    with pytest.raises(ConfigError) as e:
      data.load(**kwargs)
    assert str(e.value).startswith(message) and "\n" not in str(e.value), kwargs
  # The launcher's path (config -> train.load_data -> data.load) says the same.
  config = embedded.get_config("tiny")
  config.data.normalize = "per_image"
  with pytest.raises(ConfigError, match=r"^data.normalize='per_image' is not allowed"):
    train.load_data(config)


def test_num_val_holds_out_the_tail_of_the_training_split_in_place_of_the_test_split():
  from configs import embedded
  from resjax import train
  whole = data.load("spirals", num_train=50, num_test=7)
  held = data.load("spirals", num_train=50, num_test=7, num_val=12)
  assert (whole.eval_split, held.eval_split) == ("test", "validation")
  assert (len(held.train), len(held.test)) == (38, 12)
  np.testing.assert_array_equal(held.train.inputs, whole.train.inputs[:38])
  np.testing.assert_array_equal(held.test.inputs, whole.train.inputs[38:])
  np.testing.assert_array_equal(held.test.labels, whole.train.labels[38:])
  # The statistics come from the training part only.
  np.testing.assert_allclose(held.mean, whole.train.inputs[:38].mean(0), rtol=1e-5, atol=1e-7)
  assert not np.allclose(held.mean, whole.mean)
  for num_val, message in [(50, "data.num_val=50 is not allowed; use 0 (no validation split) "
                                "or 1..49 (the training split holds 50 examples)"),
                           (-1, "data.num_val=-1 is not allowed; use an integer >= 0"),
                           (2.5, "data.num_val=2.5 is not allowed")]:
    with pytest.raises(ConfigError) as e:
      data.load("spirals", num_train=50, num_test=7, num_val=num_val)
    assert str(e.value).startswith(message) and "\n" not in str(e.value), num_val
  # A config's field: checked before any work, and read by the trainer's loader.
  config = embedded.get_config("tiny_mlp")
  config.data.num_val = -3
  with pytest.raises(ConfigError, match=r"data.num_val=-3 is not allowed"):
    train.validate(config, num_devices=8)
  config.data.num_val = 100
  assert train.load_data(config).eval_split == "validation"
  assert len(train.load_data(config).test) == 100


def test_per_pixel_mean_centres_every_pixel_of_the_training_split():
  with mock_tfds(num_examples=24):
    pixel = data.load("cifar10", data_dir="/nonexistent/tfds", normalize="per_pixel_mean")
    channel = data.load("cifar10", data_dir="/nonexistent/tfds")
  assert pixel.normalize == "per_pixel_mean" and channel.normalize == "per_channel"
  x = pixel.train.inputs.astype(np.float64)
  assert pixel.mean.shape == (32, 32, 3) and pixel.std.shape == (3,)
  np.testing.assert_allclose(pixel.mean, x.mean(0), rtol=1e-6)
  np.testing.assert_allclose(pixel.std, (x - x.mean(0)).std(axis=(0, 1, 2)), rtol=1e-5)
  out = np.asarray(data.preprocess(pixel.train.inputs, pixel.mean, pixel.std), np.float64)
  assert np.abs(out.mean(0)).max() < 1e-4              # zero mean at every pixel
  np.testing.assert_allclose(out.var(axis=(0, 1, 2)), 1.0, rtol=1e-4)
  # The mean flattened (as a checkpoint stores it) gives the same inputs.
  flat = data.preprocess(pixel.train.inputs, pixel.mean.ravel(), pixel.std)
  np.testing.assert_array_equal(flat, out.astype(np.float32))
  # Per channel leaves each pixel off-centre (24 random images).
  per_channel = np.asarray(data.preprocess(channel.train.inputs, channel.mean, channel.std))
  assert np.abs(per_channel.mean(0)).max() > 0.2
  np.testing.assert_allclose(per_channel.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
  # Feature vectors: the per-pixel mean is the per-feature mean.
  spirals = data.load("spirals", num_train=40, num_test=4, normalize="per_pixel_mean")
  np.testing.assert_allclose(spirals.mean, data.load("spirals", num_train=40, num_test=4).mean)


def test_a_train_step_runs_with_the_per_pixel_mean():
  from configs import cifar10, embedded
  from resjax import sharding, train
  assert cifar10.get_config("resnet56").data.normalize == "per_pixel_mean"  # He et al.
  assert cifar10.get_config("table6").data.normalize == "per_pixel_mean"
  config = embedded.get_config("tiny_mlp")  # the per-pixel mean meets a small net fast
  config.data.name, config.data.normalize = "cifar10", "per_pixel_mean"
  with mock_tfds(num_examples=64):
    ds = train.load_data(config)
    losses, _ = run_steps(config, jax.devices()[:1], steps=2)
  assert ds.mean.shape == (32, 32, 3) and np.all(np.isfinite(losses))
  # The state normalizes with the per-pixel mean, as data.preprocess does.
  state = train.create_train_state(config, sharding.make_mesh(jax.devices()[:1]),
                                   ds.input_shape, ds.num_classes, mean=ds.mean, std=ds.std)
  np.testing.assert_allclose(state.preprocess(ds.train.inputs[:8]),
                             data.preprocess(ds.train.inputs[:8], ds.mean, ds.std), rtol=1e-6)


# ----------------------------------------------------------------------------
# Embedded datasets.


def test_spirals_deterministic_balanced_and_seeded():
  a = data.load("spirals", seed=3, num_arms=4, num_train=200, num_test=80)
  b = data.load("spirals", seed=3, num_arms=4, num_train=200, num_test=80)
  c = data.load("spirals", seed=4, num_arms=4, num_train=200, num_test=80)
  assert not a.is_image and a.input_shape == (2,) and a.num_classes == 4
  assert a.train.inputs.shape == (200, 2) and a.train.inputs.dtype == np.float32
  assert a.test.inputs.shape == (80, 2) and a.test.labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(a.train.labels), [50] * 4)
  for s in ("train", "test"):
    np.testing.assert_array_equal(getattr(a, s).inputs, getattr(b, s).inputs)
    np.testing.assert_array_equal(getattr(a, s).labels, getattr(b, s).labels)
    assert not np.array_equal(getattr(a, s).inputs, getattr(c, s).inputs)
  assert not np.array_equal(a.train.inputs[:80], a.test.inputs)
  np.testing.assert_allclose(a.mean, a.train.inputs.mean(0), atol=1e-6)
  np.testing.assert_allclose(a.std, a.train.inputs.std(0), rtol=1e-5)
  # Without noise every point lies on its arm: radius in [0.1, 1], and the
  # angle advances with the radius as turns * 2 pi per unit of t.
  clean = data.load("spirals", seed=0, noise=0.0, turns=1.0, num_train=50, num_test=1)
  x, y = clean.train.inputs.astype(np.float64), clean.train.labels
  radius = np.hypot(x[:, 0], x[:, 1])
  assert radius.min() >= 0.1 - 1e-6 and radius.max() <= 1 + 1e-6
  t = (radius - 0.1) / 0.9
  expected = 2 * np.pi * (y / 3 + t)
  np.testing.assert_allclose(np.cos(expected) * radius, x[:, 0], atol=1e-5)
  np.testing.assert_allclose(np.sin(expected) * radius, x[:, 1], atol=1e-5)


def test_digits_uint8_images_with_seeded_split():
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  a = data.load("digits", seed=0)
  b = data.load("digits", seed=0)
  c = data.load("digits", seed=1)
  assert a.is_image and a.input_shape == (8, 8, 1) and a.num_classes == 10
  assert a.train.inputs.dtype == np.uint8 and a.train.labels.dtype == np.int32
  assert len(a.test) == 360 and len(a.train) + len(a.test) == 1797
  assert a.train.inputs.max() == 255 and a.train.inputs.min() == 0
  np.testing.assert_array_equal(a.train.inputs, b.train.inputs)
  np.testing.assert_array_equal(a.test.labels, b.test.labels)
  assert not np.array_equal(a.test.inputs, c.test.inputs)
  raw = datasets.load_digits()
  # Every image is a 0..16 original scaled by 255 / 16; labels keep their counts.
  np.testing.assert_array_equal(
      np.bincount(np.concatenate([a.train.labels, a.test.labels])), np.bincount(raw.target))
  scaled = np.round(raw.images * 255 / 16).astype(np.uint8)
  index = {img.tobytes(): t for img, t in zip(scaled, raw.target)}
  for img, label in zip(a.test.inputs[..., 0], a.test.labels):
    assert index[img.tobytes()] == label
  assert len(data.load("digits", seed=0, num_test=100).test) == 100
  assert a.mean.shape == (1,) and abs(a.mean[0] - a.train.inputs.mean()) < 1e-3


def test_channel_stats_float64_accumulation_and_constant_channel():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
  x[..., 2] = 9
  mean, std = data.channel_stats(x, chunk=7)  # several uneven chunks
  assert mean.dtype == std.dtype == np.float32
  np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(std[:2], x[..., :2].std(axis=(0, 1, 2)), rtol=1e-6)
  assert mean[2] == 9 and std[2] == 1  # constant channel: normalizes to 0, not inf


# ----------------------------------------------------------------------------
# Index streams and batches.


def test_train_indices_permutation_per_epoch_and_pure():
  n, b, seed = 103, 10, 7
  per_epoch = n // b
  epochs = [np.concatenate([data.train_indices(s, seed=seed, num_examples=n, global_batch=b)
                            for s in range(e * per_epoch, (e + 1) * per_epoch)])
            for e in range(3)]
  for order in epochs:
    assert len(order) == per_epoch * b and len(set(order.tolist())) == len(order)
    assert order.min() >= 0 and order.max() < n
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[1], epochs[2])
  # Pure: the same arguments give the same batch in any call order.
  batches._epoch_permutation.cache_clear()  # pylint: disable=protected-access
  np.testing.assert_array_equal(
      data.train_indices(25, seed=seed, num_examples=n, global_batch=b), epochs[2][50:60])
  other = data.train_indices(0, seed=seed + 1, num_examples=n, global_batch=b)
  assert not np.array_equal(other, epochs[0][:b])
  with pytest.raises(ConfigError, match="batch_size"):
    data.train_indices(0, seed=0, num_examples=5, global_batch=8)


def test_local_rows_partition_the_global_batch():
  for count in (1, 2, 4, 8):
    rows = [np.arange(32)[data.local_rows(32, i, count)] for i in range(count)]
    assert all(len(r) == 32 // count for r in rows)
    np.testing.assert_array_equal(np.concatenate(rows), np.arange(32))
  with pytest.raises(ConfigError, match="divisible"):
    data.local_rows(30, 0, 4)


def test_train_batch_gathers_local_rows():
  split = data.Split(np.arange(50, dtype=np.float32)[:, None] * [1.0, -1.0],
                     np.arange(50, dtype=np.int32))
  full = data.train_batch(split, 9, seed=1, global_batch=8)
  idx = data.train_indices(9, seed=1, num_examples=50, global_batch=8)
  np.testing.assert_array_equal(full["labels"], idx)
  np.testing.assert_array_equal(full["inputs"], split.inputs[idx])
  parts = [data.train_batch(split, 9, seed=1, global_batch=8, process_index=i, process_count=4)
           for i in range(4)]
  np.testing.assert_array_equal(np.concatenate([p["labels"] for p in parts]), idx)


@pytest.mark.parametrize("n", [23, 24])
def test_eval_batches_cover_every_example_once(n):
  inputs = np.random.default_rng(0).integers(1, 256, (n, 4, 4, 3), dtype=np.uint8)
  split = data.Split(inputs, np.arange(n, dtype=np.int32) % 10)
  batches = list(data.eval_batches(split, 8))
  assert len(batches) == data.num_eval_batches(n, 8) == -(-n // 8)
  for batch in batches:
    assert batch["inputs"].shape == (8, 4, 4, 3) and batch["inputs"].dtype == np.uint8
    assert batch["labels"].shape == batch["mask"].shape == (8,)
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == n and set(np.unique(mask).tolist()) <= {0.0, 1.0}
  keep = mask > 0
  np.testing.assert_array_equal(np.concatenate([b["inputs"] for b in batches])[keep], inputs)
  np.testing.assert_array_equal(np.concatenate([b["labels"] for b in batches])[keep],
                                split.labels)
  assert not np.concatenate([b["inputs"] for b in batches])[~keep].any()


def test_prefetch_order_errors_and_early_stop():
  assert list(data.prefetch(iter(range(20)), size=3)) == list(range(20))

  def failing():
    yield 1
    raise RuntimeError("producer broke")

  it = data.prefetch(failing())
  assert next(it) == 1
  with pytest.raises(RuntimeError, match="producer broke"):
    next(it)

  def alive():
    return [t for t in threading.enumerate() if t.name == "resjax-prefetch"]

  def slow():  # Still making an item when the consumer stops.
    for i in range(10**9):
      time.sleep(0.3)
      yield i

  before = len(alive())
  it = data.prefetch(slow(), size=1)
  assert next(it) == 0
  it.close()  # Returns once the thread is gone: none left running into interpreter exit.
  assert len(alive()) == before


# ----------------------------------------------------------------------------
# On device.


def test_preprocess_normalizes_per_channel():
  ds = data.load("digits", seed=0)
  x = jax.jit(data.preprocess)(ds.train.inputs, ds.mean, ds.std)
  assert x.dtype == jnp.float32 and x.shape == ds.train.inputs.shape
  np.testing.assert_allclose(np.mean(x), 0.0, atol=1e-4)
  np.testing.assert_allclose(np.std(x), 1.0, atol=1e-4)
  features = np.array([[1.0, 10.0], [3.0, 30.0]], np.float32)
  np.testing.assert_allclose(data.preprocess(features, [2.0, 20.0], [1.0, 10.0]),
                             [[-1.0, -1.0], [1.0, 1.0]])


def _reference_crop(x_HxWxC, dy, dx, flip, pad):
  """NumPy: zero-pad by `pad`, take the window at (pad + dy, pad + dx), maybe mirror."""
  h, w, _ = x_HxWxC.shape
  padded = np.pad(x_HxWxC, ((pad, pad), (pad, pad), (0, 0)))
  out = padded[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
  return out[:, ::-1] if flip else out


def _grid_image(b=1, h=8, w=8, c=2):
  """Pixel value 1 + 100 i + j + 1000 ch for row i, column j (never 0)."""
  i, j, ch = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
  return np.broadcast_to(1 + 100 * i + j + 1000 * ch, (b, h, w, c)).astype(np.float32)


def _candidates(pad):
  return [(dy, dx, f) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)
          for f in (False, True)]


def _matching_crops(x_BxHxWxC, out_BxHxWxC, pad):
  """For each example, the (dy, dx, flip) whose reference crop equals the output."""
  matches = [[] for _ in range(len(x_BxHxWxC))]
  for dy, dx, f in _candidates(pad):
    ref = np.stack([_reference_crop(img, dy, dx, f, pad) for img in x_BxHxWxC])
    for k in np.flatnonzero((ref == out_BxHxWxC).all(axis=(1, 2, 3))):
      matches[k].append((dy, dx, f))
  return matches


def test_crop_and_flip_exact_pixels():
  pad = 3
  combos = [(2, -1, False), (0, 0, True)] + _candidates(pad)
  dy, dx, flip = (jnp.array(v) for v in zip(*combos))
  x = _grid_image(b=len(combos))
  out = np.asarray(jax.jit(data.crop_and_flip)(x, dy, dx, flip))
  # Example 0: shifted by (dy, dx) = (2, -1): out[i, j] = x[i + 2, j - 1].
  assert out[0, 0, 0, 0] == 0                      # column -1 is padding
  assert out[0, 0, 1, 0] == x[0, 2, 0, 0] == 201
  assert out[0, 3, 5, 1] == x[0, 5, 4, 1] == 1505
  assert not out[0, 6:].any()                      # rows 8, 9 are padding
  assert out[0, 5, 7, 0] == x[0, 7, 6, 0] == 707
  # Example 1: a pure mirror.
  np.testing.assert_array_equal(out[1], x[1, :, ::-1])
  assert out[1, 0, 0, 0] == 8 and out[1, 4, 7, 1] == 1401
  # Every shift in [-3, 3]^2 with and without flip equals pad + crop + mirror.
  for k, (cy, cx, cf) in enumerate(combos[2:], start=2):
    np.testing.assert_array_equal(out[k], _reference_crop(x[k], cy, cx, cf, pad))


def test_augment_is_a_random_crop_and_flip():
  b, pad = 256, 2
  x = _grid_image(b=b, h=6, w=6, c=1) + np.arange(b)[:, None, None, None] * 10000
  aug = jax.jit(data.augment, static_argnames=("pad", "flip"))
  rng = jax.random.key(0)
  out = np.asarray(aug(rng, x, pad=pad))
  assert out.shape == x.shape and out.dtype == np.float32
  np.testing.assert_array_equal(out, aug(rng, x, pad=pad))
  assert not np.array_equal(out, aug(jax.random.key(1), x, pad=pad))
  matches = _matching_crops(x, out, pad)
  assert all(len(m) == 1 for m in matches)
  dys, dxs, flips = zip(*(m[0] for m in matches))
  assert set(dys) == set(dxs) == set(range(-pad, pad + 1))
  assert 0.3 < np.mean(flips) < 0.7
  # uint8 stays uint8; pad 0 without flip is the identity.
  xu = np.random.default_rng(0).integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
  assert aug(rng, xu, pad=0, flip=True).dtype == jnp.uint8
  np.testing.assert_array_equal(aug(rng, xu, pad=0, flip=False), xu)


def test_augment_stays_local_on_a_sharded_batch():
  assert jax.device_count() == 8  # tests/conftest.py forces 8 host devices
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  x = jax.device_put(jnp.asarray(_grid_image(b=16, h=8, w=8, c=3)), sharding)
  rng = jax.random.key(3)
  step = jax.jit(data.augment, out_shardings=sharding)
  hlo = step.lower(rng, x).compile().as_text()
  assert "all-gather" not in hlo and "all-to-all" not in hlo
  out = step(rng, x)
  assert out.sharding == sharding
  assert all(len(m) == 1 for m in _matching_crops(np.asarray(x), np.asarray(out), pad=4))
