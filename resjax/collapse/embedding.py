"""Draws of the embedding T: one key per (seed index, manifold dim), one stream per column."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def embedding_key(seed: int, s: Any, d: Any) -> Array:
  """The key of T for seed index s and manifold dim d: one stream per (s, d)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), s), d)


def draw_embedding(key: Array, n: int, d: int) -> Array:
  """T_NxD with i.i.d. N(0, 1) entries; column j comes from `fold_in(key, j)`.

  Drawing each column from its own key makes a padded draw equal the unpadded
  one: column j of any n is the first n entries of the same stream.
  """
  cols = [jax.random.normal(jax.random.fold_in(key, j), (n,)) for j in range(d)]
  return jnp.stack(cols, -1)


def draw_padded(key: Array, n: Array, d: Array, n_max: int, d_max: int) -> Array:
  """`draw_embedding(key, n, d)` zero-padded to [n_max, d_max] (n, d traced)."""
  t_DxN = jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(key, j), (n_max,)))(
      jnp.arange(d_max))
  keep_NxD = (jnp.arange(n_max)[:, None] < n) & (jnp.arange(d_max)[None, :] < d)
  return jnp.where(keep_NxD, t_DxN.T, 0.0)
