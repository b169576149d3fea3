"""Model-field checks shared by every family, as `resjax.schema` rules (ConfigError,
one line naming the field, the value and the fix)."""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from resjax import activations
from resjax import schema

NORMS = (None, "batch", "layer")
DTYPES = ("float32", "bfloat16", "float16")
ACTIVATION = schema.Choice(activations.names)
WIDTHS = schema.Rule("ints", low=1, nonempty=True, fix="use a non-empty tuple of integers >= 1")
# Fields every family has.
DTYPE = schema.Choice(DTYPES)
GATED = schema.Bool(fix="leave model.gated out (grids set it)")


def check_fields(module: Any, rules: Mapping[str, schema.Rule]) -> None:
  """ConfigError naming each field of a family's `module` that breaks its rule in `rules`
  (the family's RULES; dtype may already be a NumPy dtype, as `models.build` makes it)."""
  schema.check({k: getattr(module, k) for k in rules if k != "dtype"},
               {k: r for k, r in rules.items() if k != "dtype"}, prefix="model.")
  if "dtype" in rules:
    check_dtype(module.dtype)


def check_int(field: str, value: Any, minimum: int) -> None:
  schema.check_value(f"model.{field}", value, schema.Int(minimum))


def check_dtype(value: Any) -> None:
  try:
    name = jnp.dtype(value).name
  except TypeError:
    name = None
  schema.check_value("model.dtype", name if name in DTYPES else value, schema.Choice(DTYPES))

