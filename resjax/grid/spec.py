"""Grids: one config, several values per axis, trained as one program.

`config.grid` names the axes: `grid.seeds`, `grid.opt.<scalar>` (lr, momentum,
weight_decay, decay, warmup_lr), `grid.model.<field>` (width, depth, widths,
residual, plain, bottleneck, shortcut, width_multiplier, expansion, stages,
first, first_bias_init, bottleneck_bn_shift) and `grid.train.<field>`
(reset_dead_every: an intervention, so that paired arms train in one program
at the same seeds).
Every non-empty axis is one factor of a product; net k of the grid is the
config with net k's values filled in and the grid emptied (`nets`), i.e.
exactly the single run with those settings.

Nets that differ in shape are padded to one model (`padded_fields`): widths
to the widest (the extra units hold zeros and their updates are masked),
depths to the deepest (the extra blocks are gated out, so they are the
identity), plain / residual and linear / ReLU6 bottlenecks by gates in the
model's 'gates' collection (resjax/models/). Each net is initialized at its
own size by the single run's own code and then padded (`pad`), so a padded net
starts where the net built at its own size starts and, step by step, computes
the same numbers on its own units; `crop` cuts net k back out.

This module holds the config logic: axes -> net configs, labels, conditions,
calls and the padded model (resjax/grid/padding.py does the tree surgery).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
from typing import Any, Callable, Sequence

import ml_collections

from resjax import errors
from resjax import models
from resjax import progress
from resjax import schema
from resjax.train import optimizer
from resjax.train.optimizer import OPT_AXES  # Scalars of `opt` a grid may vary.

# Fields of `model` a grid may vary.
MODEL_AXES = ("width", "depth", "widths", "residual", "plain", "bottleneck", "shortcut",
              "width_multiplier", "expansion", "stages", "first", "first_bias_init",
              "bottleneck_bn_shift")
# Fields of `train` a grid may vary (what the nets' own programs do, not when
# the run logs or saves).
TRAIN_AXES = ("reset_dead_every",)
# Model fields switched by a gate: declared beside each family (models.toggles).
TOGGLES = models.TOGGLES
# More nets than this in one grid is refused before anything is built: each net
# is a config, a state slice and a metrics row per log step.
MAX_NETS = 100_000
NETS_PER_CALL = schema.Int(0, optional=True, fix="use an integer >= 0 (0 = all nets in one call)")


def config_group() -> ml_collections.ConfigDict:
  """The empty grid (a single run); configs add it as `config.grid`."""
  return ml_collections.ConfigDict(dict(
      seeds=(),  # Seeds of the nets (each also orders its own batches); () = config.seed.
      opt=ml_collections.ConfigDict({k: () for k in OPT_AXES}),  # Values per opt scalar.
      model=ml_collections.ConfigDict({k: () for k in MODEL_AXES}),  # Values per model field.
      train=ml_collections.ConfigDict({k: () for k in TRAIN_AXES}),  # Values per train field.
      nets_per_call=0,  # Nets per compiled call, in order (0 = all nets in one call).
  ))


def _values(value: Any) -> tuple:
  """An axis as a tuple; 'a,b' strings (from flags) are split at commas."""
  if value is None:
    return ()
  found = schema.entries(value, split=True)
  return tuple(models.as_tuple(v) for v in (found if found is not None else (value,)))


def axes(config: ml_collections.ConfigDict) -> list[tuple[str, tuple]]:
  """The non-empty axes as (dotted field, values): model, opt, train, then seeds."""
  g = config.get("grid")
  if g is None:
    return []
  out = []
  for field in MODEL_AXES:
    values = _values(g.model.get(field, ()))
    if values:
      out.append((f"model.{field}", values))
  for field in OPT_AXES:
    values = _values(g.opt.get(field, ()))
    if values:
      out.append((f"opt.{field}", values))
  for field in TRAIN_AXES:
    values = _values((g.get("train") or {}).get(field, ()))
    if values:
      out.append((f"train.{field}", values))
  seeds = _values(g.get("seeds", ()))
  if seeds:
    out.append(("seed", seeds))
  return out


# How the nets of a call share a device: vmapped (one batched program) or one
# after another inside the same compiled program (`lax.map`).
LAYOUTS = {"vmap": "nets vmapped", "map": "nets one after another"}
# `train.grid_layout='auto'`: the families that run one after another, per
# platform; the rest are vmapped. CPU (`python -m launch.bench layouts`, 8 nets
# on one device, docs/performance.md): vmapping was faster than `lax.map` for
# the MLP, the digits ResNet-20 and the inverted-residual nets alike, so none.
# GPU: not measured yet (vmapped convolutions become grouped ones, whose
# backward pass is slow on CUDA, jax issue 13800); launch/gpu_check.sh runs
# the same table, and its numbers decide this entry.
LAYOUT_RULE: dict[str, tuple[str, ...]] = {"cpu": (), "gpu": ()}


def layout(config: ml_collections.ConfigDict, platform: str) -> str:
  """'vmap' or 'map': `train.grid_layout`, or the rule for the model family on `platform`.

  It is a `train` field: it changes how the nets run, not what they compute
  (up to rounding), so a run may resume under another layout.
  """
  chosen = str(config.train.get("grid_layout", "auto") or "auto")
  if chosen != "auto":
    return chosen
  return "map" if config.model.name in LAYOUT_RULE.get(platform, ()) else "vmap"


def is_grid(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` asks for more than its single run."""
  return bool(axes(config))


