"""Checks of a training config, all fields at once, before any work starts.

The fields' rules are tables of `resjax.schema` rules (`RULES`; the dataset
options are `data.RULES` and each embedded set's own table, the model fields
each family's); what no single field can say (the batch over the devices,
the model as built, every net of a grid) is checked here after them.
"""
from __future__ import annotations

import ml_collections

from resjax import data
from resjax import errors
from resjax import models
from resjax import schema
from resjax.grid import spec as grid_spec
from resjax.train import reset
from resjax.train.optimizer import DECAY_PARAMS, OPTIMIZERS, SCHEDULES
from resjax.train.state import build_model


def _opt(name: str):
  return lambda c: schema.get(c, "opt.name") == name


def _schedule(name: str):
  return lambda c: schema.get(c, "opt.schedule") == name


def _warmup(c) -> bool:
  steps = schema.get(c, "opt.warmup_steps")
  return schema.is_int(steps) and steps > 0


STEPS = "use a positive number of steps"
RULES = {
    "seed": schema.SEED,
    "model.name": schema.Choice(lambda: tuple(models.MODELS)),
    "data.name": schema.Choice(data.NAMES),
    "data.batch_size": schema.Int(1, fix="use a positive integer (the global batch)"),
    "data.augment": schema.Bool(optional=True),
    "data.flip": schema.Bool(optional=True),
    "data.pad": schema.Int(0, optional=True),
    "opt.name": schema.Choice(OPTIMIZERS),
    "opt.schedule": schema.Choice(SCHEDULES),
    "opt.lr": schema.Float(0, low_open=True),
    "opt.momentum": schema.Float(0, 1, high_open=True, when=_opt("sgd")),
    "opt.weight_decay": schema.Float(0),
    "opt.decay_params": schema.Choice(DECAY_PARAMS, optional=True),
    "opt.boundaries": schema.Rule("ints", low=1, increasing=True, when=_schedule("piecewise"),
                                  fix="use increasing positive step numbers"),
    "opt.decay": schema.Float(0, 1, low_open=True, when=_schedule("piecewise")),
    "opt.warmup_steps": schema.Int(0, fix="use an integer >= 0 (0 = no warm-up)"),
    "opt.warmup_lr": schema.Float(0, low_open=True, when=_warmup),
    "train.steps": schema.Int(1, fix=STEPS),
    "train.log_every": schema.Int(1, fix=STEPS),
    "train.eval_every": schema.Int(0, fix="use an integer >= 0 (0 = only at the end)"),
    "train.checkpoint_every": schema.Int(0, fix="use an integer >= 0 (0 = only at the end)"),
    "train.eval_train": schema.Bool(optional=True),
    "train.grid_layout": schema.Choice(("auto", "vmap", "map"), optional=True),
    "train.keep_checkpoints": schema.Int(0, optional=True,
                                         fix="use an integer >= 0 (0 = keep all)"),
    "train.probe_every": schema.Int(0, optional=True,
                                    fix="use an integer >= 0 (0 = no probes during training)"),
    "train.probe_batch": schema.Int(1, optional=True,
                                    fix="use a positive number of training examples"),
    "train.dormant_tau": schema.Float(0.0, 1.0, high_open=True, optional=True,
                                      fix="use a threshold in [0, 1) (ReDo: 0, 0.025, 0.1)"),
    "train.reset_dead_every": schema.Int(0, optional=True,
                                         fix="use an integer >= 0 (0 = no dead-unit resets)"),
}


def validate(config: ml_collections.ConfigDict, num_devices: int, unit: str = "devices") -> None:
  """Raises ConfigError with one line per bad field (all of them, not just the first).

  The batch must split evenly over `num_devices` (named `unit` in the message).
  """
  problems = schema.problems(config, RULES)
  ok = lambda field: schema.problem(field, schema.get(config, field), RULES[field]) is None
  batch = schema.get(config, "data.batch_size")
  if ok("data.batch_size") and batch % num_devices:
    problems.append(f"data.batch_size={batch} is not divisible by the {num_devices} {unit}; "
                    f"use a multiple of {num_devices}")
  if ok("model.name"):
    try:
      build_model(config, num_classes=10)
    except errors.ConfigError as e:
      problems.append(str(e))
  problems += reset.problems(config)
  if schema.get(config, "grid") is not schema.MISSING:
    problems += grid_spec.validate(config)
    if not problems and grid_spec.is_grid(config):
      problems += _grid_nets(config, num_devices, unit)
  if problems:
    raise errors.ConfigError("\n".join(problems))


def _grid_nets(config: ml_collections.ConfigDict, num_devices: int, unit: str) -> list[str]:
  """Every net of a grid is a single run of its own (the same checks), and all fit one model."""
  for net, label in zip(grid_spec.nets(config), grid_spec.labels(config)):
    try:
      validate(net, num_devices, unit)
    except errors.ConfigError as e:
      return [f"grid net {grid_spec.describe_label(label)}: {line}"
              for line in str(e).splitlines()]
  try:
    build_model(grid_spec.padded_config(config), num_classes=10)
  except errors.ConfigError as e:
    return [f"the nets of config.grid do not fit one padded model: {e}"]
  return []
