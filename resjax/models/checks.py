"""Model-field validation shared by every family (ConfigError, one line naming
the field, the value and the fix)."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from resjax import activations
from resjax import errors

NORMS = (None, "batch", "layer")
DTYPES = ("float32", "bfloat16", "float16")


def check_int(field: str, value: Any, minimum: int) -> None:
  ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
  errors.check(ok and value >= minimum,
               f"model.{field}={value!r} is not allowed; use an integer >= {minimum}")


def check_bool(field: str, value: Any) -> None:
  errors.check(isinstance(value, (bool, np.bool_)),
               f"model.{field}={value!r} is not allowed; use True or False")


def check_activation(value: Any) -> None:
  errors.choice("model.activation", value, activations.names())


def check_dtype(value: Any) -> None:
  try:
    name = jnp.dtype(value).name
  except TypeError:
    name = None
  errors.check(name in DTYPES,
               f"model.dtype={value!r} is not allowed; choose one of: {', '.join(DTYPES)}")


def check_widths(field: str, widths: Any) -> None:
  errors.check(isinstance(widths, (tuple, list)) and len(widths) > 0,
               f"model.{field}={widths!r} is not allowed; use a non-empty tuple of integers >= 1")
  for w in widths:
    check_int(field, w, 1)
