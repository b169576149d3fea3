"""Many small networks trained in one compiled call.

A grid of networks (seeds x widths x depths x variants) is trained by one jitted
function: `vmap` over the grid, `lax.scan` over steps. Widths differ by padding
to the widest net and masking units; depths differ by gating blocks out (a gated
block is the identity, for plain and residual nets alike). A padded net trains
exactly like the same net built at its own size (tests/test_sweeps.py checks it):

- each weight is a counter-based draw from (seed, parameter, coordinates), so
  the padded draw restricted to the active block equals the unpadded draw, and
  the He scale uses the active fan-in;
- masked units output exactly zero and every update is multiplied by the
  parameter mask, whatever the optimizer does (momentum, Adam moments, decay);
- layer norm averages over the active units only.

The grid axis is sharded over the devices of a 1-D 'grid' mesh (padded to a
multiple of the device count with copies of the first net, dropped at the end).

Families (`Arch.family`), all functional (no Flax) so that every unit can be masked:

- 'mlp': flatten -> linear stem -> (depth - 1) blocks -> head. A block maps
  h -> r * h + W act(norm(h)) + b with r = 1 (residual) or 0 (plain); the head
  is W act(norm(h)) + b. Plain and residual nets of one depth have exactly the
  same parameters, and `depth` counts the activation layers.
- 'conv': the same with 3x3 convolutions (stride 1, 'SAME') on small images,
  an optional average pool after the stem (`stem_pool`) and a global average
  pool before the head.
- 'invres': inverted-residual blocks (MobileNetV2): 1x1 expansion by `expansion`
  with ReLU6, 3x3 depthwise with ReLU6, 1x1 projection to the bottleneck width,
  then the bottleneck nonlinearity (variant 'linear' or 'relu6', applied to the
  projection before the addition) and the identity shortcut. The stem (3x3
  conv to the bottleneck width, optional pool) passes the same bottleneck
  nonlinearity; the head is 1x1 conv to `head_width` + ReLU6, global pool,
  dense. `width` is the bottleneck width, `depth` the number of blocks. No
  normalization (the nets are 1-3 blocks deep).
- 'bottleneck': a first layer of width n on the raw input, then a fixed MLP
  head of two `head_width` layers. The first layer's output is relu(z)
  (variant 'relu'), z ('linear'), or z + relu(U z + c) ('residual': identity
  plus a ReLU branch), z = W x + b. `width` is n.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from resjax import activations, errors, files

FAMILIES = ("mlp", "conv", "invres", "bottleneck")
NORMS = ("none", "layer")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")
VARIANTS = {
    "mlp": ("plain", "residual"),
    "conv": ("plain", "residual"),
    "invres": ("linear", "relu6"),
    "bottleneck": ("relu", "linear", "residual"),
}
GRID_AXIS = "grid"
_EPS = 1e-5
Params = Any


@dataclasses.dataclass(frozen=True)
class Arch:
  """What every net of a grid shares; `max_width` / `max_depth` bound the grid.

  Attributes:
    family: one of FAMILIES.
    num_classes: outputs of the head.
    input_shape: one example's shape, e.g. (2,) or (8, 8, 1).
    max_width: the widest net (units, channels, bottleneck width or n).
    max_depth: the deepest net (activation layers, or blocks for 'invres').
    activation: hidden activation of 'mlp', 'conv' and the 'bottleneck' head.
    norm: 'none' or 'layer' (masked layer norm before each activation).
    branch_scale: residual branches start scaled by 1/sqrt(number of blocks).
    head_width: hidden width of the 'invres' and 'bottleneck' heads.
    expansion: 'invres' expansion factor t.
    stem_pool: 'conv' / 'invres': average-pool the stem output over
      stem_pool x stem_pool windows (2 turns 8x8 digits into 4x4 maps).
  """
  family: str
  num_classes: int
  input_shape: tuple[int, ...]
  max_width: int
  max_depth: int = 1
  activation: str = "relu"
  norm: str = "none"
  branch_scale: bool = False
  head_width: int = 64
  expansion: int = 6
  stem_pool: int = 1

  def validate(self) -> "Arch":
    errors.choice("model.family", self.family, FAMILIES)
    errors.choice("model.norm", self.norm, NORMS)
    activations.get(self.activation)
    errors.check(self.max_width >= 1, f"model width must be >= 1, got {self.max_width}")
    errors.check(self.max_depth >= 1, f"model depth must be >= 1, got {self.max_depth}")
    errors.check(self.expansion >= 1, f"model.expansion must be >= 1, got {self.expansion}")
    errors.check(self.head_width >= 1, f"model.head_width must be >= 1, got {self.head_width}")
    if self.family in ("conv", "invres"):
      errors.check(len(self.input_shape) == 3,
                   f"model.family={self.family!r} needs images [H,W,C]; "
                   f"the data has examples of shape {self.input_shape}")
      p = self.stem_pool
      errors.check(p >= 1 and self.input_shape[0] % p == 0 and self.input_shape[1] % p == 0,
                   f"model.stem_pool={p} must divide the image size {self.input_shape[:2]}")
    return self


@dataclasses.dataclass(frozen=True)
class Optim:
  """Optimizer of every net in a grid."""
  name: str = "adam"
  lr: float = 1e-3
  momentum: float = 0.9
  weight_decay: float = 0.0
  schedule: str = "constant"

  def make(self, total_steps: int) -> optax.GradientTransformation:
    errors.choice("opt.name", self.name, OPTIMIZERS)
    errors.choice("opt.schedule", self.schedule, SCHEDULES)
    errors.check(self.lr > 0, f"opt.lr must be > 0, got {self.lr}")
    lr = self.lr
    if self.schedule == "cosine":
      lr = optax.cosine_decay_schedule(self.lr, max(1, total_steps))
    if self.name == "adam":
      return optax.adamw(lr, weight_decay=self.weight_decay)
    return optax.chain(optax.add_decayed_weights(self.weight_decay),
                       optax.sgd(lr, momentum=self.momentum or None))


class Net(NamedTuple):
  """One point of a grid."""
  seed: int
  width: int
  depth: int
  variant: str


class Arrays(NamedTuple):
  """A dataset as arrays: float32 inputs (normalized), int32 labels."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int


