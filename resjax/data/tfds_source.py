"""tfds datasets read from prepared ArrayRecord files (random access, no TensorFlow at read time)."""
from __future__ import annotations

import glob
import json
import os

import numpy as np

from resjax import errors
from resjax.data.dataset import Split

# Examples deserialized per batched ArrayRecord read.
_READ_CHUNK = 4096


def prepare_command(name: str, data_dir: str | os.PathLike | None = None) -> str:
  """The shell command that prepares tfds dataset `name` as ArrayRecord files."""
  command = (f"pip install -e '.[prepare]' && "
             f"tfds build {name} --file_format=array_record")
  return command + (f" --data_dir={data_dir}" if data_dir else "")


def load_tfds(name: str, data_dir) -> tuple[Split, Split, int]:
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