@functools.lru_cache(maxsize=None)
def _axis(item: schema.Rule) -> schema.Rule:
  """The rule of an axis: distinct values, each allowed for the field it varies."""
  item = dataclasses.replace(item, optional=False, when=None)
  return schema.List(item, split=True, unique=True, optional=True,
                     fix=f"give distinct values, none repeated; each: {item.advice()}")


@functools.lru_cache(maxsize=None)
def _never(why: str) -> schema.Rule:
  """The rule of an axis that must stay empty: `why` says what to do instead."""
  return schema.List(schema.Rule("any", test=lambda v: False), split=True, optional=True,
                     fix=why)


def rules(config: ml_collections.ConfigDict) -> dict[str, schema.Rule]:
  """Every field of `config.grid` with its rule: each axis takes values the field it
  varies allows (the optimizer's or the model family's rule); an axis over a field
  the config lacks or does not use must stay empty."""
  name = schema.get(config, "model.name")
  model = schema.get(config, "model")
  opt = schema.get(config, "opt")
  family = models.rules(name) if isinstance(name, str) else {}
  unused = {}
  if hasattr(opt, "keys"):
    unused.update({f"opt.{k}": v for k, v in optimizer.unused(opt).items()})
  if family and hasattr(model, "keys"):
    unused.update({f"model.{k}": v for k, v in models.unused(name, model).items()})
  out = {"grid.seeds": _axis(schema.SEED), "grid.nets_per_call": NETS_PER_CALL}
  for field in OPT_AXES:
    why = unused.get(f"opt.{field}")
    out[f"grid.opt.{field}"] = (_never(f"leave it empty: {why}") if why
                                else _axis(optimizer.RULES[field]))
  for field in MODEL_AXES:
    why = unused.get(f"model.{field}")
    if not family:  # An unknown model (refused by its own rule): nothing to check against.
      rule = _axis(schema.Rule("any"))
    elif field not in family:
      known = ", ".join(k for k in family if k in MODEL_AXES)
      rule = _never(f"leave it empty: model {name!r} has no field {field}; vary a field it "
                    f"has{f': {known}' if known else ''}")
    elif why:
      rule = _never(f"leave it empty: {why}")
    else:
      rule = _axis(family[field])
    out[f"grid.model.{field}"] = rule
  # A grid may vary a model field the config leaves at its default (each net's
  # config then holds it), and the train fields that are interventions.
  train = schema.get(config, "train")
  for field in TRAIN_AXES:
    has = hasattr(train, "keys") and field in train
    out[f"grid.train.{field}"] = (_axis(schema.COUNT) if has else _never(
        f"leave it empty: config.train lacks {field}"))
  return out


def count(config: ml_collections.ConfigDict) -> int:
  """Nets of the grid: the product of its axes' lengths (nothing is built)."""
  return math.prod(len(v) for _, v in axes(config))


def validate(config: ml_collections.ConfigDict) -> list[str]:
  """Problems with `config.grid` (one line each; empty when it is fine)."""
  problems = schema.problems(config, rules(config))
  if problems:
    return problems
  found = axes(config)
  size = count(config)
  if size > MAX_NETS:
    shape = " x ".join(f"{len(v)} {f}" for f, v in found)
    problems.append(f"config.grid asks for {size:,} nets ({shape}); a grid holds at most "
                    f"{MAX_NETS:,}: use fewer values per axis, or split it over several runs")
  names = [f for f, _ in found]
  if any(f in ("model.width", "model.widths", "model.width_multiplier", "model.expansion")
         for f in names) and config.model.get("norm") == "layer":
    problems.append("a width axis with model.norm='layer' is not supported (layer norm "
                    "would average over the padded units); use norm=None or 'batch'")
  return problems


