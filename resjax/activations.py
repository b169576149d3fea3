"""Activation functions by name.

Each entry also says where the activation is invertible, which the collapse
oracle and the probes use: a unit is "active" (on duty) when its
pre-activation lies in that region.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from resjax import errors

Array = jax.Array


class Activation(NamedTuple):
  fn: Callable[[Array], Array]
  # Boolean mask of pre-activations where the function is locally invertible.
  active: Callable[[Array], Array]
  # True when the function is piecewise linear with slope 1 on `active`, so it
  # acts as the identity there (MobileNetV2 Lemma 1).
  identity_on_active: bool
  # The open interval (lo, hi) that `active` describes; the collapse theory
  # uses it for the odds that a unit with a Gaussian pre-activation is on duty.
  region: tuple[float, float] = (-math.inf, math.inf)


def _everywhere(z: Array) -> Array:
  return jnp.ones_like(z, dtype=bool)


# GELU is not monotone: its derivative vanishes near z = -0.7518.
_GELU_MIN = -0.7517916


REGISTRY: dict[str, Activation] = {
    "relu": Activation(jax.nn.relu, lambda z: z > 0, True, (0.0, math.inf)),
    "relu6": Activation(jax.nn.relu6, lambda z: (z > 0) & (z < 6), True, (0.0, 6.0)),
    "leaky_relu": Activation(lambda z: jax.nn.leaky_relu(z, 0.01), _everywhere, False),
    "elu": Activation(jax.nn.elu, _everywhere, False),
    "gelu": Activation(lambda z: jax.nn.gelu(z, approximate=False),
                       lambda z: z > _GELU_MIN, False, (_GELU_MIN, math.inf)),
    "softplus": Activation(jax.nn.softplus, _everywhere, False),
    "tanh": Activation(jnp.tanh, _everywhere, False),
    "identity": Activation(lambda z: z, _everywhere, True),
}


def names() -> tuple[str, ...]:
  """All registered activation names, in registry order."""
  return tuple(REGISTRY)


def get(name: str) -> Activation:
  """The registry entry for `name`; a ConfigError lists the known names."""
  errors.choice("activation", name, REGISTRY)
  return REGISTRY[name]


def fn(name: str) -> Callable[[Array], Array]:
  """The activation function itself."""
  return get(name).fn