def grid(seeds: Sequence[int], widths: Sequence[int], depths: Sequence[int],
         variants: Sequence[str]) -> list[Net]:
  """All combinations, variants outermost and seeds innermost."""
  return [Net(s, w, d, v) for v, d, w, s in itertools.product(variants, depths, widths, seeds)]


def check_nets(arch: Arch, nets: Sequence[Net]) -> None:
  """ConfigError unless every net fits `arch` and names a known variant."""
  errors.check(len(nets) > 0, "the grid is empty: give at least one seed, width, depth, variant")
  for net in nets:
    errors.choice(f"variant of model.family={arch.family!r}", net.variant, VARIANTS[arch.family])
    errors.check(1 <= net.width <= arch.max_width,
                 f"width {net.width} is outside 1..{arch.max_width}")
    lo = 0 if arch.family == "invres" else 1
    errors.check(lo <= net.depth <= arch.max_depth,
                 f"depth {net.depth} is outside {lo}..{arch.max_depth}")


def specs(arch: Arch, nets: Sequence[Net]) -> dict[str, np.ndarray]:
  """The per-net numbers the compiled function reads, each of shape [K]."""
  variants = VARIANTS[arch.family]
  return {
      "seed": np.asarray([n.seed for n in nets], np.int32),
      "width": np.asarray([n.width for n in nets], np.int32),
      "depth": np.asarray([n.depth for n in nets], np.int32),
      "variant": np.asarray([variants.index(n.variant) for n in nets], np.int32),
  }


def unpadded(arch: Arch, net: Net) -> Arch:
  """The arch of `net` built at its own size (no padding, no masks)."""
  return dataclasses.replace(arch, max_width=net.width, max_depth=max(net.depth, 1))


# ----------------------------------------------------------------------------
# Initialization: per-coordinate draws, so padding never changes a weight.


