"""Flax linen models: MLP, CIFAR ResNet / plain / pre-activation, inverted residual.

All models take NHWC images (the MLP flattens whatever it gets) and return
float32 logits from `__call__(x, train=False)`. Parameters are float32; `dtype`
sets the compute dtype.

Probe hooks. Every tensor fed to an activation is sown into the 'preacts'
collection under a flat, unique name in forward order ('stem',
'stage1/block0/act1', ...). Residual blocks sow their identity path into
'shortcut' and their residual branch into 'branch' under the block name
('stage1/block0'), with block sum = shortcut + branch; blocks without a
shortcut sow only 'branch'. Nothing is sown during `init`, so the variables from
`init` hold only 'params' (and 'batch_stats'). Get the tensors with

  logits, taps = model.apply(variables, x, train=False,
                             mutable=['preacts', 'shortcut', 'branch'])

where each value of `taps[collection]` is a 1-tuple (`probe_tensors` unwraps
them). Sowing never changes the logits. Under jit the returned dicts are sorted
by name; `sown_names` gives the forward order.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resjax import activations
from resjax import errors
from resjax.kernels import onednn

Array = jax.Array
Dtype = Any

COLLECTIONS = ("preacts", "shortcut", "branch")
NORMS = (None, "batch", "layer")
DTYPES = ("float32", "bfloat16", "float16")
# Convolution implementations: XLA's own, or oneDNN's through the XLA FFI
# (CPU, float32; elsewhere, or where it is not built, XLA's; resjax/kernels).
CONV_IMPLS = {"xla": None, "onednn": onednn.conv_general_dilated}

# He et al. 2015 normal init, fan_out mode (keeps the backward-pass variance;
# torchvision's choice for ResNets and MobileNetV2). Every conv is followed by
# BatchNorm, so fan_in would train the same.
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# Explicit symmetric padding: a stride-2 3x3 conv then centres its windows on
# the even pixels, the same ones the option-A shortcut keeps (SAME padding
# would pad only at the bottom/right and shift the windows by one pixel).
_PAD1 = ((1, 1), (1, 1))


def _batch_norm(train: bool, dtype: Dtype, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)


def _conv(features: int, kernel: int, strides: int, dtype: Dtype, name: str,
          groups: int = 1, impl: str = "xla") -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=_PAD1 if kernel == 3 else ((0, 0), (0, 0)),
                 feature_group_count=groups, use_bias=False, dtype=dtype,
                 kernel_init=he_normal, name=name, conv_general_dilated=CONV_IMPLS[impl])


def _tap(module: nn.Module, collection: str, name: str, value: Array) -> None:
  """Sows `value`, except during init (so init's variables stay clean)."""
  if not module.is_initializing():
    module.sow(collection, name, value)


def _sow_taps(module: nn.Module, block: str, taps: Mapping[str, Array]) -> None:
  """Sows a block's taps: activation inputs under 'block/key', the rest under 'block'."""
  for key, value in taps.items():
    if key in ("shortcut", "branch"):
      _tap(module, key, block, value)
    else:
      _tap(module, "preacts", f"{block}/{key}", value)


def _gate(module: nn.Module, name: str) -> Array:
  """A grid gate: a float32 scalar in the 'gates' collection (1 = on; init: 1).

  Gated models (`gated=True`) read their structural switches from here, so that
  nets of one padded grid can differ in depth, shortcuts and bottlenecks while
  sharing one program; see resjax/grid.py.
  """
  return module.variable("gates", name, lambda: jnp.ones((), jnp.float32)).value


def _keep_if(gate: Array, new: Array, old: Array) -> Array:
  """`new` where the gate is on, else `old` (a gated-out block is the identity)."""
  return jnp.where(gate > 0, new, old)


def _add_shortcut(taps: dict, s: Array, b: Array, gate: Array | None) -> Array:
  """s + b, the shortcut multiplied by `gate` where one is given (grids); taps s."""
  if gate is not None:
    s = s * gate
  taps["shortcut"] = s
  return s + b


def _block_output(model: nn.Module, module: str, index: int, y: Array, h: Array,
                  taps: Mapping[str, Array], tap_name: str) -> Array:
  """The hidden state after block `index` of a stage: its output y; in a gated
  model h where the block's gate '<module>_on' is off (the first block of a
  stage is never gated). Gated models sow no taps (probe the net of one size)."""
  if model.gated:
    return y if index == 0 else _keep_if(_gate(model, f"{module}_on"), y, h)
  _sow_taps(model, tap_name, taps)
  return y


# ----------------------------------------------------------------------------
# Validation (ConfigError, one line naming the field, the value and the fix).


def _check_int(field: str, value: Any, minimum: int) -> None:
  ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
  errors.check(ok and value >= minimum,
               f"model.{field}={value!r} is not allowed; use an integer >= {minimum}")


def _check_bool(field: str, value: Any) -> None:
  errors.check(isinstance(value, (bool, np.bool_)),
               f"model.{field}={value!r} is not allowed; use True or False")


def _check_activation(value: Any) -> None:
  errors.choice("model.activation", value, activations.names())


def _check_dtype(value: Any) -> None:
  try:
    name = jnp.dtype(value).name
  except TypeError:
    name = None
  errors.check(name in DTYPES,
               f"model.dtype={value!r} is not allowed; choose one of: {', '.join(DTYPES)}")


def _check_widths(field: str, widths: Any) -> None:
  errors.check(isinstance(widths, (tuple, list)) and len(widths) > 0,
               f"model.{field}={widths!r} is not allowed; use a non-empty tuple of integers >= 1")
  for w in widths:
    _check_int(field, w, 1)


# ----------------------------------------------------------------------------
# MLP.


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
  num_classes: int
  width: int = 64
  depth: int = 4
  activation: str = "relu"
  residual: bool = False
  norm: str | None = None
  dtype: Dtype = jnp.float32
  gated: bool = False

  def __post_init__(self):
    _check_int("num_classes", self.num_classes, 1)
    _check_int("width", self.width, 1)
    _check_int("depth", self.depth, 1)
    _check_activation(self.activation)
    _check_bool("residual", self.residual)
    errors.choice("model.norm", self.norm, NORMS)
    _check_dtype(self.dtype)
    _check_bool("gated", self.gated)
    super().__post_init__()

  def _activate(self, h: Array, train: bool, index: int, norm_name: str) -> Array:
    """norm -> (sow) -> activation for hidden layer `index`."""
    z = h
    if self.norm == "batch":
      z = _batch_norm(train, self.dtype, norm_name)(h)
    elif self.norm == "layer":
      z = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=norm_name)(h)
    _tap(self, "preacts", f"layer{index}", z)
    return activations.fn(self.activation)(z)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x_BxD = x.reshape(x.shape[0], -1)
    h = nn.Dense(self.width, dtype=self.dtype, name="dense0")(x_BxD)
    residual = _gate(self, "residual") if self.gated else None
    for i in range(1, self.depth):
      b = nn.Dense(self.width, dtype=self.dtype, name=f"dense{i}")(
          self._activate(h, train, i - 1, f"norm{i - 1}"))
      if self.gated:
        h = _keep_if(_gate(self, f"dense{i}_on"), h * residual + b, h)
        continue
      if self.residual:
        _tap(self, "shortcut", f"block{i}", h)
      _tap(self, "branch", f"block{i}", b)
      h = h + b if self.residual else b
    # The last norm has a name of its own, so that nets of different depths
    # share their parameter names (grids pad the shallower ones).
    a = self._activate(h, train, self.depth - 1, "norm_out")
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(a)
    return logits.astype(jnp.float32)


