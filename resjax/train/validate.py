"""Checks of a training config, all fields at once, before any work starts."""
from __future__ import annotations

import ml_collections
import numpy as np

from resjax import data
from resjax import errors
from resjax import models
from resjax.grid import spec as grid_spec
from resjax.train.optimizer import DECAY_PARAMS, OPTIMIZERS, SCHEDULES
from resjax.train.state import build_model


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      return _MISSING
    node = node[part]
  return node


_MISSING = object()


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def validate(config: ml_collections.ConfigDict, num_devices: int, unit: str = "devices") -> None:
  """Raises ConfigError with one line per bad field (all of them, not just the first).

  The batch must split evenly over `num_devices` (named `unit` in the message).
  """
  problems: list[str] = []

  def need(field, ok, fix):
    value = _get(config, field)
    if value is _MISSING:
      problems.append(f"config has no field {field}; {fix}")
      return None
    if not ok(value):
      problems.append(f"{field}={value!r} is not allowed; {fix}")
      return None
    return value

  def one_of(field, allowed):
    return need(field, lambda v: v in allowed, f"choose one of: {', '.join(allowed)}")

  pos_int, nonneg_int = lambda v: _is_int(v) and v > 0, lambda v: _is_int(v) and v >= 0
  need("seed", lambda v: _is_int(v) and v >= 0, "use an integer >= 0")
  model_name = one_of("model.name", tuple(models.MODELS))
  one_of("data.name", tuple(data.NAMES))
  batch = need("data.batch_size", pos_int, "use a positive integer (the global batch)")
  if batch is not None and batch % num_devices:
    problems.append(f"data.batch_size={batch} is not divisible by the {num_devices} {unit}; "
                    f"use a multiple of {num_devices}")
  for field in ("data.augment", "data.flip"):
    if _get(config, field) is not _MISSING:
      need(field, lambda v: isinstance(v, bool), "use True or False")
  if _get(config, "data.pad") is not _MISSING:
    need("data.pad", nonneg_int, "use an integer >= 0")
  opt_name = one_of("opt.name", OPTIMIZERS)
  schedule = one_of("opt.schedule", SCHEDULES)
  need("opt.lr", lambda v: _is_number(v) and v > 0, "use a number > 0")
  if opt_name == "sgd":
    need("opt.momentum", lambda v: _is_number(v) and 0 <= v < 1, "use a number in [0, 1)")
  need("opt.weight_decay", lambda v: _is_number(v) and v >= 0, "use a number >= 0")
  if _get(config, "opt.decay_params") is not _MISSING:
    one_of("opt.decay_params", DECAY_PARAMS)
  if schedule == "piecewise":
    need("opt.boundaries",
         lambda v: isinstance(v, (tuple, list)) and all(_is_int(b) and b > 0 for b in v)
         and list(v) == sorted(set(v)), "use increasing positive step numbers")
    need("opt.decay", lambda v: _is_number(v) and 0 < v <= 1, "use a number in (0, 1]")
  warmup = need("opt.warmup_steps", nonneg_int, "use an integer >= 0 (0 = no warm-up)")
  if warmup:
    need("opt.warmup_lr", lambda v: _is_number(v) and v > 0, "use a number > 0")
  need("train.steps", pos_int, "use a positive number of steps")
  need("train.log_every", pos_int, "use a positive number of steps")
  need("train.eval_every", nonneg_int, "use an integer >= 0 (0 = only at the end)")
  need("train.checkpoint_every", nonneg_int, "use an integer >= 0 (0 = only at the end)")
  if _get(config, "train.eval_train") is not _MISSING:
    need("train.eval_train", lambda v: isinstance(v, bool), "use True or False")
  if _get(config, "train.keep_checkpoints") is not _MISSING:
    need("train.keep_checkpoints", nonneg_int, "use an integer >= 0 (0 = keep all)")
  if model_name is not None:
    try:
      build_model(config, num_classes=10)
    except errors.ConfigError as e:
      problems.append(str(e))
  if _get(config, "grid") is not _MISSING:
    problems += grid_spec.validate(config)
    if not problems and grid_spec.is_grid(config):
      for net, label in zip(grid_spec.nets(config), grid_spec.labels(config)):
        try:  # Every net is a single run of its own: the same checks.
          validate(net, num_devices, unit)
        except errors.ConfigError as e:
          problems += [f"grid net {grid_spec.describe_label(label)}: {line}"
                       for line in str(e).splitlines()]
          break
      if not problems:
        try:
          build_model(grid_spec.padded_config(config), num_classes=10)
        except errors.ConfigError as e:
          problems.append(f"the nets of config.grid do not fit one padded model: {e}")
  if problems:
    raise errors.ConfigError("\n".join(problems))