def _mix32(x: jax.Array) -> jax.Array:
  """A 32-bit integer finalizer (lowbias32): every input bit moves every output bit."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _hash(*words) -> jax.Array:
  """Hash of a sequence of integer arrays (broadcast together) to uint32."""
  h = jnp.uint32(0x2545F491)
  for w in words:
    h = _mix32(h ^ (jnp.asarray(w).astype(jnp.uint32) + jnp.uint32(0x9E3779B9)
                    + (h << 6) + (h >> 2)))
  return h


def _uniform(h: jax.Array) -> jax.Array:
  """uint32 -> float32 in the open interval (0, 1)."""
  return ((h >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))


def _normal(seed: jax.Array, tag: int, shape: tuple[int, ...]) -> jax.Array:
  """N(0, 1) draws where entry (i, j, ...) depends only on (seed, tag, i, j, ...).

  A counter-based hash with Box-Muller: padding a shape never changes the
  entries it shares with the unpadded shape, and it compiles in milliseconds
  (each threefry call site costs XLA's CPU compiler a few tenths of a second).
  """
  coords = jnp.indices(shape, dtype=jnp.uint32) if shape else []
  h = _hash(seed, tag, *coords)
  u1, u2 = _uniform(_mix32(h ^ jnp.uint32(1))), _uniform(_mix32(h ^ jnp.uint32(2)))
  return jnp.sqrt(-2.0 * jnp.log(u1)) * jnp.cos(2.0 * jnp.pi * u2)


def _outer(*masks: jax.Array) -> jax.Array:
  """Outer product of 1-D masks."""
  out = masks[0]
  for m in masks[1:]:
    out = out[..., None] * m
  return out


class _Masks(NamedTuple):
  unit: jax.Array      # [W] 1 for the net's own units
  count: jax.Array     # number of own units (float)
  gate: jax.Array      # [L] 1 for the net's own blocks
  blocks: jax.Array    # number of own blocks (float)
  variant: jax.Array   # int index into VARIANTS[family]
  inner: jax.Array     # [T] 'invres' expanded units


def _masks(arch: Arch, spec: dict[str, jax.Array]) -> _Masks:
  w, d = spec["width"], spec["depth"]
  unit = (jnp.arange(arch.max_width) < w).astype(jnp.float32)
  if arch.family == "invres":
    nblocks = arch.max_depth
    blocks = d
  else:
    nblocks = arch.max_depth - 1
    blocks = d - 1
  gate = (jnp.arange(nblocks) < blocks).astype(jnp.float32)
  inner = (jnp.arange(arch.expansion * arch.max_width) < arch.expansion * w).astype(jnp.float32)
  return _Masks(unit, w.astype(jnp.float32), gate, blocks.astype(jnp.float32),
                spec["variant"], inner)


def _is_residual(arch: Arch, m: _Masks) -> jax.Array:
  """1.0 where the net has identity shortcuts, else 0.0."""
  if arch.family == "invres":
    return jnp.float32(1.0)
  if arch.family == "bottleneck":
    return (m.variant == 2).astype(jnp.float32)
  return (m.variant == 1).astype(jnp.float32)


def _branch_gain(arch: Arch, m: _Masks) -> jax.Array:
  if not arch.branch_scale:
    return jnp.float32(1.0)
  res = _is_residual(arch, m)
  return res / jnp.sqrt(jnp.maximum(m.blocks, 1.0)) + (1.0 - res)


def _build(arch: Arch, spec: dict[str, jax.Array], values: bool) -> Params:
  """Parameters of one net (values=True) or their masks (values=False).

  Masked entries are 0 in both. Every weight is drawn from a key folded with its
  coordinates and scaled by the net's own fan-in.
  """
  m = _masks(arch, spec)
  tags = itertools.count(1)
  f = arch.family
  L, C = arch.max_depth, arch.num_classes
  c_in = arch.input_shape[-1]
  d_in = int(np.prod(arch.input_shape))
  one = lambda n: jnp.ones((n,), jnp.float32)  # noqa: E731
  he = math.sqrt(2.0)

  def weight(mask, fan_in, gain):
    tag = next(tags)
    if not values:
      return mask
    return _normal(spec["seed"], tag, mask.shape) * (gain / jnp.sqrt(fan_in)) * mask

  def zeros(mask):
    return jnp.zeros_like(mask) if values else mask

  def norm(mask):
    if arch.norm != "layer":
      return {}
    return {"scale": mask, "bias": zeros(mask)}

  if f in ("mlp", "conv"):
    nb = L - 1
    gain_b = he * _branch_gain(arch, m)
    gate_u = m.gate[:, None] * m.unit
    if f == "mlp":
      stem = _outer(one(d_in), m.unit)
      blocks = m.gate[:, None, None] * _outer(m.unit, m.unit)
      fan_stem, fan_block = d_in, m.count
    else:
      stem = _outer(one(3), one(3), one(c_in), m.unit)
      blocks = m.gate[:, None, None, None, None] * _outer(one(3), one(3), m.unit, m.unit)[None]
      fan_stem, fan_block = 9 * c_in, 9 * m.count
    blocks = jnp.broadcast_to(blocks, (nb,) + blocks.shape[1:])
    return {
        "stem": {"w": weight(stem, fan_stem, he), "b": zeros(m.unit)},
        "blocks": {"w": weight(blocks, fan_block, gain_b), "b": zeros(gate_u), **norm(gate_u)},
        "head": {"w": weight(_outer(m.unit, one(C)), m.count, 1.0), "b": zeros(one(C)),
                 **norm(m.unit)},
    }
  if f == "invres":
    H = arch.head_width
    gate_t = m.gate[:, None] * m.inner
    return {
        "stem": {"w": weight(_outer(one(3), one(3), one(c_in), m.unit), 9 * c_in, he),
                 "b": zeros(m.unit)},
        "blocks": {
            "expand": weight(m.gate[:, None, None] * _outer(m.unit, m.inner), m.count, he),
            "expand_b": zeros(gate_t),
            "dw": weight(gate_t[:, None, None, :] * jnp.ones((L, 3, 3, 1)), 9.0, he),
            "dw_b": zeros(gate_t),
            "project": weight(m.gate[:, None, None] * _outer(m.inner, m.unit),
                              arch.expansion * m.count, he),
            "project_b": zeros(m.gate[:, None] * m.unit),
        },
        "head": {"w1": weight(_outer(m.unit, one(H)), m.count, he), "b1": zeros(one(H)),
                 "w": weight(_outer(one(H), one(C)), H, 1.0), "b": zeros(one(C))},
    }
  H = arch.head_width
  res = _is_residual(arch, m)
  return {
      "first": {"w": weight(_outer(one(d_in), m.unit), d_in, he), "b": zeros(m.unit)},
      "branch": {"w": weight(res * _outer(m.unit, m.unit), m.count, he), "b": zeros(res * m.unit)},
      "head": {"w1": weight(_outer(m.unit, one(H)), m.count, he), "b1": zeros(one(H)),
               "w2": weight(_outer(one(H), one(H)), H, he), "b2": zeros(one(H)),
               "w": weight(_outer(one(H), one(C)), H, 1.0), "b": zeros(one(C))},
  }


def init(arch: Arch, spec: dict[str, jax.Array]) -> Params:
  """Parameters of one net (entries outside the net are 0); vmap it over a grid."""
  return _build(arch, spec, values=True)


def param_mask(arch: Arch, spec: dict[str, jax.Array]) -> Params:
  """1 where a parameter belongs to the net described by `spec`, else 0."""
  return _build(arch, spec, values=False)


# ----------------------------------------------------------------------------
# Forward passes.


class Probe(NamedTuple):
  """Pre-activations of the probed layers of one net, for one batch."""
  z: jax.Array       # [NL, B, S, C] pre-activations (S = spatial positions)
  unit: jax.Array    # [NL, C] 1 for the net's own units
  valid: jax.Array   # [NL] 1 for the net's own layers


def _layer_norm(h, p, unit, count):
  """Layer norm over the last axis, counting only the net's own units."""
  mean = jnp.sum(h * unit, -1, keepdims=True) / count
  d = (h - mean) * unit
  var = jnp.sum(d * d, -1, keepdims=True) / count
  return d * lax.rsqrt(var + _EPS) * p["scale"] + p["bias"]


def _conv3x3(x_BxHxWxC, w_3x3xCxD):
  """'SAME' 3x3 convolution, stride 1: the nine shifted images side by side, one matmul.

  Vmapped over a grid this is a batched matmul, several times faster on the
  CPU than the grouped convolution that vmap makes of `lax.conv_general_dilated`.
  """
  _, H, W, C = x_BxHxWxC.shape
  xp = jnp.pad(x_BxHxWxC, ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = jnp.concatenate([xp[:, i:i + H, j:j + W, :] for i in range(3) for j in range(3)], -1)
  return patches @ w_3x3xCxD.reshape(9 * C, -1)


def _pool(x_BxHxWxC, p: int):
  """Average over non-overlapping p x p windows."""
  if p == 1:
    return x_BxHxWxC
  b, h, w, c = x_BxHxWxC.shape
  return x_BxHxWxC.reshape(b, h // p, p, w // p, p, c).mean(axis=(2, 4))


def _depthwise3x3(x_BxHxWxC, w_3x3xC):
  _, H, Wd, _ = x_BxHxWxC.shape
  xp = jnp.pad(x_BxHxWxC, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = 0.0
  for i in range(3):
    for j in range(3):
      out = out + xp[:, i:i + H, j:j + Wd, :] * w_3x3xC[i, j]
  return out


def apply(arch: Arch, params: Params, spec: dict[str, jax.Array], x: jax.Array,
          probe: bool = False) -> jax.Array | tuple[jax.Array, Probe | None]:
  """Logits of one net for a batch `x` [B, *input_shape]; with `probe`, also a Probe."""
  m = _masks(arch, spec)
  f = arch.family
  act = activations.fn(arch.activation)
  res = _is_residual(arch, m)
  u = m.unit
  if f in ("mlp", "conv"):
    if f == "mlp":
      h = x.reshape(x.shape[0], -1) @ params["stem"]["w"]
      lin = lambda a, w: a @ w  # noqa: E731
    else:
      h = _pool(_conv3x3(x, params["stem"]["w"]), arch.stem_pool)
      lin = _conv3x3
    h = (h + params["stem"]["b"]) * u

    def pre(h, p):
      return (_layer_norm(h, p, u, m.count) if arch.norm == "layer" else h) * u

    def block(h, xs):
      p, g = xs
      z = pre(h, p)
      new = res * h + (lin(act(z) * u, p["w"]) + p["b"]) * u
      return jnp.where(g > 0, new, h), (z if probe else None)

    h, zs = lax.scan(block, h, (params["blocks"], m.gate))
    z = pre(h, params["head"])
    a = act(z) * u
    if f == "conv":
      a = a.mean(axis=(1, 2))
    logits = a @ params["head"]["w"] + params["head"]["b"]
    if not probe:
      return logits
    zs_all = jnp.concatenate([zs, z[None]], 0)
    zs_all = zs_all.reshape(zs_all.shape[0], zs_all.shape[1], -1, zs_all.shape[-1])
    nl = zs_all.shape[0]
    return logits, Probe(zs_all, jnp.broadcast_to(u, (nl, u.shape[0])),
                         jnp.concatenate([m.gate, jnp.ones((1,))]))
  if f == "invres":
    relu6 = jax.nn.relu6
    use_relu6 = (m.variant == 1)
    sig = lambda y: jnp.where(use_relu6, relu6(y), y)  # noqa: E731
    h = sig(_pool(_conv3x3(x, params["stem"]["w"]), arch.stem_pool) + params["stem"]["b"]) * u

    def block(h, xs):
      p, g = xs
      e = relu6(h @ p["expand"] + p["expand_b"]) * m.inner
      dw = relu6(_depthwise3x3(e, p["dw"]) + p["dw_b"]) * m.inner
      y = sig(dw @ p["project"] + p["project_b"]) * u
      return jnp.where(g > 0, res * h + y, h), None

    h, _ = lax.scan(block, h, (params["blocks"], m.gate))
    a = relu6(h @ params["head"]["w1"] + params["head"]["b1"]).mean(axis=(1, 2))
    logits = a @ params["head"]["w"] + params["head"]["b"]
    return (logits, None) if probe else logits
  # bottleneck
  p = params
  z = (x.reshape(x.shape[0], -1) @ p["first"]["w"] + p["first"]["b"]) * u
  branch = jax.nn.relu(z @ p["branch"]["w"] + p["branch"]["b"]) * u
  h = jnp.select([m.variant == 0, m.variant == 1], [jax.nn.relu(z), z], z + branch) * u
  a = act(h @ p["head"]["w1"] + p["head"]["b1"])
  a = act(a @ p["head"]["w2"] + p["head"]["b2"])
  logits = a @ p["head"]["w"] + p["head"]["b"]
  if not probe:
    return logits
  return logits, Probe(z[None, :, None, :], u[None], jnp.ones((1,)))


def probe_activation(arch: Arch) -> str:
  """The activation whose 'on duty' region the probes measure."""
  return "relu" if arch.family == "bottleneck" else arch.activation


# ----------------------------------------------------------------------------
# One net: loss, step, evaluation, probes.


def _loss(arch, params, spec, x, y):
  logits = apply(arch, params, spec, x)
  logp = jax.nn.log_softmax(logits)
  loss = -jnp.take_along_axis(logp, y[:, None], axis=1).mean()
  return loss, logits


def epoch_permutation(seed, epoch, num_examples: int) -> jax.Array:
  """The example order of `epoch` for the net with `seed` (sorts hashes; jit-able)."""
  return jnp.argsort(_hash(seed, 0x5EED, epoch, jnp.arange(num_examples)))


def _train_step(arch, tx, params, opt_state, spec, perm, pos, x_train, y_train, batch_size):
  """One step on rows perm[pos * batch_size:][:batch_size] of the training split."""
  idx = lax.dynamic_slice(perm, (pos * batch_size,), (batch_size,))
  (loss, _), grads = jax.value_and_grad(_loss, argnums=1, has_aux=True)(
      arch, params, spec, x_train[idx], y_train[idx])
  mask = param_mask(arch, spec)
  grads = jax.tree.map(jnp.multiply, grads, mask)
  updates, opt_state = tx.update(grads, opt_state, params)
  updates = jax.tree.map(jnp.multiply, updates, mask)
  return optax.apply_updates(params, updates), opt_state, loss


def _chunks(x, y, size, g=None):
  """Pads arrays to a multiple of `size` rows, reshaped [n, size, ...], plus a row mask."""
  n = x.shape[0]
  k = -(-n // size)
  pad = k * size - n

  def cut(a):
    a = jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)])
    return a.reshape((k, size) + a.shape[1:])

  out = (cut(x), cut(y), cut(jnp.ones((n,))))
  return out if g is None else out + (cut(g),)


def _evaluate(arch, params, spec, x, y, group, size, groups: int = 2):
  """Mean loss and accuracy [groups] of the rows of each group (e.g. 0 train, 1 test)."""
  xs, ys, ms, gs = _chunks(x, y, size, group)

  def body(acc, b):
    xb, yb, mb, gb = b
    logits = apply(arch, params, spec, xb)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], axis=1)[:, 0]
    correct = (jnp.argmax(logits, -1) == yb).astype(jnp.float32)
    onehot_BxG = (gb[:, None] == jnp.arange(groups)) * mb[:, None]
    return (acc[0] + nll @ onehot_BxG, acc[1] + correct @ onehot_BxG, acc[2] + onehot_BxG.sum(0)), None

  zero = jnp.zeros((groups,))
  (nll, correct, count), _ = lax.scan(body, (zero, zero, zero), (xs, ys, ms, gs))
  count = jnp.maximum(count, 1.0)
  return nll / count, correct / count


