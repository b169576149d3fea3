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

import itertools
from typing import Any, Sequence

import ml_collections

from resjax import errors
from resjax import models
from resjax import schema
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
  if isinstance(value, str):
    value = (value,)
  out = []
  for v in value:
    if isinstance(v, str):
      out.extend(p.strip() for p in v.split(",") if p.strip())
    elif isinstance(v, list):
      out.append(models.as_tuple(v))
    else:
      out.append(v)
  return tuple(out)


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


def validate(config: ml_collections.ConfigDict) -> list[str]:
  """Problems with `config.grid` (one line each; empty when it is fine)."""
  problems = schema.problems(config, {"grid.nets_per_call": schema.Int(
      0, optional=True, fix="use an integer >= 0 (0 = all nets in one call)")})
  model = config.model.get("name")
  for field, values in axes(config):
    group, _, name = field.partition(".")
    name_of = "grid.seeds" if field == "seed" else f"grid.{field}"
    if len(set(values)) != len(values):
      problems.append(f"{name_of}={values!r} repeats a value; give each value once")
    if field == "seed":
      if not all(schema.SEED.ok(v) for v in values):
        problems.append(f"grid.seeds={values!r} is not allowed; use integers >= 0 and < 2**32")
      continue
    if name not in config[group] and not (group == "model" and _model_field(model, name)):
      problems.append(f"grid.{field} varies {field}, which config.{group} lacks "
                      f"(model {model!r}); vary a field the config has")
      continue
    if group == "opt" and not all(schema.Float().ok(v) for v in values):
      problems.append(f"grid.{field}={values!r} is not allowed; use finite numbers")
    if group == "train" and not all(schema.COUNT.ok(v) for v in values):
      problems.append(f"grid.{field}={values!r} is not allowed; use integers >= 0")
  names = [f for f, _ in axes(config)]
  if any(f in ("model.width", "model.widths", "model.width_multiplier", "model.expansion")
         for f in names) and config.model.get("norm") == "layer":
    problems.append("a width axis with model.norm='layer' is not supported (layer norm "
                    "would average over the padded units); use norm=None or 'batch'")
  return problems


def _model_field(model: Any, name: str) -> bool:
  """Whether `name` is a field of model `model` (a grid may vary one the config
  leaves at its default; each net's config then holds it)."""
  return model in models.MODELS and name in models.fields(model)


def nets(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """Net k's config for each k: the product of the axes, seeds innermost."""
  found = axes(config)
  base = ml_collections.ConfigDict(config.to_dict())
  base.grid = config_group()
  if not found:
    return [base]
  out = []
  for combo in itertools.product(*(values for _, values in found)):
    net = ml_collections.ConfigDict(base.to_dict())
    for (field, _), value in zip(found, combo):
      if field == "seed":
        net.seed = int(value)
      else:
        group, name = field.split(".")
        net[group][name] = value
    out.append(net)
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
  count = len(nets(config))
  per_call = int(config.grid.get("nets_per_call", 0) or 0) if "grid" in config else 0
  per_call = count if per_call <= 0 else min(per_call, count)
  return [list(range(i, min(i + per_call, count))) for i in range(0, count, per_call)]


def padded_fields(config: ml_collections.ConfigDict,
                  members: Sequence[int] | None = None) -> dict[str, Any]:
  """Model fields (besides 'name') of the one model the nets `members` (default:
  all) of the grid fit in."""
  fields = {k: models.as_tuple(v) for k, v in config.model.items() if k != "name"}
  toggles = models.toggles(config.model.name)
  fixed = models.padded_values(config.model.name)
  gated = False
  all_nets = nets(config)
  members = range(len(all_nets)) if members is None else members
  for field, _ in axes(config):
    group, _, name = field.partition(".")
    if group != "model":
      continue
    values = [models.as_tuple(all_nets[k].model[name]) for k in members]
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
  out = ml_collections.ConfigDict(config.to_dict())
  for key, value in padded_fields(config, members).items():
    out.model[key] = value
  out.grid = config_group()
  return out


def needs_mask(config: ml_collections.ConfigDict) -> bool:
  """Whether the nets differ in shape (a model axis), so updates need a unit mask."""
  return any(f.startswith("model.") for f, _ in axes(config))


def grid_size(num_nets: int, num_devices: int) -> int:
  """Devices along the grid axis: the largest divisor of `num_nets` <= `num_devices`."""
  return max(d for d in range(1, min(num_nets, num_devices) + 1) if num_nets % d == 0)
