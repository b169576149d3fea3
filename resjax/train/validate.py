"""Checks of a training config, all fields at once, before any work starts.

Every field has one `resjax.schema` rule (`rules(config)`): the trainer's own
(`RULES`), the optimizer's (`optimizer.RULES`), the dataset's (`data.rules`:
`load`'s arguments and each embedded set's options), the model family's
(`models.rules`) and the grid's (`grid.spec.rules`). A field no rule covers is
refused too. What no single field can say (the batch over the devices, the
model as built, every net of a grid) is checked here after them. `unused`
names the fields the config's other choices make unused (launchers refuse
setting one).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from typing import Any, Callable

import ml_collections

from resjax import data
from resjax import errors
from resjax import models
from resjax import progress
from resjax import schema
from resjax.grid import spec as grid_spec
from resjax.train import optimizer
from resjax.train import reset
from resjax.train.state import build_model

STEPS = "use a positive number of steps"
# The trainer's own fields (the `opt` group's are optimizer.RULES).
RULES = {
    "seed": schema.SEED,
    "model.name": schema.Choice(lambda: tuple(models.MODELS)),
    "data.batch_size": schema.Int(1, fix="use a positive integer (the global batch)"),
    "data.augment": schema.Bool(optional=True),
    "data.flip": schema.Bool(optional=True),
    "data.pad": schema.Int(0, 64, optional=True),
    **{f"opt.{k}": r for k, r in optimizer.RULES.items()},
    "train.steps": schema.Int(1, fix=STEPS),
    "train.log_every": schema.Int(1, fix=STEPS),
    "train.eval_every": schema.Int(0, fix="use an integer >= 0 (0 = only at the end)"),
    "train.checkpoint_every": schema.Int(0, fix="use an integer >= 0 (0 = only at the end)"),
    "train.eval_train": schema.Bool(optional=True),
    "train.eval_batch_size": schema.Int(0, optional=True,
                                        fix="use a multiple of data.batch_size (0 = data.batch_size)"),
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
# A grid's published numbers to compare with (configs/cifar10.py:table6).
_TEXT = schema.Rule("str", optional=True)
PUBLISHED = {
    "published.metric": _TEXT, "published.source": _TEXT,
    "published.conditions": schema.List(schema.Rule("str"), optional=True, unique=True),
    "published.values": schema.List(schema.Float(0), optional=True),
}


def rules(config: Any) -> dict[str, schema.Rule]:
  """Every field `config` may have, with its rule (depends on the model and dataset
  named, and on the optimizer for the grid's axes)."""
  out = dict(RULES)
  name = schema.get(config, "data.name")
  out.update({f"data.{k}": r for k, r in data.rules(
      name if isinstance(name, str) and name in data.NAMES else "").items()})
  model = schema.get(config, "model.name")
  out.update(_model_rules(model if isinstance(model, str) else ""))
  if schema.get(config, "grid") is not schema.MISSING:
    out.update(grid_spec.rules(config))
  if schema.get(config, "published") is not schema.MISSING:
    out.update(PUBLISHED)
  return out


@functools.lru_cache(maxsize=None)
def _model_rules(name: str) -> dict[str, schema.Rule]:
  """model.<field> -> the family's rule (fields are optional: the family has defaults)."""
  return {f"model.{k}": dataclasses.replace(r, optional=True)
          for k, r in models.rules(name).items()}


def unused(config: Any) -> dict[str, str]:
  """Fields of `config` that its other choices make unused: dotted field -> why."""
  out = {}
  opt = schema.get(config, "opt")
  if hasattr(opt, "keys"):
    out.update({f"opt.{k}": v for k, v in optimizer.unused(opt).items()})
  name = schema.get(config, "data.name")
  if isinstance(name, str):
    out.update({f"data.{k}": v for k, v in data.unused(name).items()
                if schema.get(config, f"data.{k}") is not schema.MISSING})
  if schema.get(config, "data.augment") is False:
    out.update({f"data.{k}": "data.augment=False draws no crops or flips"
                for k in ("pad", "flip") if schema.get(config, f"data.{k}") is not schema.MISSING})
  model = schema.get(config, "model")
  if hasattr(model, "keys") and isinstance(model.get("name"), str) and model["name"] in models.MODELS:
    out.update({f"model.{k}": v for k, v in models.unused(model["name"], model).items()})
  if schema.get(config, "grid") is not schema.MISSING and not grid_spec.is_grid(config):
    out["grid.nets_per_call"] = "config.grid has no axis (a single run)"
  return out


def unknown(config: Any, table: dict[str, schema.Rule]) -> list[str]:
  """The fields of `config` that no rule of `table` covers: one line for the model's,
  one for the dataset's, one per other field."""
  out = []
  extra: dict[str, list[str]] = {"model": [], "data": []}
  for field in schema.uncovered(config, table):
    group = field.partition(".")[0]
    if group in extra:
      extra[group].append(field)
    else:
      out.append(f"config.{field} is not a field of a training config; remove it")
  for group, fields in extra.items():
    name = schema.get(config, f"{group}.name")
    if not fields or schema.problem(f"{group}.name", name, table[f"{group}.name"]):
      continue  # Which fields there are depends on the name, refused already.
    one = len(fields) == 1
    are, them = ("is not a", "it") if one else ("are not", "them")
    if group == "model":
      out.append(f"{', '.join(fields)} {are} field{'' if one else 's'} of model {name!r}; "
                 f"remove {them} (its fields: {', '.join(models.fields(name))})")
    else:
      what = "is not an option" if one else "are not options"
      out.append(f"{', '.join(fields)} {what} of data.name="
                 f"{name!r}; remove {them} (its options: "
                 f"{', '.join(data.options(name)) or 'none'})")
  return out


def validate(config: ml_collections.ConfigDict, num_devices: int, unit: str = "devices",
             say: Callable[[str], None] | None = None) -> None:
  """Raises ConfigError with one line per bad field (all of them, not just the first).

  The batch must split evenly over `num_devices` (named `unit` in the message).
  `say` gets progress lines while the nets of a large grid are checked.
  """
  schema.require_config(config, "a training config (a ConfigDict, see configs/embedded.py)")
  table = rules(config)
  base = {k: r for k, r in table.items() if not k.startswith("grid.")}
  problems = schema.problems(config, base) + unknown(config, table)
  ok = lambda field: schema.problem(field, schema.get(config, field), table[field]) is None
  batch = schema.get(config, "data.batch_size")
  if ok("data.batch_size") and batch % num_devices:
    problems.append(f"data.batch_size={batch} is not divisible by the {num_devices} {unit}; "
                    f"use a multiple of {num_devices}")
  eval_batch = schema.get(config, "train.eval_batch_size")
  if ok("train.eval_batch_size") and ok("data.batch_size") \
      and eval_batch not in (schema.MISSING, None) and eval_batch % batch:
    # The mesh splits the training batch: a multiple of it splits the same way.
    problems.append(f"train.eval_batch_size={eval_batch} is not a multiple of "
                    f"data.batch_size={batch}; use one (or 0: data.batch_size)")
  if all(ok(f) for f in table if f.startswith("model.")) and not any(
      line.startswith("model.") for line in problems):
    try:
      build_model(config, num_classes=10)
    except errors.ConfigError as e:
      problems.append(str(e))
  if ok("train.reset_dead_every"):  # Whether the family can reset: once the value is fine.
    problems += reset.problems(config)
  if schema.get(config, "grid") is not schema.MISSING:
    problems += grid_spec.validate(config)
    if not problems and grid_spec.is_grid(config):
      problems += _grid_nets(config, say)
  if problems:
    raise errors.ConfigError("\n".join(problems))


def _grid_nets(config: ml_collections.ConfigDict, say: Callable[[str], None] | None
               ) -> list[str]:
  """Every net of a grid is a model of its own (the family's checks across fields), and
  all fit one padded model.

  The axes' values passed their fields' rules already, and only the model axes
  change the model: one model per combination of their values is built.
  """
  found = [(f, v) for f, v in grid_spec.axes(config) if f.startswith("model.")]
  name = config.model.name
  base = {k: models.as_tuple(v) for k, v in config.model.items() if k != "name"}
  combos = list(itertools.product(*(v for _, v in found)))
  report = progress.Progress(len(combos), "models checked", report=say or (lambda _: None),
                             every=1.0)
  report.update(0)  # The rate counts from here.
  start = time.perf_counter()
  for done, combo in enumerate(combos, 1):
    label = dict(zip((f for f, _ in found), combo))
    problem = _model_problem(name, _frozen({**base, **{f[6:]: v for f, v in label.items()}}))
    if problem:
      return [f"grid net {grid_spec.describe_label(label)}: {line}"
              for line in problem.splitlines()]
    if say is not None and time.perf_counter() - start > 1.0:
      report.update(done)
  padded = {**base, **{k: models.as_tuple(v) for k, v in grid_spec.padded_fields(config).items()}}
  problem = _model_problem(name, _frozen(padded))
  return [f"the nets of config.grid do not fit one padded model: {problem}"] if problem else []


def _frozen(fields: dict) -> tuple:
  return tuple(sorted(fields.items()))


@functools.lru_cache(maxsize=4096)
def _model_problem(name: str, fields: tuple) -> str | None:
  """The family's refusal of model `name` with `fields` (None: it builds). Building is a
  pure function of its arguments, so a grid checked again costs nothing."""
  try:
    models.build(name, 10, **dict(fields))
  except errors.ConfigError as e:
    return str(e)
  return None