def _probe_stats(arch, params, spec, x, y, size, min_on: int = 2):
  """Per-layer unit statistics over a whole split, and per-layer gradient norms.

  Returns a dict of arrays: 'ever_on' [NL, C] (unit on duty for some input),
  'unit' [NL, C], 'valid' [NL] (layers of this net: blocks, then the head),
  'all_off' / 'few_on' / 'all_on' [NL] (fraction of inputs, per spatial
  position, with no unit / fewer than `min_on` units / every unit of the layer
  on duty), and 'grad_norm' [L] (norm of the loss gradient w.r.t. the weights
  feeding layer l, on the first chunk of the split; entry l is this net's when
  l < depth).
  """
  active = activations.get(probe_activation(arch)).active
  xs, ys, ms = _chunks(x, y, size)

  def body(acc, b):
    xb, _, mb = b
    _, pr = apply(arch, params, spec, xb, probe=True)
    on = active(pr.z) & (pr.unit[:, None, None, :] > 0) & (mb[None, :, None, None] > 0)
    n_on = jnp.sum(on, -1)
    width = jnp.sum(pr.unit, -1)[:, None, None]
    real = mb[None, :, None]
    ever, off, few, every = acc
    return (ever | jnp.any(on, axis=(1, 2)),
            off + jnp.sum((n_on == 0) * real, axis=(1, 2)),
            few + jnp.sum((n_on < min_on) * real, axis=(1, 2)),
            every + jnp.sum((n_on == width) * real, axis=(1, 2))), None

  _, pr0 = apply(arch, params, spec, xs[0], probe=True)
  nl, _, s, c = pr0.z.shape
  zero = jnp.zeros((nl,))
  (ever, off, few, every), _ = lax.scan(body, (jnp.zeros((nl, c), bool), zero, zero, zero),
                                        (xs, ys, ms))
  denom = x.shape[0] * s
  grads = jax.grad(lambda p: _loss(arch, p, spec, xs[0], ys[0])[0])(params)
  return {"ever_on": ever, "unit": pr0.unit, "valid": pr0.valid, "all_off": off / denom,
          "few_on": few / denom, "all_on": every / denom,
          "grad_norm": _layer_grad_norms(arch, grads, nl)}


