"""The inverted residual network (MobileNetV2 blocks) for 32x32 images or sequences."""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resjax import activations
from resjax import errors
from resjax import schema
from resjax.models import checks
from resjax.models import layers
from resjax.models.family import Toggle, Traits

# pylint: disable=protected-access  # layers._conv: see its docstring.

Array = jax.Array

# (bottleneck width, blocks, stride of the first block) per stage. MobileNetV2's
# first four ImageNet stages (16x1, 24x2, 32x3, 64x4) with a stride-1 stem and
# the 64-stage at stride 1 and 3 blocks, so 32x32 inputs go 32 -> 16 -> 8 -> 8
# like the CIFAR ResNet. With the defaults below: 207,546 parameters, about
# 21.1M multiply-adds per image (ResNet-20: 269,722 and 40.6M).
CIFAR_STAGES = ((16, 1, 1), (24, 2, 2), (32, 3, 2), (64, 3, 1))
# The shift (beta) of the bottleneck's BatchNorm: trained, or held at 0.
BN_SHIFTS = ("learned", "frozen")
# One stage: (bottleneck width, blocks, stride), the stride 1 or 2.
STAGE = schema.Rule("ints", low=1, test=lambda st: len(st) == 3 and st[2] in (1, 2))


def round_width(width: float, divisor: int = 8) -> int:
  """Rounds a scaled width to a multiple of `divisor`, never below 90% of it."""
  rounded = max(divisor, int(width + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * width:
    rounded += divisor
  return rounded


class InvertedResidualBlock(nn.Module):
  """MobileNetV2 block: 1x1 expand by t, depthwise 3x3, 1x1 linear projection.

  Expansion and depthwise outputs go through BN and the activation (ReLU6).
  The projection to the bottleneck goes through BN (its shift beta learned,
  or absent, i.e. frozen at 0, when `bn_shift=False`), and through the
  activation only when `linear_bottleneck` is False. With `residual` (stride 1,
  same width) the block output is x + branch. With t = 1 the expansion conv is
  skipped. The convs run over x's spatial axes ([B, *spatial, C]: 2 for images,
  1 for sequences).

  Returns (y, taps): 'expand', 'depthwise', ['bottleneck'] activation inputs,
  then 'shortcut' (if residual) and 'branch'.
  """
  features: int
  expansion: int = 6
  strides: int = 1
  residual: bool = True
  linear_bottleneck: bool = True
  bn_shift: bool = True
  activation: str = "relu6"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, shortcut_gate: layers.Gate = 1.0,
               linear_gate: layers.Gate | None = None) -> tuple[Array, dict[str, Array]]:
    """Grids: the shortcut is multiplied by `shortcut_gate`; the bottleneck is
    linear where `linear_gate` (default: `linear_bottleneck`) is on, else it
    passes the activation."""
    act = activations.fn(self.activation)
    linear = float(self.linear_bottleneck) if linear_gate is None else linear_gate
    taps = {}
    hidden = x.shape[-1] * self.expansion
    dims = x.ndim - 2
    h = x
    if self.expansion != 1:
      h = layers._conv(hidden, 1, 1, self.dtype, "expand_conv", dims=dims)(h)
      z = layers.batch_norm(train, self.dtype, "expand_bn")(h)
      taps["expand"] = z
      h = act(z)
    h = layers.depthwise(hidden, self.strides, self.dtype, "depthwise_conv", dims)(h)
    z = layers.batch_norm(train, self.dtype, "depthwise_bn")(h)
    taps["depthwise"] = z
    h = layers._conv(self.features, 1, 1, self.dtype, "project_conv", dims=dims)(act(z))
    b = layers.batch_norm(train, self.dtype, "project_bn", shift=self.bn_shift)(h)
    if not (layers.is_const(linear) and linear > 0):
      taps["bottleneck"] = b
      b = layers.keep_if(linear, b, act(b))
    if self.residual and not layers.is_off(shortcut_gate):
      y = layers.add_shortcut(taps, x.astype(b.dtype), b, shortcut_gate)
    else:
      y = b
    taps["branch"] = b
    return y, taps


class InvertedResidualNet(nn.Module):
  """MobileNetV2-style network for 32x32 images, or [B, L, C] sequences (MNIST-1D).

  3x3 stem conv (stride 1, `stem_width`) with BN-ReLU6, the bottleneck stages of
  `stages` (default CIFAR_STAGES: widths 16, 24, 32, 64; 1, 2, 3, 3 blocks;
  resolution 32, 16, 8, 8), a 1x1 conv to `head_width` with BN-ReLU6, global
  average pooling and a dense head. Every block expands by `expansion`. All
  widths are scaled by `width_multiplier` and rounded to multiples of `round_to`
  (default 8; 1 keeps exact widths, e.g. bottlenecks of 2 or 4 channels).

  bottleneck='linear' keeps the projection output linear (MobileNetV2);
  'relu6' (more generally: the name of `activation`) puts the activation
  there too (the Fig. 6a ablation). shortcut=False removes the identity
  shortcuts between bottlenecks (used by blocks with stride 1 and equal width)
  and nothing else.

  Probe names: preacts 'stem', 'stage{s}/block{b}/expand', '.../depthwise',
  '.../bottleneck' (non-linear bottleneck only), 'head'; shortcut/branch
  'stage{s}/block{b}'.

  `gated=True` (grids): gates 'shortcut' and 'linear' switch the shortcuts and
  the bottleneck's linearity, a block's shortcut is taken only where its gate
  'stage{s}_block{b}_same' is on (the net's own input and output widths are
  equal: `gate_value`), and every block after the first of its stage is kept
  only where its gate 'stage{s}_block{b}_on' is on.

  Sequences: the same net with convs of width 3 and 1 over positions (the
  spatial axes are those of the input, as in resnet.forward).
  """
  TOGGLES: ClassVar[Mapping[str, Toggle]] = {
      "shortcut": Toggle("shortcut", lambda v: float(bool(v)), True),
      "bottleneck": Toggle("linear", lambda v: float(v == "linear"), "linear")}
  # A frozen shift is a parameter the net lacks: padded with 0 and never updated.
  PADDED: ClassVar[Mapping[str, Any]] = {"bottleneck_bn_shift": "learned"}
  RULES: ClassVar[Mapping[str, schema.Rule]] = {
      "expansion": schema.POSITIVE,
      "bottleneck": schema.Choice(lambda: ("linear", *activations.names()),
                                  fix="choose linear or the model's activation"),
      "bottleneck_bn_shift": schema.Choice(BN_SHIFTS),
      "shortcut": schema.Bool(), "width_multiplier": schema.Float(0, 16, low_open=True),
      "stages": schema.List(STAGE, nonempty=True, fix=(
          "use a non-empty tuple of (width, blocks, stride) triples: width and blocks "
          "integers >= 1, stride 1 or 2")),
      "stem_width": schema.POSITIVE, "head_width": schema.POSITIVE,
      "activation": checks.ACTIVATION, "dtype": checks.DTYPE, "gated": checks.GATED,
      "round_to": schema.POSITIVE}

  num_classes: int = 10
  expansion: int = 6
  bottleneck: str = "linear"
  bottleneck_bn_shift: str = "learned"
  shortcut: bool = True
  width_multiplier: float = 1.0
  stages: Sequence[Sequence[int]] = CIFAR_STAGES
  stem_width: int = 16
  head_width: int = 256
  activation: str = "relu6"
  dtype: Any = jnp.float32
  gated: bool = False
  round_to: int = 8  # Widths are rounded to multiples of this (1 = exact widths).

  def __post_init__(self):
    checks.check_int("num_classes", self.num_classes, 1)
    checks.check_fields(self, self.RULES)
    allowed = ("linear", self.activation)
    errors.check(self.bottleneck in allowed,
                 f"model.bottleneck={self.bottleneck!r} is not allowed; choose one of: "
                 f"{', '.join(allowed)} (the activation)")
    object.__setattr__(self, "stages", tuple(tuple(st) for st in self.stages))
    super().__post_init__()

  @staticmethod
  def describe(fields: Mapping[str, Any]) -> str:
    shortcut = "" if fields["shortcut"] else ", no shortcut"
    shift = ", frozen BN shift" if fields["bottleneck_bn_shift"] == "frozen" else ""
    return f"invres ({fields['bottleneck']} bottleneck{shift}{shortcut})"

  @staticmethod
  def traits(fields: Mapping[str, Any]) -> Traits:
    width, blocks, _ = tuple(fields["stages"])[0]
    return Traits(int(width), int(blocks), str(fields["bottleneck"]))

  @staticmethod
  def gate_value(name: str, own_params: Mapping[str, Any]) -> float | None:
    """Net k's value of gate `name` of a padded grid, where the family decides it:
    '<block>_same' is on where the net's own block maps its input width to the same
    output width (then its shortcut exists; padding can equalize widths that differ)."""
    if not name.endswith("_same"):
      return None
    p = own_params.get(name[:-len("_same")])
    if p is None:  # A block the net lacks: gated out as a whole ('<block>_on').
      return 1.0
    width_in = (p["expand_conv"]["kernel"].shape[-2] if "expand_conv" in p
                else p["depthwise_conv"]["kernel"].shape[-1])
    return float(width_in == p["project_conv"]["kernel"].shape[-1])

  def _width(self, width: int) -> int:
    return round_width(width * self.width_multiplier, self.round_to)

  def _stem_or_head(self, h: Array, train: bool, part: str, width: int, kernel: int) -> Array:
    """conv -> BN -> (sow '<part>') -> activation."""
    h = layers._conv(self._width(width), kernel, 1, self.dtype, f"{part}_conv",
                     dims=h.ndim - 2)(h)
    z = layers.batch_norm(train, self.dtype, f"{part}_bn")(h)
    layers.tap(self, "preacts", part, z)
    return activations.fn(self.activation)(z)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    h = self._stem_or_head(x, train, "stem", self.stem_width, 3)
    shortcut, linear = layers.toggle(self, "shortcut"), layers.toggle(self, "bottleneck")
    for s, (width, blocks, stride) in enumerate(self.stages):
      features = self._width(width)
      for b in range(blocks):
        strides = stride if b == 0 else 1
        residual = (not layers.is_off(shortcut)) and strides == 1 and h.shape[-1] == features
        module = f"stage{s + 1}_block{b}"
        gate = shortcut
        if residual and self.gated:  # Padded widths may match where the net's own do not.
          gate = shortcut * layers.gate(self, f"{module}_same")
        y, taps = InvertedResidualBlock(
            features, expansion=self.expansion, strides=strides, residual=residual,
            linear_bottleneck=self.bottleneck == "linear",
            bn_shift=self.bottleneck_bn_shift == "learned", activation=self.activation,
            dtype=self.dtype, name=module)(h, train, gate, linear)
        h = layers.block_output(self, module, b, y, h, taps, f"stage{s + 1}/block{b}")
    h = self._stem_or_head(h, train, "head", self.head_width, 1)
    h = jnp.mean(h, axis=tuple(range(1, h.ndim - 1)))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(h)
    return logits.astype(jnp.float32)
