"""Datasets held in host memory, index streams, and on-device augmentation.

Host side (NumPy): `load` reads a whole dataset into memory, either from
prepared tfds ArrayRecord files (`tfds_source`: random access, no TensorFlow
at read time) or from a generator that ships with the code (`embedded`:
'spirals', 'digits', 'manifold', 'mnist1d'). `batches` turns it into batches
that are a pure function of (seed, step), so a resumed run sees exactly the
same data.

Device side (jit-able, `augment`): `preprocess` normalizes (per channel, or by
the per-pixel mean as He et al. do: `NORMALIZE`), `augment` draws a random
pad-and-crop and horizontal flip per example.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np

from resjax import errors, schema
from resjax.data.augment import augment, crop_and_flip, preprocess
from resjax.data.batches import (eval_batches, local_rows, num_eval_batches, prefetch,
                                 steps_per_epoch, train_batch, train_indices)
from resjax.data.dataset import Dataset, Split, channel_stats, pixel_stats
from resjax.data.embedded import GENERATORS
from resjax.data.tfds_source import load_tfds, prepare_command

TFDS_NAMES = ("cifar10", "cifar100", "mnist", "fashion_mnist", "svhn_cropped")
EMBEDDED_NAMES = tuple(GENERATORS)
NAMES = TFDS_NAMES + EMBEDDED_NAMES
# How `load` computes the statistics `preprocess` applies (`config.data.normalize`).
NORMALIZE = ("per_channel", "per_pixel_mean")

# The arguments of `load`, as `config.data` fields.
RULES = {
    "name": schema.Choice(NAMES),
    "data_dir": schema.Rule("path", none_ok=True,
                            fix="use a directory path or None (the tfds default)"),
    "seed": schema.SEED,
    "normalize": schema.Choice(NORMALIZE),
    "num_val": schema.Int(0, fix="use an integer >= 0 (0: no validation split), below the "
                          "training split's size"),
}

__all__ = ["Dataset", "Split", "NAMES", "TFDS_NAMES", "EMBEDDED_NAMES", "NORMALIZE", "RULES",
           "options", "rules", "unused", "load", "validation_split", "prepare_command", "channel_stats", "pixel_stats", "steps_per_epoch",
           "train_indices", "local_rows", "train_batch", "num_eval_batches", "eval_batches",
           "prefetch", "preprocess", "crop_and_flip", "augment"]


def rules(name: str) -> dict[str, schema.Rule]:
  """The `config.data` fields of dataset `name` `load` reads, with their rules: RULES
  and the embedded set's options (all optional: absent ones take their defaults)."""
  return dict(_rules(name if name in NAMES else ""))


@functools.lru_cache(maxsize=None)
def _rules(name: str) -> dict[str, schema.Rule]:
  options = GENERATORS[name][2] if name in GENERATORS else {}
  optional = {k: dataclasses.replace(r, optional=True) for k, r in options.items()}
  return {**RULES, **optional,
          **{k: dataclasses.replace(RULES[k], optional=True)
             for k in ("data_dir", "seed", "normalize", "num_val")}}


def options(name: str) -> tuple[str, ...]:
  """The options (extra `config.data` fields) of dataset `name`; () for tfds data."""
  return tuple(GENERATORS[name][1]) if name in GENERATORS else ()


def unused(name: str) -> dict[str, str]:
  """`config.data` fields that dataset `name` does not read: field -> why."""
  if name in GENERATORS:
    return {"data_dir": f"data.name={name!r} is generated, not read from a directory"}
  if name in TFDS_NAMES:
    return {"seed": f"data.name={name!r} is read as prepared; data.seed only generates "
                    "the embedded sets"}
  return {}


def load(name: str, *, data_dir: str | os.PathLike | None = None, seed: int = 0,
         normalize: str = "per_channel", num_val: int = 0, **options: Any) -> Dataset:
  """Loads dataset `name` fully into host memory.

  Args:
    name: one of `NAMES`.
    data_dir: tfds data directory (tfds datasets only; None = tfds default).
    seed: generation / split seed of the embedded datasets (tfds data ignores it;
      'mnist1d': 0 is the published dataset, see `embedded.mnist1d`).
    normalize: the statistics in `mean` / `std`, one of `NORMALIZE`:
      'per_channel' (mean and std per channel) or 'per_pixel_mean' (He et al.:
      the mean image is subtracted; then divided by the per-channel std around
      it, so inputs keep the scale of 'per_channel' and the learning rates).
    num_val: 0, or the size of a validation split carved off the training
      split: its last `num_val` examples (the generators and tfds shuffle
      the order) are held out and take the test split's place
      (`Dataset.eval_split` = 'validation'), so every evaluation of such a run
      reads held-out training data and never the test split. The statistics
      come from the remaining training examples. For recipe choices.
    **options: embedded-dataset options: 'spirals' takes num_arms, noise,
      turns, num_train, num_test; 'digits' takes num_test; 'manifold' takes d,
      ambient, num_classes, num_train, num_test, shift; 'mnist1d' takes none.

  Raises:
    ConfigError: unknown name, option or value (the message `launch.train`
      gives for it), or tfds data that is not prepared (the message gives the
      command that prepares it).
  """
  schema.check({"name": name, "data_dir": data_dir, "seed": seed, "normalize": normalize,
                "num_val": num_val}, RULES, prefix="data.")
  if name in GENERATORS:
    generate, defaults, rules = GENERATORS[name]
    options = _options(name, options, defaults)
    schema.check(options, rules, prefix="data.")
    train, test, num_classes = generate(seed, **options)
  else:
    _options(name, options, {})
    train, test, num_classes = load_tfds(name, data_dir)
  for split, part in (("train", train), ("test", test)):
    errors.check(bool(np.isfinite(part.inputs).all()),
                 f"the {split} inputs of data.name={name!r} hold values that are not finite "
                 f"with the data options {_shown(options)}; use smaller values")
  if num_val:
    train, test = validation_split(train, num_val)
  stats = pixel_stats if normalize == "per_pixel_mean" else channel_stats
  mean, std = stats(train.inputs)
  return Dataset(name=name, train=train, test=test, num_classes=num_classes,
                 mean=mean, std=std, normalize=normalize,
                 eval_split="validation" if num_val else "test")


def validation_split(train: Split, num_val: int) -> tuple[Split, Split]:
  """(the first len - num_val training examples, the last num_val): a fixed held-out
  part of the training split (ConfigError unless 0 < num_val < len(train))."""
  schema.check_value("data.num_val", num_val, schema.Int(
      1, len(train) - 1, fix=f"use 0 (no validation split) or 1..{len(train) - 1} "
      f"(the training split holds {len(train)} examples)"))
  keep = len(train) - num_val
  return (Split(train.inputs[:keep], train.labels[:keep]),
          Split(train.inputs[keep:], train.labels[keep:]))


def _shown(options: dict[str, Any]) -> str:
  return ", ".join(f"data.{k}={v!r}" for k, v in options.items()) or "(none)"


def _options(name: str, options: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
  unknown = sorted(set(options) - set(defaults))
  if unknown:
    allowed = ", ".join(defaults) if defaults else "none"
    raise errors.ConfigError(
        f"data.{unknown[0]} is not an option of data.name={name!r}; "
        f"its options: {allowed}")
  return {**defaults, **options}