def _layer_grad_norms(arch, grads, nl):
  """Frobenius norm of the gradient of each probed layer's incoming weights."""
  if arch.family in ("mlp", "conv"):
    g = grads["blocks"]["w"]
    per_block = jnp.sqrt(jnp.sum(g.reshape(g.shape[0], -1) ** 2, -1))
    stem = jnp.sqrt(jnp.sum(grads["stem"]["w"] ** 2))
    return jnp.concatenate([stem[None], per_block])  # layer l is fed by these weights
  if arch.family == "bottleneck":
    return jnp.sqrt(jnp.sum(grads["first"]["w"] ** 2))[None]
  return jnp.zeros((nl,))


def dead_fraction(stats: dict[str, np.ndarray]) -> np.ndarray:
  """Per layer: the net's units never on duty / the net's units (NaN: not its layer)."""
  unit = stats["unit"] > 0
  dead = (unit & ~stats["ever_on"]).sum(-1) / np.maximum(unit.sum(-1), 1)
  return np.where(stats["valid"] > 0, dead, np.nan)


# ----------------------------------------------------------------------------
# The grid: one compiled call trains every net.


@dataclasses.dataclass
class GridResult:
  """What `train_grid` returns; arrays have a leading axis of K nets (no padding)."""
  nets: list[Net]
  eval_steps: np.ndarray                 # [E] steps at which the history was taken
  history: dict[str, np.ndarray]         # name -> [K, E]: train_loss, train_acc, test_loss,
                                         #   test_acc, batch_loss (mean over the window)
  probes_init: dict[str, np.ndarray] | None
  probes_final: dict[str, np.ndarray] | None
  params: Params                         # final parameters, padded shapes, [K, ...]
  timing: dict[str, float]


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis 'grid' (default: all devices)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (GRID_AXIS,))


