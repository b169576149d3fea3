"""The CIFAR ResNet of He et al. 2016 and its plain and pre-activation variants."""
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


def shortcut_option_a(x_BxHxWxC: Array, features: int, strides: int) -> Array:
  """Parameter-free shortcut: subsample by `strides`, zero-pad the channels.

  The input channels keep their positions (0 .. C-1); the new channels
  C .. features-1 are zeros.
  """
  s = x_BxHxWxC[:, ::strides, ::strides, :] if strides > 1 else x_BxHxWxC
  extra = features - s.shape[-1]
  if extra > 0:
    s = jnp.pad(s, ((0, 0), (0, 0), (0, 0), (0, extra)))
  return s


class BasicBlock(nn.Module):
  """Two 3x3 convs with BatchNorm, an option-A shortcut unless `residual=False`.

  Original (He et al. 2016a): y = act(s + bn2(conv2(act(bn1(conv1(x)))))).
  Pre-activation (He et al. 2016b): y = s + conv2(act(bn2(conv1(act(bn1(x)))))),
  shortcut s taken from x itself, so the identity path is never normalized or
  activated.

  Returns (y, taps): taps maps 'act1', 'act2' to the activation inputs and
  'shortcut', 'branch' to the two summands (no 'shortcut' when plain).
  """
  features: int
  strides: int = 1
  residual: bool = True
  preact: bool = False
  activation: str = "relu"
  dtype: Any = jnp.float32
  conv_impl: str = "xla"

  def _convs(self, x: Array, train: bool, taps: dict) -> Array:
    """The residual branch b; taps its activation inputs."""
    act = activations.fn(self.activation)
    conv = lambda strides, name: layers._conv(self.features, 3, strides, self.dtype, name,
                                              impl=self.conv_impl)
    if self.preact:
      z = layers.batch_norm(train, self.dtype, "bn1")(x)
      taps["act1"] = z
      h = conv(self.strides, "conv1")(act(z))
      z = layers.batch_norm(train, self.dtype, "bn2")(h)
      taps["act2"] = z
      return conv(1, "conv2")(act(z))
    h = conv(self.strides, "conv1")(x)
    z = layers.batch_norm(train, self.dtype, "bn1")(h)
    taps["act1"] = z
    h = conv(1, "conv2")(act(z))
    return layers.batch_norm(train, self.dtype, "bn2")(h)

  @nn.compact
  def __call__(self, x: Array, train: bool,
               shortcut_gate: layers.Gate = 1.0) -> tuple[Array, dict[str, Array]]:
    """`shortcut_gate` (grids): the shortcut is multiplied by it (1 or 0)."""
    taps = {}
    b = self._convs(x, train, taps)
    if self.residual and not layers.is_off(shortcut_gate):
      s = shortcut_option_a(x, self.features, self.strides).astype(b.dtype)
      y = layers.add_shortcut(taps, s, b, shortcut_gate)
    else:
      y = b
    taps["branch"] = b
    if not self.preact:
      taps["act2"] = y
      y = activations.fn(self.activation)(y)
    return y, taps