# ----------------------------------------------------------------------------
# CIFAR ResNet (He et al. 2016) and its plain and pre-activation variants.


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
  dtype: Dtype = jnp.float32
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x: Array, train: bool,
               shortcut_gate: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """`shortcut_gate` (grids): the shortcut is multiplied by it (1 or 0)."""
    act = activations.fn(self.activation)
    taps = {}
    if self.preact:
      z = _batch_norm(train, self.dtype, "bn1")(x)
      taps["act1"] = z
      h = _conv(self.features, 3, self.strides, self.dtype, "conv1", impl=self.conv_impl)(act(z))
      z = _batch_norm(train, self.dtype, "bn2")(h)
      taps["act2"] = z
      b = _conv(self.features, 3, 1, self.dtype, "conv2", impl=self.conv_impl)(act(z))
    else:
      h = _conv(self.features, 3, self.strides, self.dtype, "conv1", impl=self.conv_impl)(x)
      z = _batch_norm(train, self.dtype, "bn1")(h)
      taps["act1"] = z
      h = _conv(self.features, 3, 1, self.dtype, "conv2", impl=self.conv_impl)(act(z))
      b = _batch_norm(train, self.dtype, "bn2")(h)
    if self.residual:
      y = _add_shortcut(taps, shortcut_option_a(x, self.features, self.strides).astype(b.dtype),
                        b, shortcut_gate)
    else:
      y = b
    taps["branch"] = b
    if not self.preact:
      taps["act2"] = y
      y = act(y)
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
  depth: int = 20
  num_classes: int = 10
  plain: bool = False
  preact: bool = False
  widths: Sequence[int] = (16, 32, 64)
  activation: str = "relu"
  dtype: Dtype = jnp.float32
  gated: bool = False
  conv_impl: str = "xla"  # A CONV_IMPLS name; the numbers agree to float32 rounding.

  def __post_init__(self):
    _check_int("depth", self.depth, 2)
    _check_int("num_classes", self.num_classes, 1)
    _check_bool("plain", self.plain)
    _check_bool("preact", self.preact)
    _check_widths("widths", self.widths)
    object.__setattr__(self, "widths", tuple(self.widths))  # hashable, for jit
    errors.check(all(a <= b for a, b in zip(self.widths, self.widths[1:])),
                 f"model.widths={tuple(self.widths)!r} is not allowed; option-A "
                 "shortcuts need non-decreasing widths")
    per_block = 2 * len(self.widths)
    examples = ", ".join(str(per_block * n + 2) for n in (1, 3, 5, 7, 9, 18))
    errors.check((self.depth - 2) % per_block == 0 and self.depth > 2,
                 f"model.depth={self.depth!r} is not allowed; with {len(self.widths)} "
                 f"stages use {per_block}n+2: {examples}, ...")
    _check_activation(self.activation)
    _check_dtype(self.dtype)
    _check_bool("gated", self.gated)
    errors.choice("model.conv_impl", self.conv_impl, CONV_IMPLS)
    super().__post_init__()

  @property
  def blocks_per_stage(self) -> int:
    return (self.depth - 2) // (2 * len(self.widths))

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    act = activations.fn(self.activation)
    h = _conv(self.widths[0], 3, 1, self.dtype, "stem_conv", impl=self.conv_impl)(x)
    if not self.preact:
      z = _batch_norm(train, self.dtype, "stem_bn")(h)
      _tap(self, "preacts", "stem", z)
      h = act(z)
    shortcut = _gate(self, "shortcut") if self.gated else None
    for s, features in enumerate(self.widths):
      for b in range(self.blocks_per_stage):
        name, module = f"stage{s + 1}/block{b}", f"stage{s + 1}_block{b}"
        y, taps = BasicBlock(
            features, strides=2 if (s > 0 and b == 0) else 1,
            residual=self.gated or not self.plain, preact=self.preact,
            activation=self.activation, dtype=self.dtype, conv_impl=self.conv_impl,
            name=module)(h, train, shortcut)
        h = _block_output(self, module, b, y, h, taps, name)
    if self.preact:
      z = _batch_norm(train, self.dtype, "final_bn")(h)
      _tap(self, "preacts", "final", z)
      h = act(z)
    h = jnp.mean(h, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(h)
    return logits.astype(jnp.float32)


# ----------------------------------------------------------------------------
# Inverted residual network (MobileNetV2 blocks) for 32x32 inputs.


def round_width(width: float, divisor: int = 8) -> int:
  """Rounds a scaled width to a multiple of `divisor`, never below 90% of it."""
  rounded = max(divisor, int(width + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * width:
    rounded += divisor
  return rounded


class InvertedResidualBlock(nn.Module):
  """MobileNetV2 block: 1x1 expand by t, depthwise 3x3, 1x1 linear projection.

  Expansion and depthwise outputs go through BN and the activation (ReLU6).
  The projection to the bottleneck goes through BN, and through the
  activation only when `linear_bottleneck` is False. With `residual` (stride 1,
  same width) the block output is x + branch. With t = 1 the expansion conv is
  skipped.

  Returns (y, taps): 'expand', 'depthwise', ['bottleneck'] activation inputs,
  then 'shortcut' (if residual) and 'branch'.
  """
  features: int
  expansion: int = 6
  strides: int = 1
  residual: bool = True
  linear_bottleneck: bool = True
  activation: str = "relu6"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, shortcut_gate: Array | None = None,
               linear_gate: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """Grids: the shortcut is multiplied by `shortcut_gate`; the bottleneck is
    linear where `linear_gate` is on, else it passes the activation."""
    act = activations.fn(self.activation)
    taps = {}
    hidden = x.shape[-1] * self.expansion
    h = x
    if self.expansion != 1:
      h = _conv(hidden, 1, 1, self.dtype, "expand_conv")(h)
      z = _batch_norm(train, self.dtype, "expand_bn")(h)
      taps["expand"] = z
      h = act(z)
    h = _conv(hidden, 3, self.strides, self.dtype, "depthwise_conv", groups=hidden)(h)
    z = _batch_norm(train, self.dtype, "depthwise_bn")(h)
    taps["depthwise"] = z
    h = _conv(self.features, 1, 1, self.dtype, "project_conv")(act(z))
    b = _batch_norm(train, self.dtype, "project_bn")(h)
    if linear_gate is not None:
      b = _keep_if(linear_gate, b, act(b))
    elif not self.linear_bottleneck:
      taps["bottleneck"] = b
      b = act(b)
    if self.residual:
      y = _add_shortcut(taps, x.astype(b.dtype), b, shortcut_gate)
    else:
      y = b
    taps["branch"] = b
    return y, taps


# (bottleneck width, blocks, stride of the first block) per stage. MobileNetV2's
# first four ImageNet stages (16x1, 24x2, 32x3, 64x4) with a stride-1 stem and
# the 64-stage at stride 1 and 3 blocks, so 32x32 inputs go 32 -> 16 -> 8 -> 8
# like the CIFAR ResNet. With the defaults below: 207,546 parameters, about
# 21.1M multiply-adds per image (ResNet-20: 269,722 and 40.6M).
CIFAR_STAGES = ((16, 1, 1), (24, 2, 2), (32, 3, 2), (64, 3, 1))


class InvertedResidualNet(nn.Module):
  """MobileNetV2-style network for 32x32 inputs.

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
  the bottleneck's linearity, and every block after the first of its stage is
  kept only where its gate 'stage{s}_block{b}_on' is on.
  """
  num_classes: int = 10
  expansion: int = 6
  bottleneck: str = "linear"
  shortcut: bool = True
  width_multiplier: float = 1.0
  stages: Sequence[Sequence[int]] = CIFAR_STAGES
  stem_width: int = 16
  head_width: int = 256
  activation: str = "relu6"
  dtype: Dtype = jnp.float32
  gated: bool = False
  round_to: int = 8  # Widths are rounded to multiples of this (1 = exact widths).

  def __post_init__(self):
    _check_int("num_classes", self.num_classes, 1)
    _check_int("expansion", self.expansion, 1)
    _check_int("round_to", self.round_to, 1)
    _check_activation(self.activation)
    allowed = ("linear", self.activation)
    errors.check(self.bottleneck in allowed,
                 f"model.bottleneck={self.bottleneck!r} is not allowed; choose one of: "
                 f"{', '.join(allowed)} (the activation)")
    _check_bool("shortcut", self.shortcut)
    ok = isinstance(self.width_multiplier, (int, float)) and not isinstance(
        self.width_multiplier, bool)
    errors.check(ok and 0 < self.width_multiplier <= 16,
                 f"model.width_multiplier={self.width_multiplier!r} is not allowed; "
                 "use a number in (0, 16]")
    stages_ok = isinstance(self.stages, (tuple, list)) and len(self.stages) > 0 and all(
        isinstance(st, (tuple, list)) and len(st) == 3 for st in self.stages)
    errors.check(stages_ok, f"model.stages={self.stages!r} is not allowed; use a "
                 "non-empty tuple of (width, blocks, stride) triples")
    object.__setattr__(self, "stages", tuple(tuple(st) for st in self.stages))
    for width, blocks, stride in self.stages:
      _check_int("stages (width)", width, 1)
      _check_int("stages (blocks)", blocks, 1)
      errors.check(stride in (1, 2), f"model.stages={self.stages!r} is not allowed; "
                   "each stride must be 1 or 2")
    _check_int("stem_width", self.stem_width, 1)
    _check_int("head_width", self.head_width, 1)
    _check_dtype(self.dtype)
    _check_bool("gated", self.gated)
    super().__post_init__()

  def _width(self, width: int) -> int:
    return round_width(width * self.width_multiplier, self.round_to)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    act = activations.fn(self.activation)
    h = _conv(self._width(self.stem_width), 3, 1, self.dtype, "stem_conv")(x)
    z = _batch_norm(train, self.dtype, "stem_bn")(h)
    _tap(self, "preacts", "stem", z)
    h = act(z)
    gates = (_gate(self, "shortcut"), _gate(self, "linear")) if self.gated else (None, None)
    for s, (width, blocks, stride) in enumerate(self.stages):
      features = self._width(width)
      for b in range(blocks):
        strides = stride if b == 0 else 1
        residual = ((self.shortcut or self.gated) and strides == 1
                    and h.shape[-1] == features)
        module = f"stage{s + 1}_block{b}"
        y, taps = InvertedResidualBlock(
            features, expansion=self.expansion, strides=strides, residual=residual,
            linear_bottleneck=self.bottleneck == "linear", activation=self.activation,
            dtype=self.dtype, name=module)(h, train, *gates)
        h = _block_output(self, module, b, y, h, taps, f"stage{s + 1}/block{b}")
    h = _conv(self._width(self.head_width), 1, 1, self.dtype, "head_conv")(h)
    z = _batch_norm(train, self.dtype, "head_bn")(h)
    _tap(self, "preacts", "head", z)
    h = act(z)
    h = jnp.mean(h, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(h)
    return logits.astype(jnp.float32)


# ----------------------------------------------------------------------------
# Construction by name.

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "resnet": ResNet,
    "invres": InvertedResidualNet,
}


def as_tuple(value: Any) -> Any:
  """Lists (e.g. from a ConfigDict) to tuples, recursively, so modules hash."""
  if isinstance(value, (list, tuple)):
    return tuple(as_tuple(v) for v in value)
  return value


def fields(name: str) -> tuple[str, ...]:
  """The keyword arguments that `build(name, ...)` accepts."""
  errors.choice("model.name", name, MODELS)
  return tuple(f.name for f in dataclasses.fields(MODELS[name])
               if f.name not in ("parent", "name", "num_classes"))


def build(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """The model called `name` ('mlp', 'resnet', 'invres') with `kwargs` as fields.

  Raises ConfigError for an unknown name, an unknown field or a bad value.
  `dtype` may be a string ('float32', 'bfloat16', 'float16'); lists become
  tuples.
  """
  allowed = fields(name)
  for key in kwargs:
    errors.check(key in allowed, f"model.{key} is not a field of model {name!r}; "
                 f"fields: {', '.join(allowed)}")
  kwargs = {k: as_tuple(v) for k, v in kwargs.items()}
  if "dtype" in kwargs:
    _check_dtype(kwargs["dtype"])
    kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
  return MODELS[name](num_classes=num_classes, **kwargs)


def param_count(params: Any) -> int:
  """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
  return int(sum(math.prod(p.shape) for p in jax.tree.leaves(params)))


def probe_tensors(taps: Mapping[str, Any], collection: str = "preacts") -> dict[str, Array]:
  """Unwraps one collection of `apply(..., mutable=COLLECTIONS)` to {name: tensor}.

  Outside jit the names come in forward order; a jitted apply returns them
  sorted by name, so use `sown_names` for the forward order.
  """
  out = {}
  for key, value in taps.get(collection, {}).items():
    if not (isinstance(value, tuple) and len(value) == 1):
      raise ValueError(f"{collection}[{key!r}] holds {len(value)} values, not 1; pass "
                       "apply only 'params' and 'batch_stats'")
    out[key] = value[0]
  return out


def sown_names(model: nn.Module, input_shape: Sequence[int],
               collection: str = "preacts") -> tuple[str, ...]:
  """Names `model` sows into `collection`, in forward order (abstract trace only).

  `input_shape` excludes the batch dimension.
  """
  names = []

  def trace(x):
    variables = model.init(jax.random.key(0), x)
    _, taps = model.apply(variables, x, mutable=[collection])
    names.extend(taps.get(collection, {}))  # insertion order = forward order
    return x

  jax.eval_shape(trace, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
  return tuple(names)


# ----------------------------------------------------------------------------
# A first layer of width n on the raw input, then a fixed MLP head (the
# collapse study: MobileNetV2 Fig. 1 inside a trained network).

FIRST_LAYERS = ("relu", "linear", "residual")


class FirstLayerNet(nn.Module):
  """z = W x + b of `width` units on the flattened input, then a fixed head.

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
  num_classes: int
  width: int = 8
  first: str = "relu"
  head_width: int = 64
  head_depth: int = 2
  activation: str = "relu"
  dtype: Dtype = jnp.float32
  gated: bool = False

  def __post_init__(self):
    _check_int("num_classes", self.num_classes, 1)
    _check_int("width", self.width, 1)
    errors.choice("model.first", self.first, FIRST_LAYERS)
    _check_int("head_width", self.head_width, 1)
    _check_int("head_depth", self.head_depth, 0)
    _check_activation(self.activation)
    _check_dtype(self.dtype)
    _check_bool("gated", self.gated)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    act = activations.fn(self.activation)
    x_BxD = x.reshape(x.shape[0], -1)
    z = nn.Dense(self.width, dtype=self.dtype, name="first_dense")(x_BxD)
    if self.gated:
      h = _keep_if(_gate(self, "relu"), act(z), z)
      u = nn.Dense(self.width, dtype=self.dtype, name="branch")(z)
      h = h + _gate(self, "branch_on") * act(u)
    elif self.first == "relu":
      _tap(self, "preacts", "first", z)
      h = act(z)
    elif self.first == "linear":
      h = z
    else:
      u = nn.Dense(self.width, dtype=self.dtype, name="branch")(z)
      _tap(self, "preacts", "first_branch", u)
      b = act(u)
      _tap(self, "shortcut", "first", z)
      _tap(self, "branch", "first", b)
      h = z + b
    for i in range(self.head_depth):
      g = nn.Dense(self.head_width, dtype=self.dtype, name=f"head{i}_dense")(h)
      if not self.gated:
        _tap(self, "preacts", f"head{i}", g)
      h = act(g)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(h)
    return logits.astype(jnp.float32)


MODELS["firstlayer"] = FirstLayerNet