def nets(config: ml_collections.ConfigDict,
         say: Callable[[str], None] | None = None) -> list[ml_collections.ConfigDict]:
  """Net k's config for each k: the product of the axes, seeds innermost.

  `say` gets a progress line every second once building has taken more than one.
  """
  found = axes(config)
  base = config.to_dict()
  base["grid"] = config_group().to_dict()
  if not found:
    return [ml_collections.ConfigDict(base)]
  out = []
  total = count(config)
  report = progress.Progress(total, "net configs", report=say or (lambda line: None),
                             every=1.0)
  report.update(0)  # The rate counts from here.
  start = time.perf_counter()
  for combo in itertools.product(*(values for _, values in found)):
    net = ml_collections.ConfigDict(base)
    for (field, _), value in zip(found, combo):
      if field == "seed":
        net.seed = int(value)
      else:
        group, name = field.split(".")
        net[group][name] = value
    out.append(net)
    if say is not None and time.perf_counter() - start > 1.0:
      report.update(len(out))
  return out


def labels(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """Net k's axis values, e.g. {'model.depth': 20, 'seed': 1}."""
  found = axes(config)
  return [dict(zip((f for f, _ in found), combo))
          for combo in itertools.product(*(values for _, values in found))] or [{}]


def condition(label: dict[str, Any]) -> dict[str, Any]:
  """A label without its seed: the condition a net belongs to."""
  return {k: v for k, v in label.items() if k != "seed"}


def condition_name(label: dict[str, Any]) -> str:
  """The condition of a label as text, e.g. 'model.depth=20 model.plain=False' ('all'
  for a grid of seeds only)."""
  return " ".join(f"{k}={v}" for k, v in condition(label).items()) or "all"


def describe_label(label: dict[str, Any]) -> str:
  """A label as text, e.g. 'model.depth=20, seed=1'."""
  return ", ".join(f"{k}={v}" for k, v in label.items())


def _max(values: Sequence[Any]) -> Any:
  """Elementwise maximum of numbers or equally shaped nested tuples."""
  first = values[0]
  if isinstance(first, (tuple, list)):
    lengths = {len(v) for v in values}
    errors.check(len(lengths) == 1, f"grid values {values!r} have different lengths; "
                 "nets of one grid need the same number of stages")
    return tuple(_max([v[i] for v in values]) for i in range(len(first)))
  if isinstance(first, str):
    errors.check(len(set(values)) == 1, f"grid values {values!r} differ in a string")
    return first
  return max(values)


def calls(config: ml_collections.ConfigDict) -> list[list[int]]:
  """The nets of each compiled call: consecutive groups of `grid.nets_per_call`
  (0: all nets in one call). Each call pads only its own nets, so ordering the
  axes so that a call holds one depth wastes no compute on padding."""
  size = count(config)
  per_call = int(config.grid.get("nets_per_call", 0) or 0) if "grid" in config else 0
  per_call = size if per_call <= 0 else min(per_call, size)
  return [list(range(i, min(i + per_call, size))) for i in range(0, size, per_call)]


def padded_fields(config: ml_collections.ConfigDict,
                  members: Sequence[int] | None = None) -> dict[str, Any]:
  """Model fields (besides 'name') of the one model the nets `members` (default:
  all) of the grid fit in."""
  fields = {k: models.as_tuple(v) for k, v in config.model.items() if k != "name"}
  toggles = models.toggles(config.model.name)
  fixed = models.padded_values(config.model.name)
  gated = False
  all_labels = labels(config)
  members = range(len(all_labels)) if members is None else members
  for field, _ in axes(config):
    group, _, name = field.partition(".")
    if group != "model":
      continue
    values = [models.as_tuple(all_labels[k][field]) for k in members]
    if name in toggles:
      fields[name] = toggles[name].padded
    elif name in fixed:
      fields[name] = fixed[name]
    elif name == "stages":
      strides = {tuple(st[2] for st in v) for v in values}
      errors.check(len(strides) == 1, f"grid.model.stages={values!r} differ in strides; "
                   "vary widths and block counts only")
      fields[name] = _max(values)
    else:
      fields[name] = _max(values)
    gated = True
  if gated:
    fields["gated"] = True
  return fields


def padded_config(config: ml_collections.ConfigDict,
                  members: Sequence[int] | None = None) -> ml_collections.ConfigDict:
  """The config of the one (gated) model the nets `members` (default: all) of
  `config.grid` fit in."""
  tree = config.to_dict()
  tree["model"].update(padded_fields(config, members))  # As a dict: any value types.
  tree["grid"] = config_group().to_dict()
  return ml_collections.ConfigDict(tree)


def needs_mask(config: ml_collections.ConfigDict) -> bool:
  """Whether the nets differ in shape (a model axis), so updates need a unit mask."""
  return any(f.startswith("model.") for f, _ in axes(config))


def grid_size(num_nets: int, num_devices: int) -> int:
  """Devices along the grid axis: the largest divisor of `num_nets` <= `num_devices`."""
  return max(d for d in range(1, min(num_nets, num_devices) + 1) if num_nets % d == 0)
