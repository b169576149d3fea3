"""Test setup: eight forced host devices, so the sharding code really runs."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import contextlib  # noqa: E402
from unittest import mock  # noqa: E402


@contextlib.contextmanager
def mock_tfds(num_examples: int):
  """`tfds.testing.mock_data`, with batched reads done item by item.

  tfds 4.9.10's mocked data source defines `__getitems__` without `self`;
  single-item reads work, so batched reads are routed through them.
  """
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core.data_sources import base
  with tfds.testing.mock_data(num_examples=num_examples,
                              policy=tfds.testing.MockPolicy.USE_CODE), \
      mock.patch.object(base.BaseDataSource, "__getitems__",
                        lambda self, keys: [self[k] for k in keys]):
    yield
