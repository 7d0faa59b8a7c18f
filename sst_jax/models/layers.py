"""Small building blocks shared by the backbone, the parser and SST modules."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=256)
def _interp_matrix(out_size: int, in_size: int,
                   align_corners: bool) -> np.ndarray:
  """``[out, in]`` linear-interpolation weights (PyTorch conventions)."""
  m = np.zeros((out_size, in_size), np.float32)
  if in_size == 1:
    m[:, 0] = 1.0
    return m
  if align_corners:
    scale = (in_size - 1) / max(out_size - 1, 1)
    src = np.arange(out_size) * scale
  else:
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = (src - lo).astype(np.float32)
  m[np.arange(out_size), lo] += 1.0 - frac
  m[np.arange(out_size), hi] += frac
  return m


def resize_bilinear(x: jnp.ndarray, size: tuple[int, int],
                    align_corners: bool = False) -> jnp.ndarray:
  """Bilinear resize of ``[N, H, W, C]`` as two small matrix products.

  Matches ``torch.nn.functional.interpolate(mode='bilinear')`` for both
  ``align_corners`` settings (no antialiasing). Two einsums lower to dense
  matmuls, which are faster than gathers on every backend and have a cheap
  transpose for the backward pass.
  """
  h, w = x.shape[1:3]
  if (h, w) == tuple(size):
    return x
  mh = jnp.asarray(_interp_matrix(size[0], h, align_corners), x.dtype)
  mw = jnp.asarray(_interp_matrix(size[1], w, align_corners), x.dtype)
  x = jnp.einsum('oh,nhwc->nowc', mh, x)
  return jnp.einsum('pw,nowc->nopc', mw, x)


@functools.lru_cache(maxsize=256)
def _adaptive_pool_matrix(out_size: int, in_size: int) -> np.ndarray:
  m = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x: jnp.ndarray, bins) -> jnp.ndarray:
  """``torch.nn.AdaptiveAvgPool2d(bins)`` on ``[N, H, W, C]``.

  ``bins`` is an int or an ``(out_h, out_w)`` pair. Also used as area
  interpolation when shrinking soft masks.
  """
  h, w = x.shape[1:3]
  bh, bw = (bins, bins) if isinstance(bins, int) else bins
  mh = jnp.asarray(_adaptive_pool_matrix(bh, h), x.dtype)
  mw = jnp.asarray(_adaptive_pool_matrix(bw, w), x.dtype)
  return jnp.einsum('oh,nhwc,pw->nopc', mh, x, mw)
