"""On device (jit-able): normalization and random pad-and-crop with horizontal flips."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from resjax import errors


def preprocess(inputs: jax.Array, mean, std) -> jax.Array:
  """(inputs - mean) / std in float32.

  mean and std each hold one value per channel / feature (last axis) or one
  per input element (a per-pixel mean [H, W, C], or the same flattened to
  H*W*C values, as a checkpoint stores it). Works for uint8 images (mean/std
  in 0..255 units) and float features alike.
  """
  x = jnp.asarray(inputs).astype(jnp.float32)
  return (x - _per_element(mean, x.shape[1:])) / _per_element(std, x.shape[1:])


def _per_element(v, shape: tuple[int, ...]) -> jax.Array:
  """Per-channel values as they are; per-element values in the example's shape."""
  v = jnp.asarray(v, jnp.float32)
  if v.ndim == 1 and len(shape) > 1 and v.size == math.prod(shape) != shape[-1]:
    return v.reshape(shape)
  return v


def crop_and_flip(x_BxHxWxC: jax.Array, dy_B: jax.Array, dx_B: jax.Array,
                  flip_B: jax.Array) -> jax.Array:
  """Shifts each image by (dy, dx) with zero fill, then mirrors it if flip.

  out[b, i, j] = x[b, i + dy[b], j' + dx[b]] with j' = W-1-j when flip[b]
  (else j), and 0 where that falls outside the image: the H x W window at
  offset (pad + dy, pad + dx) of the image zero-padded by pad, then flipped.
  """
  _, h, w, _ = x_BxHxWxC.shape
  rows_BxH = jnp.arange(h)[None, :] + dy_B[:, None]
  j = jnp.arange(w)[None, :]
  cols_BxW = jnp.where(flip_B[:, None], w - 1 - j, j) + dx_B[:, None]

  # A gather per example under vmap keeps the batch axis a gather batch
  # dimension, so a batch sharded over devices is gathered locally.
  def one(img_HxWxC, rows_H, cols_W):
    inside_HxW = (((rows_H >= 0) & (rows_H < h))[:, None]
                  & ((cols_W >= 0) & (cols_W < w))[None, :])
    out = img_HxWxC[jnp.clip(rows_H, 0, h - 1)[:, None], jnp.clip(cols_W, 0, w - 1)[None, :]]
    return jnp.where(inside_HxW[..., None], out, jnp.zeros((), out.dtype))

  return jax.vmap(one)(x_BxHxWxC, rows_BxH, cols_BxW)


def augment(rng: jax.Array, x_BxHxWxC: jax.Array, pad: int = 4, flip: bool = True) -> jax.Array:
  """Random crop of each image zero-padded by `pad`, then a random h-flip.

  Offsets are uniform in [-pad, pad] per axis and example; each example is
  flipped with probability 1/2 when `flip`. Same rng, same output. `pad` and
  `flip` are static. Zero fill means the mean pixel when x is already
  normalized by `preprocess` (as in He et al.), black when x is raw uint8.
  """
  errors.check(pad >= 0, f"augment pad={pad} must be >= 0")
  b = x_BxHxWxC.shape[0]
  rng_y, rng_x, rng_flip = jax.random.split(rng, 3)
  dy_B = jax.random.randint(rng_y, (b,), -pad, pad + 1)
  dx_B = jax.random.randint(rng_x, (b,), -pad, pad + 1)
  if flip:
    flip_B = jax.random.bernoulli(rng_flip, 0.5, (b,))
  else:
    flip_B = jnp.zeros((b,), bool)
  return crop_and_flip(x_BxHxWxC, dy_B, dx_B, flip_B)
