"""Layers and switches shared by the model families.

Convolutions and BatchNorm as every family builds them, the taps that sow
probe tensors, and the gates of grids. A switch (`gate`, `toggle`) is a
float32 scalar in the 'gates' collection when the model is gated (grids;
resjax/grid.py), so nets of one padded grid share one program; otherwise it
is a Python number and `keep_if`, `add_shortcut` and the callers' tests fold
it away while tracing, so an ungated model has one code path with no gate in
its program.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from resjax.kernels import onednn

Array = jax.Array
Dtype = Any
Gate = Any  # A float32 scalar (gated models) or a Python number (1.0 on, 0.0 off).

# Convolution implementations: XLA's own, or oneDNN's through the XLA FFI
# (CPU, float32; elsewhere, or where it is not built, XLA's; resjax/kernels).
CONV_IMPLS = {"xla": None, "onednn": onednn.conv_general_dilated}


def stream(h: Array, conv_impl: str) -> Array:
  """A residual stream between blocks: with oneDNN's convolutions, written to
  memory once for all its readers (`onednn.materialize`), which XLA's CPU
  fusion would otherwise recompute from the stage's first block at each block;
  with XLA's convolutions, `h` itself."""
  return onednn.materialize(h) if conv_impl == "onednn" else h


# He et al. 2015 normal init, fan_out mode (keeps the backward-pass variance;
# torchvision's choice for ResNets and MobileNetV2). Every conv is followed by
# BatchNorm, so fan_in would train the same.
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# Explicit symmetric padding (one pixel per side of each spatial axis): a
# stride-2 3x3 conv then centres its windows on the even pixels, the same ones
# the option-A shortcut keeps (SAME padding would pad only at the bottom/right
# and shift the windows by one pixel).


def batch_norm(train: bool, dtype: Dtype, name: str, shift: bool = True) -> nn.BatchNorm:
  """BatchNorm with a learned scale and, unless `shift=False`, a learned shift (beta)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      use_bias=shift, dtype=dtype, name=name)


def _conv(features: int, kernel: int, strides: int, dtype: Dtype, name: str,
          groups: int = 1, impl: str = "xla", dims: int = 2) -> nn.Conv:
  """A bias-free He-normal conv over `dims` spatial axes (3x3: padding 1; 1x1: none).

  The families call it as `layers._conv` at trace time, so a benchmark can wrap
  it (benchmarks/tried.py); hence the one underscore name here.
  """
  return nn.Conv(features, (kernel,) * dims, strides=(strides,) * dims,
                 padding=((1, 1) if kernel == 3 else (0, 0),) * dims,
                 feature_group_count=groups, use_bias=False, dtype=dtype,
                 kernel_init=he_normal, name=name, conv_general_dilated=CONV_IMPLS[impl])


class DepthwiseConv1D(nn.Module):
  """A bias-free width-3 depthwise conv over the positions of [B, L, C] (padding 1) as
  three shifted products: XLA's grouped convolution is about 7x slower on CPU. Its
  parameter (kernel [3, 1, C], He-normal) and output are those of
  `_conv(C, 3, strides, groups=C, dims=1)`."""
  strides: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", he_normal, (3, 1, x.shape[-1]), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    padded = jnp.pad(x, ((0, 0), (1, 1), (0, 0)))
    length = x.shape[1]
    y = sum(padded[:, i:i + length] * kernel[i, 0] for i in range(3))
    return y[:, ::self.strides]


def depthwise(features: int, strides: int, dtype: Dtype, name: str, dims: int = 2) -> nn.Module:
  """A bias-free He-normal 3x3 (sequences: width-3) depthwise conv, padding 1."""
  if dims == 1:
    return DepthwiseConv1D(strides, dtype, name=name)
  return _conv(features, 3, strides, dtype, name, groups=features, dims=dims)


def tap(module: nn.Module, collection: str, name: str, value: Array) -> None:
  """Sows `value`, except during init (so init's variables stay clean)."""
  if not module.is_initializing():
    module.sow(collection, name, value)


def sow_taps(module: nn.Module, block: str, taps: Mapping[str, Array]) -> None:
  """Sows a block's taps: activation inputs under 'block/key', the rest under 'block'."""
  for key, value in taps.items():
    if key in ("shortcut", "branch"):
      tap(module, key, block, value)
    else:
      tap(module, "preacts", f"{block}/{key}", value)


def gate(module: nn.Module, name: str, value: float = 1.0) -> Gate:
  """A switch named `name`: in a gated model (`module.gated`) a float32 scalar in
  the 'gates' collection (1 = on; init: 1), otherwise the Python number `value`."""
  if not module.gated:
    return value
  return module.variable("gates", name, lambda: jnp.ones((), jnp.float32)).value


def toggle(module: nn.Module, field: str) -> Gate:
  """The switch of a toggled field (the family's TOGGLES): its gate, or the
  field's own value as a Python number."""
  spec = type(module).TOGGLES[field]
  return gate(module, spec.gate, spec.value(getattr(module, field)))


def is_const(g: Gate) -> bool:
  """Whether a switch is a Python number (the model is not gated)."""
  return isinstance(g, (bool, int, float))


def is_off(g: Gate) -> bool:
  """Whether a switch is the Python constant off (its path is not built)."""
  return is_const(g) and not g > 0


def keep_if(g: Gate, new: Array, old: Array) -> Array:
  """`new` where the switch is on, else `old` (a gated-out block is the identity)."""
  if is_const(g):
    return new if g > 0 else old
  return jnp.where(g > 0, new, old)


def add_shortcut(taps: dict, s: Array, b: Array, g: Gate) -> Array:
  """s + b, the shortcut multiplied by a gate (grids); taps s. Callers skip it
  where `g` is the constant off."""
  if not is_const(g):
    s = s * g
  taps["shortcut"] = s
  return s + b


def block_output(model: nn.Module, module: str, index: int, y: Array, h: Array,
                 taps: Mapping[str, Array], tap_name: str) -> Array:
  """Sows a block's taps and gives the hidden state after block `index` of a
  stage: its output y, or h where the block's gate '<module>_on' is off (the
  first block of a stage is never gated)."""
  sow_taps(model, tap_name, taps)
  if index == 0:
    return y
  return keep_if(gate(model, f"{module}_on"), y, h)
