"""Small dense linear algebra for the sweep, with explicit cut-offs (float32, padded shapes).

Singular values below PINV_RTOL of the largest count as zero, and eigenvalues
of a Gram matrix below GRAM_RTOL of the largest; both are explicit, so a
pseudo-inverse never depends on the padded size. Gram-Schmidt drops a row
that keeps less than GS_RTOL of its norm.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

PINV_RTOL = 1e-5
GRAM_RTOL = 1e-6
GS_RTOL = 1e-6
HIGHEST = jax.lax.Precision.HIGHEST


def mm(a: Array, b: Array) -> Array:
  """a @ b at full float32 precision."""
  return jnp.matmul(a, b, precision=HIGHEST)


def small(a_IxK: Array, b_KxE: Array) -> Array:
  """Batched a @ b for a small inner size K, as one fused reduction (no tiny dots)."""
  return jnp.sum(a_IxK[..., :, :, None] * b_KxE[..., None, :, :], axis=-2)


def dot(a: Array, b: Array) -> Array:
  """Inner products over the last axis."""
  return jnp.sum(a * b, -1)


def pinv(t_NxD: Array) -> Array:
  """T^+ [D, N] from the SVD of T, singular values < PINV_RTOL * largest dropped.

  Zero-padded rows or columns add exact zero singular values, which are
  dropped, so this is the zero-padded pseudo-inverse of the unpadded T. The
  SVD (not the normal equations) keeps float32 accurate for ill-conditioned T.
  """
  u_NxD, s_D, vt_DxD = jnp.linalg.svd(t_NxD, full_matrices=False)
  keep_D = s_D > PINV_RTOL * s_D[..., :1]
  inv_D = jnp.where(keep_D, 1.0 / jnp.where(keep_D, s_D, 1.0), 0.0)
  return small(jnp.swapaxes(vt_DxD, -1, -2) * inv_D[..., None, :], jnp.swapaxes(u_NxD, -1, -2))


def psd_pinv(g_DxD: Array) -> Array:
  """Pseudo-inverse of a symmetric PSD Gram matrix, eigenvalues < GRAM_RTOL * max dropped."""
  w_D, v_DxD = jnp.linalg.eigh(g_DxD)
  keep_D = w_D > GRAM_RTOL * jnp.max(w_D, axis=-1, keepdims=True)
  inv_D = jnp.where(keep_D, 1.0 / jnp.where(keep_D, w_D, 1.0), 0.0)
  return small(v_DxD * inv_D[..., None, :], jnp.swapaxes(v_DxD, -1, -2))
