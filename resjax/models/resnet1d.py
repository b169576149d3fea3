"""The CIFAR ResNet's design on sequences: 1-D convolutions, residual or plain (MNIST-1D)."""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from resjax import schema
from resjax.models import checks
from resjax.models import layers
from resjax.models import resnet
from resjax.models import family
from resjax.models.family import Toggle, Traits

Array = jax.Array


class ResNet1D(nn.Module):
  """CIFAR ResNet of He et al. 2016 in 1-D: depth 6n+2, option-A shortcuts.

  Inputs are [B, L, C] sequences (channels last; MNIST-1D: L = 40, C = 1). A
  stem conv of width 3 with `width` filters, BatchNorm and the activation,
  then 3 stages of n basic blocks with `width`, 2 `width` and 4 `width`
  channels (the first at stride 1, the others starting with stride 2:
  40 -> 20 -> 10 positions), global average pooling over positions and a dense
  'classifier'. The blocks, shortcuts, initialization and probe names are the
  CIFAR ResNet's (resnet.py, which computes both); only the convolutions are
  1-D. residual=False drops the shortcuts and nothing else (same parameters).

  `gated=True` (grids): gate 'shortcut' switches the shortcuts and every block
  after the first of its stage is kept only where its gate
  'stage{s}_block{b}_on' is on, so one padded net stands for nets of several
  depths and widths, plain and residual.
  """
  TOGGLES: ClassVar[Mapping[str, Toggle]] = {
      "residual": Toggle("shortcut", lambda v: float(bool(v)), True)}
  RULES: ClassVar[Mapping[str, schema.Rule]] = {
      "depth": schema.Int(2), "width": schema.POSITIVE, "residual": schema.Bool(),
      "activation": checks.ACTIVATION, "dtype": checks.DTYPE, "gated": checks.GATED}

  num_classes: int = 10
  depth: int = 20
  width: int = 16  # Channels of the first stage; the later stages have 2x and 4x.
  residual: bool = True
  activation: str = "relu"
  dtype: Any = jnp.float32
  gated: bool = False

  def __post_init__(self):
    checks.check_int("num_classes", self.num_classes, 1)
    checks.check_fields(self, self.RULES)
    resnet.check_depth(self.depth, 3)
    super().__post_init__()

  @staticmethod
  def describe(fields: Mapping[str, Any]) -> str:
    return family.width_depth_name(fields, "resnet1d", "plain1d")

  @staticmethod
  def traits(fields: Mapping[str, Any]) -> Traits:
    return family.width_depth_traits(fields)

  @property
  def widths(self) -> tuple[int, int, int]:
    return (self.width, 2 * self.width, 4 * self.width)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    return resnet.forward(self, x, train, self.widths, layers.toggle(self, "residual"))
