"""A first layer of width n on the raw input, then a fixed MLP head (the
collapse study: MobileNetV2 Fig. 1 inside a trained network)."""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from resjax import activations
from resjax import schema
from resjax.models import checks
from resjax.models import layers
from resjax.models.family import Toggle, Traits

Array = jax.Array

FIRST_LAYERS = ("relu", "linear", "residual")


class FirstLayerNet(nn.Module):
  """z = W x + b of `width` units on the flattened input, then a fixed head.

  b starts at `first_bias_init` (0: Flax's zero bias); a positive value turns
  more first-layer ReLUs on at initialization.

  The first layer's output h is relu(z) ('relu'), z ('linear') or
  z + relu(U z + c) ('residual': identity plus a ReLU branch of the same width);
  then `head_depth` dense layers of `head_width` units with `activation` and a
  dense classifier. Dense layers keep Flax's default init (LeCun normal, zero
  bias); the three variants share the parameter names 'first_dense', 'head{i}_dense', 'classifier'
  (the residual one adds 'branch'), so their shared weights start equal.

  Probe names: preacts 'first' (relu only), 'first_branch' (residual only),
  'head0' .. 'head{head_depth-1}'; shortcut/branch 'first' (residual only).

  `gated=True` (grids): the gate 'relu' applies the activation to z, and the
  block gate 'branch_on' adds the branch, so one padded net stands for all
  three variants and every width.
  """
  # The gate 'relu' for relu(z); the block gate 'branch_on' (own 'branch'
  # parameters) adds the residual branch.
  TOGGLES: ClassVar[Mapping[str, Toggle]] = {
      "first": Toggle("relu", lambda v: float(v == "relu"), "residual")}

  RULES: ClassVar[Mapping[str, schema.Rule]] = {
      "width": schema.POSITIVE, "first": schema.Choice(FIRST_LAYERS),
      "first_bias_init": schema.Float(),
      "head_width": schema.POSITIVE, "head_depth": schema.COUNT,
      "activation": checks.ACTIVATION, "dtype": checks.DTYPE, "gated": checks.GATED}

  num_classes: int
  width: int = 8
  first: str = "relu"
  first_bias_init: float = 0.0
  head_width: int = 64
  head_depth: int = 2
  activation: str = "relu"
  dtype: Any = jnp.float32
  gated: bool = False

  def __post_init__(self):
    checks.check_int("num_classes", self.num_classes, 1)
    checks.check_fields(self, self.RULES)
    super().__post_init__()

  @staticmethod
  def unused(fields: Mapping[str, Any]) -> dict[str, str]:
    """head_width builds nothing without head layers."""
    if fields["head_depth"] == 0:
      return {"head_width": "model.head_depth=0 builds no head layer"}
    return {}

  @staticmethod
  def describe(fields: Mapping[str, Any]) -> str:
    del fields  # The report has always named these nets by the family alone.
    return "firstlayer"

  @staticmethod
  def traits(fields: Mapping[str, Any]) -> Traits:
    return Traits(int(fields["width"]), 1, str(fields["first"]))

  def _first(self, z: Array) -> Array:
    """The first layer's output h from z (taps 'first', 'first_branch')."""
    act = activations.fn(self.activation)
    relu = layers.toggle(self, "first")
    h = z
    if not layers.is_off(relu):
      layers.tap(self, "preacts", "first", z)
      h = layers.keep_if(relu, act(z), z)
    if not layers.is_const(relu) or self.first == "residual":
      u = nn.Dense(self.width, dtype=self.dtype, name="branch")(z)
      branch = layers.gate(self, "branch_on")
      layers.tap(self, "preacts", "first_branch", u)
      b = act(u) if layers.is_const(branch) else branch * act(u)
      layers.sow_taps(self, "first", {"shortcut": h, "branch": b})
      h = h + b
    return h

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    act = activations.fn(self.activation)
    x_BxD = x.reshape(x.shape[0], -1)
    z = nn.Dense(self.width, dtype=self.dtype, name="first_dense",
                 bias_init=nn.initializers.constant(self.first_bias_init))(x_BxD)
    h = self._first(z)
    for i in range(self.head_depth):
      g = nn.Dense(self.head_width, dtype=self.dtype, name=f"head{i}_dense")(h)
      layers.tap(self, "preacts", f"head{i}", g)
      h = act(g)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(h)
    return logits.astype(jnp.float32)
