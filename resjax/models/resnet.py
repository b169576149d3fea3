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


def shortcut_option_a(x: Array, features: int, strides: int) -> Array:
  """Parameter-free shortcut: subsample every spatial axis by `strides`, zero-pad
  the channels.

  x is [B, *spatial, C] (NHWC images, NLC sequences). The input channels keep
  their positions (0 .. C-1); the new channels C .. features-1 are zeros.
  """
  spatial = x.ndim - 2
  s = x[(slice(None),) + (slice(None, None, strides),) * spatial] if strides > 1 else x
  extra = features - s.shape[-1]
  if extra > 0:
    s = jnp.pad(s, ((0, 0),) * (spatial + 1) + ((0, extra),))
  return s


def check_depth(depth: int, num_stages: int) -> None:
  """ConfigError unless `depth` = 2 * num_stages * n + 2 for some n >= 1."""
  per_block = 2 * num_stages
  examples = ", ".join(str(per_block * n + 2) for n in (1, 3, 5, 7, 9, 18))
  errors.check((depth - 2) % per_block == 0 and depth > 2,
               f"model.depth={depth!r} is not allowed; with {num_stages} "
               f"stages use {per_block}n+2: {examples}, ...")


class BasicBlock(nn.Module):
  """Two 3x3 convs with BatchNorm, an option-A shortcut unless `residual=False`.

  `dims` spatial axes: 2 for NHWC images (3x3 convs), 1 for NLC sequences
  (convs of width 3).

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
  dims: int = 2

  def _convs(self, x: Array, train: bool, taps: dict) -> Array:
    """The residual branch b; taps its activation inputs."""
    act = activations.fn(self.activation)
    conv = lambda strides, name: layers._conv(self.features, 3, strides, self.dtype, name,
                                              impl=self.conv_impl, dims=self.dims)
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
    check_depth(self.depth, len(self.widths))
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
    return forward(self, x, train, self.widths, layers.toggle(self, "plain"),
                   preact=self.preact, conv_impl=self.conv_impl)


def forward(model: nn.Module, x: Array, train: bool, widths: Sequence[int],
            shortcut: layers.Gate, *, preact: bool = False, conv_impl: str = "xla") -> Array:
  """The CIFAR ResNet's computation inside `model`'s compact `__call__`.

  x is [B, *spatial, C]; the convs run over its spatial axes (2: images,
  1: sequences). `model` gives depth, activation, dtype, num_classes and the
  gates (`gated`); `shortcut` switches the shortcuts (a gate or a number);
  `widths` are the stages' channels. The ResNet docstring gives the design and
  the probe names.
  """
  act = activations.fn(model.activation)
  dims = x.ndim - 2
  h = layers._conv(widths[0], 3, 1, model.dtype, "stem_conv", impl=conv_impl, dims=dims)(x)
  if not preact:
    z = layers.batch_norm(train, model.dtype, "stem_bn")(h)
    layers.tap(model, "preacts", "stem", z)
    h = act(z)
  h = layers.stream(h, conv_impl)
  blocks = (model.depth - 2) // (2 * len(widths))
  for s, features in enumerate(widths):
    for b in range(blocks):
      name, module = f"stage{s + 1}/block{b}", f"stage{s + 1}_block{b}"
      y, taps = BasicBlock(
          features, strides=2 if (s > 0 and b == 0) else 1, preact=preact,
          activation=model.activation, dtype=model.dtype, conv_impl=conv_impl, dims=dims,
          name=module)(h, train, shortcut)
      h = layers.stream(layers.block_output(model, module, b, y, h, taps, name), conv_impl)
  if preact:
    z = layers.batch_norm(train, model.dtype, "final_bn")(h)
    layers.tap(model, "preacts", "final", z)
    h = act(z)
  h = jnp.mean(h, axis=tuple(range(1, 1 + dims)))
  logits = nn.Dense(model.num_classes, dtype=model.dtype, name="classifier")(h)
  return logits.astype(jnp.float32)