def _pad_nets(nets: Sequence[Net], multiple: int) -> list[Net]:
  return list(nets) + [nets[0]] * ((-len(nets)) % multiple)


_EXECUTABLES: dict[tuple, Any] = {}
# XLA options for `fast_compile`: about half the compile time, about twice the run
# time; for grids that train for seconds (tests, smoke runs).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


class _Runner:
  """Jitted, sharded functions of one grid.

  Executables are kept per process, keyed by everything they depend on (arch,
  optimizer, step counts, devices, argument shapes), so a grid trained again in
  the same process (a resumed study, a test) compiles nothing.
  """

  def __init__(self, arch, opt, total_steps, batch_size, eval_every, eval_batch, mesh,
               fast_compile=False):
    self.arch, self.tx = arch, opt.make(total_steps)
    self.options = FAST_COMPILE if fast_compile else None
    self.batch_size, self.eval_every, self.eval_batch = batch_size, eval_every, eval_batch
    self.grid = NamedSharding(mesh, PartitionSpec(GRID_AXIS))
    self.rep = NamedSharding(mesh, PartitionSpec())
    self._key = (arch, opt, total_steps, batch_size, eval_every, eval_batch,
                 tuple(d.id for d in mesh.devices.flat), fast_compile)
    self.compile_s = 0.0

  def _call(self, kind, build: Callable[[], Callable], *args):
    leaves, treedef = jax.tree.flatten(args)
    key = (kind, self._key, str(treedef),
           tuple((np.shape(a), str(getattr(a, 'dtype', type(a).__name__))) for a in leaves))
    if key not in _EXECUTABLES:
      t0 = time.perf_counter()
      _EXECUTABLES[key] = build().lower(*args).compile(self.options)
      self.compile_s += time.perf_counter() - t0
    return _EXECUTABLES[key](*args)

  def init(self, spec):
    arch, tx = self.arch, self.tx

    def one(s):
      p = init(arch, s)
      return {"params": p, "opt": tx.init(p)}

    return self._call("init", lambda: jax.jit(jax.vmap(one), in_shardings=(self.grid,),
                                              out_shardings=self.grid), spec)

  def chunk(self, windows: int, state, spec, step0, data):
    """Trains `windows` x eval_every steps, evaluating after each window.

    Returns the new state and the history [K, windows, 5].
    """
    return self._call(("chunk", windows), lambda: self._chunk_fn(windows), state, spec, step0, data)

  def _chunk_fn(self, windows):
    arch, tx, bs, every, eb = self.arch, self.tx, self.batch_size, self.eval_every, self.eval_batch

    def one(state, spec, step0, data):
      x_tr, y_tr, x_all, y_all, g_all = data
      n = x_tr.shape[0]
      per_epoch = n // bs

      def window(carry, w):
        def step(c, i):
          p, o, perm = c
          s = step0 + w * every + i
          epoch, pos = s // per_epoch, s % per_epoch
          perm = lax.cond(pos == 0, lambda: epoch_permutation(spec["seed"], epoch, n), lambda: perm)
          p, o, loss = _train_step(arch, tx, p, o, spec, perm, pos, x_tr, y_tr, bs)
          return (p, o, perm), loss

        (p, o, perm), losses = lax.scan(step, carry, jnp.arange(every))
        loss, acc = _evaluate(arch, p, spec, x_all, y_all, g_all, eb)
        return (p, o, perm), jnp.stack([loss[0], acc[0], loss[1], acc[1], losses.mean()])

      perm0 = epoch_permutation(spec["seed"], step0 // per_epoch, n)
      (p, o, _), hist = lax.scan(window, (state["params"], state["opt"], perm0), jnp.arange(windows))
      return {"params": p, "opt": o}, hist

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None, None)),
                   in_shardings=(self.grid, self.grid, self.rep, self.rep),
                   out_shardings=(self.grid, self.grid), donate_argnums=0)

  def probes(self, params, spec, data):
    arch, eb = self.arch, self.eval_batch
    build = lambda: jax.jit(  # noqa: E731
        jax.vmap(lambda p, s, x, y: _probe_stats(arch, p, s, x, y, eb), in_axes=(0, 0, None, None)),
        in_shardings=(self.grid, self.grid, self.rep, self.rep), out_shardings=self.grid)
    return self._call("probes", build, params, spec, data[0], data[1])


HISTORY_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "batch_loss")