class ResNet(nn.Module):
  """CIFAR ResNet of He et al. 2016: depth 6n+2, option-A shortcuts.

  3x3 stem conv (widths[0] filters), then len(widths) stages of n basic blocks
  each (the first stage at stride 1, every later stage starts with stride 2),
  global average pooling, dense 'classifier'. Convs have no bias; He-normal
  (fan_out) init; the classifier keeps Flax's default (LeCun normal, zero
  bias). Depth counts the stem, the 2 convs of every block and the classifier:
  2 * len(widths) * n + 2. Parameters = weights + BN scale/bias (the running
  statistics live in 'batch_stats'): ResNet-20/32/44/56/110 have 269,722 /
  464,154 / 658,586 / 853,018 / 1,727,962.

  plain=True drops the shortcuts and nothing else (same parameters).
  preact=True is the full pre-activation variant (He et al. 2016b): each block
  is BN-act-conv-BN-act-conv, the stem is a bare conv, and a final BN-act
  comes before pooling. Every shortcut, the first block's included, starts
  from the raw block input, so one identity path runs from the stem to the
  final BN. Its parameter count equals the original's.

  Probe names: preacts 'stem' (original only), 'stage{s}/block{b}/act1',
  'stage{s}/block{b}/act2', 'final' (preact only); stages count from 1, blocks
  from 0. In the original, act2 is the input of the post-addition activation,
  i.e. shortcut + branch. Captured block outputs (capture_intermediates) are
  (y, taps) tuples.

  `gated=True` (grids): every block after the first of its stage is kept only
  where its gate 'stage{s}_block{b}_on' is on, and the shortcuts are taken only
  where gate 'shortcut' is on, so one padded net stands for nets of several
  depths, plain and residual.
  """
  TOGGLES: ClassVar[Mapping[str, Toggle]] = {
      "plain": Toggle("shortcut", lambda v: float(not v), False)}
  RULES: ClassVar[Mapping[str, schema.Rule]] = {
      "depth": schema.Int(2), "plain": schema.Bool(), "preact": schema.Bool(),
      "widths": checks.WIDTHS, "activation": checks.ACTIVATION, "dtype": checks.DTYPE,
      "gated": checks.GATED, "conv_impl": schema.Choice(tuple(layers.CONV_IMPLS))}

  depth: int = 20
  num_classes: int = 10
  plain: bool = False
  preact: bool = False
  widths: Sequence[int] = (16, 32, 64)
  activation: str = "relu"
  dtype: Any = jnp.float32
  gated: bool = False
  conv_impl: str = "xla"  # A CONV_IMPLS name; the numbers agree to float32 rounding.

  def __post_init__(self):
    checks.check_int("num_classes", self.num_classes, 1)
    checks.check_fields(self, self.RULES)
    object.__setattr__(self, "widths", tuple(self.widths))  # hashable, for jit
    errors.check(all(a <= b for a, b in zip(self.widths, self.widths[1:])),
                 f"model.widths={tuple(self.widths)!r} is not allowed; option-A "
                 "shortcuts need non-decreasing widths")
    per_block = 2 * len(self.widths)
    examples = ", ".join(str(per_block * n + 2) for n in (1, 3, 5, 7, 9, 18))
    errors.check((self.depth - 2) % per_block == 0 and self.depth > 2,
                 f"model.depth={self.depth!r} is not allowed; with {len(self.widths)} "
                 f"stages use {per_block}n+2: {examples}, ...")
    super().__post_init__()

  @staticmethod
  def describe(fields: Mapping[str, Any]) -> str:
    kind = "plain" if fields["plain"] else ("preact-resnet" if fields["preact"] else "resnet")
    return f"{kind}-{fields['depth']}"

  @staticmethod
  def traits(fields: Mapping[str, Any]) -> Traits:
    return Traits(int(fields["widths"][0]), int(fields["depth"]),
                  "plain" if fields["plain"] else "residual")

  @property
  def blocks_per_stage(self) -> int:
    return (self.depth - 2) // (2 * len(self.widths))

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    act = activations.fn(self.activation)
    h = layers._conv(self.widths[0], 3, 1, self.dtype, "stem_conv", impl=self.conv_impl)(x)
    if not self.preact:
      z = layers.batch_norm(train, self.dtype, "stem_bn")(h)
      layers.tap(self, "preacts", "stem", z)
      h = act(z)
    shortcut = layers.toggle(self, "plain")
    for s, features in enumerate(self.widths):
      for b in range(self.blocks_per_stage):
        name, module = f"stage{s + 1}/block{b}", f"stage{s + 1}_block{b}"
        y, taps = BasicBlock(
            features, strides=2 if (s > 0 and b == 0) else 1, preact=self.preact,
            activation=self.activation, dtype=self.dtype, conv_impl=self.conv_impl,
            name=module)(h, train, shortcut)
        h = layers.block_output(self, module, b, y, h, taps, name)
    if self.preact:
      z = layers.batch_norm(train, self.dtype, "final_bn")(h)
      layers.tap(self, "preacts", "final", z)
      h = act(z)
    h = jnp.mean(h, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(h)
    return logits.astype(jnp.float32)
