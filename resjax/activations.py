"""Activation functions by name, each with the region where y = act(z) gives z back.

A unit is "active" (on duty) when its pre-activation z lies in the open
interval `region`: there `inverse(act(z))` returns z, in float32, to within
ROUNDTRIP_TOL (tested), and y alone tells that z lies there. Outside the region the activation has no
usable inverse, and y tells only on which side z lies:

  relu, relu6  y = 0 (z <= 0) and, for relu6, y = 6 (z >= 6) are constant;
  gelu         y <= 0 has two preimages (one on each side of GELU's minimum at
               z = -0.7518) or none usable, so without branch knowledge only
               y > 0, i.e. z > 0, is invertible;
  elu, tanh    flatten out: elu(z) -> -1 below ELU_LO = -8.34 and tanh(z) -> +-1
               beyond +-TANH_HI = 4.864, where a few float32 steps of y (2^-24
               each) are worth more than ROUNDTRIP_TOL in z;
  softplus     underflows below SOFTPLUS_LO = -87.34 (the smallest normal float32).

leaky_relu and identity are invertible everywhere. The collapse decoders and
the probes use these regions; the collapse theory uses their bounds for the
odds that a Gaussian pre-activation is on duty.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from resjax import errors

Array = jax.Array

# One float32 step of y near |y| = 1 is 2^-24; the regions keep the effect of
# four such steps (float32 tanh, arctanh, expm1, log1p are good to a few) on
# the inverse below ROUNDTRIP_TOL.
ROUNDTRIP_TOL = 1e-3
_ULP = 4 * 2.0 ** -24
ELU_LO = math.log(_ULP / ROUNDTRIP_TOL)  # elu'(z) = e^z = 4 ulp / tol: -8.34
TANH_HI = math.acosh(math.sqrt(ROUNDTRIP_TOL / _ULP))  # sech^2 z = 4 ulp / tol: 4.864
SOFTPLUS_LO = math.log(float(np.finfo(np.float32).tiny))  # -87.34
# GELU's minimum (its derivative vanishes there): the two branches meet at it.
GELU_ARGMIN = -0.7517916


class Activation(NamedTuple):
  fn: Callable[[Array], Array]
  # z from y = fn(z) for z in `region` (undefined elsewhere).
  inverse: Callable[[Array], Array]
  # True when the function is piecewise linear with slope 1 on the region, so
  # it acts as the identity there (MobileNetV2 Lemma 1).
  identity_on_active: bool
  # The open interval (lo, hi) of pre-activations where the unit is on duty.
  region: tuple[float, float] = (-math.inf, math.inf)

  def active(self, z: Array) -> Array:
    """Boolean mask of pre-activations in the region (the unit is on duty)."""
    lo, hi = self.region
    on = jnp.ones_like(z, dtype=bool)
    if lo > -math.inf:
      on = on & (z > lo)
    if hi < math.inf:
      on = on & (z < hi)
    return on


def _gelu(z: Array) -> Array:
  return jax.nn.gelu(z, approximate=False)


def _gelu_inverse(y: Array, steps: int = 3) -> Array:
  """z > 0 with z Phi(z) = y > 0, by Newton from the upper bound y / Phi(y).

  z Phi(z) is increasing on z > 0 with slope Phi + z phi >= 1/2; y <= z <=
  y / Phi(y) brackets the root, and Newton converges quadratically from
  there: 3 steps reach float32 rounding (1.8e-7 relative error against a
  float64 Newton, 1.4e-7 after more steps; 2 leave 4e-7, tests/test_collapse.py).
  """
  y = jnp.maximum(y, 1e-30)
  z = y / _phi_positive(y)
  for _ in range(steps):
    phi = _phi_positive(z)  # one erf per step: z Phi(z) and the slope share it
    slope = phi + z * jnp.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    z = jnp.clip(z - (z * phi - y) / slope, y, None)
  return z


def _phi_positive(z: Array) -> Array:
  """The normal CDF for z > 0 from erf alone (no erfc branch: Phi >= 1/2 there)."""
  return 0.5 * (1.0 + jax.lax.erf(z * (1 / math.sqrt(2))))


def _softplus_inverse(y: Array) -> Array:
  """log(e^y - 1) written as y + log(1 - e^-y): no overflow for large y."""
  return y + jnp.log(-jnp.expm1(-y))


REGISTRY: dict[str, Activation] = {
    "relu": Activation(jax.nn.relu, lambda y: y, True, (0.0, math.inf)),
    "relu6": Activation(jax.nn.relu6, lambda y: y, True, (0.0, 6.0)),
    "leaky_relu": Activation(lambda z: jax.nn.leaky_relu(z, 0.01),
                             lambda y: jnp.where(y >= 0, y, y / 0.01), False),
    "elu": Activation(jax.nn.elu, lambda y: jnp.where(y > 0, y, jnp.log1p(y)), False,
                      (ELU_LO, math.inf)),
    "gelu": Activation(_gelu, _gelu_inverse, False, (0.0, math.inf)),
    "softplus": Activation(jax.nn.softplus, _softplus_inverse, False, (SOFTPLUS_LO, math.inf)),
    "tanh": Activation(jnp.tanh, jnp.arctanh, False, (-TANH_HI, TANH_HI)),
    "identity": Activation(lambda z: z, lambda y: y, True),
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