class _Checkpoints:
  """Orbax checkpoints of a grid's host-side state (device-count independent).

  The saved tree holds only the K real nets, so a grid saved on 8 devices
  resumes on 1 and vice versa. `grid.json` beside the steps names the grid;
  resuming a different grid into the same directory is refused.
  """

  def __init__(self, directory: str, fingerprint: dict[str, Any]):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    self._ocp = ocp
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "grid.json")
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    if os.path.exists(path):
      with open(path) as f:
        errors.check(f.read() == text,
                     f"{directory} holds checkpoints of a different grid; "
                     "use a new --workdir or delete that directory")
    else:
      files.write_text(path, text)
    self._mngr = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=2, create=True, enable_async_checkpointing=False))

  def restore_latest(self, like):
    step = self._mngr.latest_step()
    if step is None:
      return None
    restored = self._mngr.restore(step, args=self._ocp.args.StandardRestore(like))
    return step, jax.tree.map(np.asarray, restored)

  def save(self, step: int, tree) -> None:
    self._mngr.save(step, args=self._ocp.args.StandardSave(tree))

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()


def _fetch(tree, k):
  return jax.tree.map(lambda a: np.asarray(jax.device_get(a))[:k], tree)


def _repad(tree, size):
  """Pads host arrays [K, ...] to [size, ...] with copies of entry 0."""
  def pad(a):
    extra = size - a.shape[0]
    return np.concatenate([a, np.repeat(a[:1], extra, 0)]) if extra > 0 else a
  return jax.tree.map(pad, tree)


def _device_data(data: Arrays):
  """(x_train, y_train, x_all, y_all, group_all): train + test stacked for evaluation."""
  x_tr, y_tr = np.asarray(data.x_train, np.float32), np.asarray(data.y_train, np.int32)
  x_te, y_te = np.asarray(data.x_test, np.float32), np.asarray(data.y_test, np.int32)
  group = np.concatenate([np.zeros(len(y_tr), np.int32), np.ones(len(y_te), np.int32)])
  return (x_tr, y_tr, np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te]), group)


def format_eta(seconds: float) -> str:
  """h:mm:ss."""
  seconds = max(0, int(round(seconds)))
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def train_grid(arch: Arch, opt: Optim, nets: Sequence[Net], data: Arrays, *,
               steps: int, batch_size: int, eval_every: int, chunk_steps: int | None = None,
               eval_batch: int = 256, devices: Sequence[jax.Device] | None = None,
               checkpoint_dir: str | None = None, log: Callable[[str], None] | None = print,
               name: str = "grid", probes: bool = False, fast_compile: bool = False) -> GridResult:
  """Trains every net of `nets` on `data`, one compiled call per chunk of steps.

  Args:
    arch: what the nets share (its max_width / max_depth bound the grid).
    opt: the optimizer of every net.
    nets: the grid (see `grid`).
    data: the dataset as arrays (the same for every net; batch order follows
      each net's seed).
    steps: training steps per net, a multiple of `eval_every`; the train and
      test splits are evaluated every `eval_every` steps (the history).
    batch_size: examples per step per net.
    eval_every: steps between evaluations.
    chunk_steps: steps per compiled call (a multiple of `eval_every`); progress
      is printed and a checkpoint written after each. Default: all steps.
    eval_batch: examples per evaluation chunk.
    devices: the grid axis is sharded over these (default: all devices).
    checkpoint_dir: where Orbax keeps the grid state between chunks; an
      earlier checkpoint of the same grid there is resumed.
    log: progress lines go here (None: silent).
    name: the grid's name in progress lines.
    probes: also measure unit statistics and gradient norms at init and at
      the end (see `_probe_stats`); not for 'invres'.
    fast_compile: compile with FAST_COMPILE (for grids that train for seconds).
  """
  arch = arch.validate()
  nets = list(nets)
  check_nets(arch, nets)
  errors.check(not probes or arch.family != "invres", "probes are not measured for 'invres' nets")
  errors.check(steps >= 1 and eval_every >= 1 and steps % eval_every == 0,
               f"train.steps={steps} must be a positive multiple of train.eval_every={eval_every}")
  chunk_steps = chunk_steps or steps
  errors.check(chunk_steps >= 1 and chunk_steps % eval_every == 0,
               f"train.chunk_steps={chunk_steps} must be a multiple of train.eval_every={eval_every}")
  n_train = data.x_train.shape[0]
  errors.check(1 <= batch_size <= n_train,
               f"train.batch_size={batch_size} must be in 1..{n_train} (the training examples)")
  mesh = make_mesh(devices)
  k = len(nets)
  padded = _pad_nets(nets, mesh.size)
  runner = _Runner(arch, opt, steps, batch_size, eval_every, eval_batch, mesh, fast_compile)
  spec = jax.device_put(specs(arch, padded), runner.grid)
  dev_data = jax.device_put(_device_data(data), runner.rep)
  n_evals = steps // eval_every
  history = {key: np.full((k, n_evals), np.nan, np.float32) for key in HISTORY_KEYS}
  timing = {"compile_s": 0.0, "train_s": 0.0}
  t_start = time.perf_counter()

  state = runner.init(spec)
  probes_init = _fetch(runner.probes(state["params"], spec, dev_data), k) if probes else None
  start, manager = 0, None
  if checkpoint_dir is not None:
    manager = _Checkpoints(checkpoint_dir, {
        "arch": dataclasses.asdict(arch), "opt": dataclasses.asdict(opt),
        "nets": [list(n) for n in nets], "steps": steps, "batch_size": batch_size,
        "eval_every": eval_every, "data": [list(a.shape) for a in data[:4]]})
    host = {"state": _fetch(state, k), "history": history}
    if probes_init is not None:
      host["probes_init"] = probes_init
    restored = manager.restore_latest(host)
    if restored is not None:
      start, host = restored
      history = {key: np.array(v) for key, v in host["history"].items()}
      probes_init = host.get("probes_init")
      state = jax.device_put(_repad(host["state"], len(padded)), runner.grid)
      if log:
        log(f"[{name}] resumed at step {start}/{steps} from {checkpoint_dir}")

  done_evals, step = start // eval_every, start
  try:
    while step < steps:
      n = min(chunk_steps, steps - step)
      windows = n // eval_every
      t0, c0 = time.perf_counter(), runner.compile_s
      state, hist = runner.chunk(windows, state, spec, jnp.int32(step), dev_data)
      hist = np.asarray(jax.device_get(hist))[:k]
      timing["train_s"] += time.perf_counter() - t0 - (runner.compile_s - c0)
      for i, key in enumerate(HISTORY_KEYS):
        history[key][:, done_evals:done_evals + windows] = hist[:, :, i]
      done_evals += windows
      step += n
      if manager is not None:
        tree = {"state": _fetch(state, k), "history": history}
        if probes_init is not None:
          tree["probes_init"] = probes_init
        manager.save(step, tree)
      if log:
        rate = k * (step - start) / max(timing["train_s"], 1e-9)
        log(f"[{name}] step {step}/{steps} | {k} nets | {rate:,.0f} net-steps/s = "
            f"{rate / steps:.2f} nets/s | mean train loss "
            f"{np.nanmean(history['train_loss'][:, done_evals - 1]):.4f} | "
            f"ETA {format_eta((steps - step) * k / max(rate, 1e-9))}")
  finally:
    if manager is not None:
      manager.close()
  probes_final = _fetch(runner.probes(state["params"], spec, dev_data), k) if probes else None
  timing["compile_s"] = runner.compile_s
  timing["total_s"] = time.perf_counter() - t_start
  return GridResult(nets=nets, eval_steps=np.arange(1, n_evals + 1) * eval_every,
                    history=history, probes_init=probes_init, probes_final=probes_final,
                    params=_fetch(state["params"], k), timing=timing)


