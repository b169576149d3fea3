"""The multi-layer perceptron, plain or residual."""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from resjax import activations
from resjax import schema
from resjax.models import checks
from resjax.models import layers
from resjax.models import family
from resjax.models.family import Toggle, Traits

Array = jax.Array


class MLP(nn.Module):
  """Multi-layer perceptron on flattened inputs.

  `depth` hidden layers of `width` units, each `norm -> activation` applied to
  a dense output:

    h_0 = W_0 x
    h_i = [h_{i-1} +] W_i act(norm(h_{i-1}))      i = 1 .. depth-1
    logits = W_out act(norm(h_{depth-1}))

  Without `residual` this is the usual Dense-norm-act stack. With `residual`
  the bracketed identity adds a shortcut around each of the depth-1 hidden
  `norm -> act -> Dense` units (pre-activation style), and nothing else changes:
  both variants have the same parameters. The shortcut carries h_{i-1}
  linearly; only the branch goes through the activation.

  Probe names: preacts 'layer0' .. 'layer{depth-1}' (input of each activation);
  shortcut/branch 'block1' .. 'block{depth-1}' (block i outputs h_i).

  `gated=True` (grids): block i is kept only where gate 'dense{i}_on' is on and
  the shortcut is taken only where gate 'residual' is on (both in the 'gates'
  collection), so one padded net can stand for nets of several depths and both
  variants.
  """
  TOGGLES: ClassVar[Mapping[str, Toggle]] = {
      "residual": Toggle("residual", lambda v: float(bool(v)), True)}
  RULES: ClassVar[Mapping[str, schema.Rule]] = {
      "width": schema.POSITIVE, "depth": schema.POSITIVE, "activation": checks.ACTIVATION,
      "residual": schema.Bool(), "norm": schema.Choice(checks.NORMS, none_ok=True), "dtype": checks.DTYPE,
      "gated": checks.GATED}

  num_classes: int
  width: int = 64
  depth: int = 4
  activation: str = "relu"
  residual: bool = False
  norm: str | None = None
  dtype: Any = jnp.float32
  gated: bool = False

  def __post_init__(self):
    checks.check_int("num_classes", self.num_classes, 1)
    checks.check_fields(self, self.RULES)
    super().__post_init__()

  @staticmethod
  def describe(fields: Mapping[str, Any]) -> str:
    return family.width_depth_name(fields, "residual-mlp", "mlp")

  @staticmethod
  def traits(fields: Mapping[str, Any]) -> Traits:
    return family.width_depth_traits(fields)

  @staticmethod
  def tap_in_padded(tap: str, fields: Mapping[str, Any], padded: Mapping[str, Any]) -> str:
    """The padded (deeper, gated) model's tap holding this net's `tap`: the last
    hidden layer feeds the classifier, 'layer{depth-1}' at either depth."""
    return f"layer{padded['depth'] - 1}" if tap == f"layer{fields['depth'] - 1}" else tap

  def _activate(self, h: Array, train: bool, index: int, norm_name: str) -> Array:
    """norm -> (sow) -> activation for hidden layer `index`."""
    z = h
    if self.norm == "batch":
      z = layers.batch_norm(train, self.dtype, norm_name)(h)
    elif self.norm == "layer":
      z = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=norm_name)(h)
    layers.tap(self, "preacts", f"layer{index}", z)
    return activations.fn(self.activation)(z)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x_BxD = x.reshape(x.shape[0], -1)
    h = nn.Dense(self.width, dtype=self.dtype, name="dense0")(x_BxD)
    residual = layers.toggle(self, "residual")
    for i in range(1, self.depth):
      b = nn.Dense(self.width, dtype=self.dtype, name=f"dense{i}")(
          self._activate(h, train, i - 1, f"norm{i - 1}"))
      taps = {}
      y = b if layers.is_off(residual) else layers.add_shortcut(taps, h, b, residual)
      taps["branch"] = b
      h = layers.block_output(self, f"dense{i}", i, y, h, taps, f"block{i}")
    # The last norm has a name of its own, so that nets of different depths
    # share their parameter names (grids pad the shallower ones).
    a = self._activate(h, train, self.depth - 1, "norm_out")
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(a)
    return logits.astype(jnp.float32)
