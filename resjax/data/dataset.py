"""A dataset in host memory: its splits and the statistics that normalize them."""
from __future__ import annotations

import dataclasses

import numpy as np

from resjax import errors


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
  eval_split: what `test` holds: 'test', or 'validation' (a held-out part of
  the training split, `data.num_val`).
  """
  name: str
  train: Split
  test: Split
  num_classes: int
  mean: np.ndarray
  std: np.ndarray
  normalize: str = "per_channel"
  eval_split: str = "test"

  @property
  def is_image(self) -> bool:
    return self.train.inputs.ndim == 4

  @property
  def input_shape(self) -> tuple[int, ...]:
    """Shape of one example (no batch axis)."""
    return tuple(self.train.inputs.shape[1:])


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