# ----------------------------------------------------------------------------
# The ordinary way: one net at its own size, a jitted step in a Python loop.


def _spec1(arch: Arch, net: Net) -> dict[str, jax.Array]:
  return {k: jnp.asarray(v[0]) for k, v in specs(arch, [net]).items()}


@functools.lru_cache(maxsize=None)
def _single_fns(arch: Arch, opt: Optim, total_steps: int, batch_size: int, eval_batch: int,
                fast_compile: bool):
  tx = opt.make(total_steps)
  jit = (functools.partial(jax.jit, compiler_options=FAST_COMPILE) if fast_compile else jax.jit)

  def start(spec):
    p = init(arch, spec)
    return p, tx.init(p)

  step = jit(functools.partial(_train_step, arch, tx, batch_size=batch_size), donate_argnums=(0, 1))
  evaluate = jit(lambda p, s, x, y, g: _evaluate(arch, p, s, x, y, g, eval_batch))
  perm = jit(epoch_permutation, static_argnums=2)
  return jit(start), step, evaluate, perm


def train_single(arch: Arch, opt: Optim, net: Net, data: Arrays, *, steps: int,
                 batch_size: int, eval_batch: int = 256, fast_compile: bool = False
                 ) -> dict[str, Any]:
  """Trains one net built at its own size, the way a single run is usually written.

  A jitted train step called from a Python loop; the functions are compiled
  once per distinct (arch, optimizer, steps, batch size) and reused. Returns the
  final params and the final train/test loss and accuracy.
  """
  arch1 = unpadded(arch.validate(), net)
  check_nets(arch1, [net])
  spec = _spec1(arch1, net)
  start, step_fn, evaluate, permutation = _single_fns(arch1, opt, steps, batch_size, eval_batch,
                                                      fast_compile)
  x_tr, y_tr, x_all, y_all, g_all = jax.device_put(_device_data(data))
  params, opt_state = start(spec)
  n = x_tr.shape[0]
  per_epoch = n // batch_size
  loss = jnp.nan
  for s in range(steps):
    epoch, pos = divmod(s, per_epoch)
    if pos == 0:
      perm = permutation(spec["seed"], epoch, n)
    params, opt_state, loss = step_fn(params, opt_state, spec, perm, pos, x_tr, y_tr)
  loss_G, acc_G = evaluate(params, spec, x_all, y_all, g_all)
  return {"params": jax.device_get(params), "batch_loss": float(loss),
          "train_loss": float(loss_G[0]), "train_acc": float(acc_G[0]),
          "test_loss": float(loss_G[1]), "test_acc": float(acc_G[1])}


def crop(arch: Arch, params: Params, net: Net) -> Params:
  """The block of one net's padded `params` that the unpadded net has."""
  small_arch = unpadded(arch, net)
  small = jax.eval_shape(lambda: init(small_arch, _spec1(small_arch, net)))
  return jax.tree.map(lambda a, s: np.asarray(a)[tuple(slice(0, n) for n in s.shape)],
                      params, small)
