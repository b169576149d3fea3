"""Flax linen models: MLP, CIFAR ResNet / plain / pre-activation, its 1-D
twin for sequences, inverted residual, width-n first layer; one module per
family and this registry.

All models take NHWC images (the 1-D ResNet NLC sequences; the MLP flattens
whatever it gets) and return
float32 logits from `__call__(x, train=False)`. Parameters are float32; `dtype`
sets the compute dtype.

Probe hooks. Every tensor fed to an activation is sown into the 'preacts'
collection under a flat, unique name in forward order ('stem',
'stage1/block0/act1', ...). Residual blocks sow their identity path into
'shortcut' and their residual branch into 'branch' under the block name
('stage1/block0'), with block sum = shortcut + branch; blocks without a
shortcut sow only 'branch'. Nothing is sown during `init`, so the variables from
`init` hold only 'params' (and 'batch_stats'). Get the tensors with

  logits, taps = model.apply(variables, x, train=False,
                             mutable=['preacts', 'shortcut', 'branch'])

where each value of `taps[collection]` is a 1-tuple (`probe_tensors` unwraps
them). Sowing never changes the logits. Under jit the returned dicts are sorted
by name; `sown_names` gives the forward order. A gated model (grids) runs the
same code and sows every tap that a net of its grid may sow.

Adding a family: a module beside these with its class (fields, TOGGLES,
[PADDED,] `describe`, `traits`; see family.py), and one line in MODELS.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resjax import errors
from resjax import schema
from resjax.models.checks import DTYPES, NORMS, check_dtype
from resjax.models.family import Toggle, Traits
from resjax.models.first_layer import FIRST_LAYERS, FirstLayerNet
from resjax.models.inverted_residual import (CIFAR_STAGES, InvertedResidualBlock,
                                             InvertedResidualNet, round_width)
from resjax.models.layers import CONV_IMPLS, he_normal
from resjax.models.mlp import MLP
from resjax.models.resnet import BasicBlock, ResNet, shortcut_option_a
from resjax.models.resnet1d import ResNet1D

Array = jax.Array

COLLECTIONS = ("preacts", "shortcut", "branch")

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "resnet": ResNet,
    "resnet1d": ResNet1D,
    "invres": InvertedResidualNet,
    "firstlayer": FirstLayerNet,
}


def toggles(name: str) -> dict[str, Toggle]:
  """The fields of model `name` that a grid switches by a gate ({} for none)."""
  return dict(getattr(MODELS.get(name), "TOGGLES", {}))


def gate_value(name: str) -> Callable[[str, Any], float | None] | None:
  """Model `name`'s rule for the gates whose value it decides from a net's own
  parameters (`gate_value(gate, own_params)`; None: it decides none)."""
  return getattr(MODELS.get(name), "gate_value", None)


def padded_values(name: str) -> dict[str, Any]:
  """The fields of model `name` that a grid pads to one value without a gate."""
  return dict(getattr(MODELS.get(name), "PADDED", {}))


# Model name -> toggled field -> (gate name, field value -> gate value).
TOGGLES: dict[str, dict[str, tuple[str, Any]]] = {
    name: {field: (t.gate, t.value) for field, t in toggles(name).items()} for name in MODELS}
# Toggled field -> what a padded model takes for it (the gates then decide).
TOGGLE_PADDED: dict[str, Any] = {
    field: t.padded for name in MODELS for field, t in toggles(name).items()}


def rules(name: str) -> dict[str, schema.Rule]:
  """The fields of model `name` a config may set, each with its `resjax.schema` rule
  ({} for an unknown name); what one field cannot say (e.g. a ResNet's depth
  6n+2 for its widths) the family checks when it is built."""
  return dict(getattr(MODELS.get(name), "RULES", {}))


def unused(name: str, model_fields: Mapping[str, Any]) -> dict[str, str]:
  """Fields of model `name` that the other fields make unused: field -> why
  (a family's `unused` static method; {} when it has none)."""
  family = MODELS.get(name)
  if family is None or not hasattr(family, "unused"):
    return {}
  return family.unused(_filled(name, model_fields))


def as_tuple(value: Any) -> Any:
  """Lists (e.g. from a ConfigDict) to tuples, recursively, so modules hash."""
  if isinstance(value, (list, tuple)):
    return tuple(as_tuple(v) for v in value)
  return value


def fields(name: str) -> tuple[str, ...]:
  """The keyword arguments that `build(name, ...)` accepts."""
  errors.choice("model.name", name, MODELS)
  return tuple(f.name for f in dataclasses.fields(MODELS[name])
               if f.name not in ("parent", "name", "num_classes"))


def build(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """The model called `name` (a MODELS key) with `kwargs` as fields.

  Raises ConfigError for an unknown name, an unknown field or a bad value.
  `dtype` may be a string ('float32', 'bfloat16', 'float16'); lists become
  tuples.
  """
  allowed = fields(name)
  for key in kwargs:
    errors.check(key in allowed, f"model.{key} is not a field of model {name!r}; "
                 f"fields: {', '.join(allowed)}")
  kwargs = {k: as_tuple(v) for k, v in kwargs.items()}
  if "dtype" in kwargs:
    check_dtype(kwargs["dtype"])
    kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
  return MODELS[name](num_classes=num_classes, **kwargs)


def _filled(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
  """Every field of model `name`: the given values, else the class defaults."""
  errors.choice("model.name", name, MODELS)
  out = {}
  for f in dataclasses.fields(MODELS[name]):
    if f.name in given:
      out[f.name] = given[f.name]
    elif f.default is not dataclasses.MISSING:
      out[f.name] = f.default
  return out


def describe(name: str, model_fields: Mapping[str, Any]) -> str:
  """A short name of the net: 'resnet-20', 'plain-56', 'residual-mlp-4x64',
  'invres (linear bottleneck)', ... (`model_fields`: e.g. `config.model`;
  a missing field takes the model's default)."""
  return MODELS[name].describe(_filled(name, model_fields))


def traits(name: str, model_fields: Mapping[str, Any]) -> Traits:
  """The net's (width, depth, variant), the terms the studies compare nets in."""
  return MODELS[name].traits(_filled(name, model_fields))


def tap_in_padded(name: str, tap: str, own: Mapping[str, Any],
                  padded: Mapping[str, Any]) -> str:
  """The tap of a grid's padded model of family `name` (fields `padded`) that
  holds the tap `tap` of a net of it (fields `own`); a family's layers keep
  their names unless it says otherwise (`tap_in_padded` beside its class)."""
  rule = getattr(MODELS[name], "tap_in_padded", None)
  return tap if rule is None else rule(tap, _filled(name, own), _filled(name, padded))


def param_count(params: Any) -> int:
  """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
  return int(sum(math.prod(p.shape) for p in jax.tree.leaves(params)))


def probe_tensors(taps: Mapping[str, Any], collection: str = "preacts") -> dict[str, Array]:
  """Unwraps one collection of `apply(..., mutable=COLLECTIONS)` to {name: tensor}.

  Outside jit the names come in forward order; a jitted apply returns them
  sorted by name, so use `sown_names` for the forward order.
  """
  out = {}
  for key, value in taps.get(collection, {}).items():
    if not (isinstance(value, tuple) and len(value) == 1):
      raise ValueError(f"{collection}[{key!r}] holds {len(value)} values, not 1; pass "
                       "apply only 'params' and 'batch_stats'")
    out[key] = value[0]
  return out


def sown_names(model: nn.Module, input_shape: Sequence[int],
               collection: str = "preacts") -> tuple[str, ...]:
  """Names `model` sows into `collection`, in forward order (abstract trace only).

  `input_shape` excludes the batch dimension.
  """
  names = []

  def trace(x):
    variables = model.init(jax.random.key(0), x)
    _, taps = model.apply(variables, x, mutable=[collection])
    names.extend(taps.get(collection, {}))  # insertion order = forward order
    return x

  jax.eval_shape(trace, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
  return tuple(names)


__all__ = [
    "BasicBlock", "CIFAR_STAGES", "COLLECTIONS", "CONV_IMPLS", "DTYPES", "FIRST_LAYERS",
    "FirstLayerNet", "InvertedResidualBlock", "InvertedResidualNet", "MLP", "MODELS", "NORMS",
    "ResNet", "ResNet1D", "TOGGLES", "TOGGLE_PADDED", "Toggle", "Traits", "as_tuple", "build",
    "describe", "fields", "he_normal", "padded_values", "param_count", "probe_tensors",
    "round_width", "rules", "shortcut_option_a", "sown_names", "toggles", "traits", "unused",
]
