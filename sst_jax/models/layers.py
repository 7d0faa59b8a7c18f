"""Small building blocks shared by the backbone, the parser and SST modules."""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sst_jax import interpolation


@functools.lru_cache(maxsize=256)
def interp_matrix(out_size: int, in_size: int,
                  align_corners: bool) -> np.ndarray:
  """``[out, in]`` linear-interpolation weights (PyTorch conventions).

  ``resize_bilinear`` along one axis is this matrix applied to that axis
  (cached: do not modify the returned array).
  """
  if in_size == 1:
    return np.ones((out_size, 1), np.float32)
  if align_corners:
    src = np.arange(out_size) * ((in_size - 1) / max(out_size - 1, 1))
  else:
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
  return interpolation.linear_weights(src, in_size)


def _phase_offsets(factor: int) -> list[float]:
  """Where output ``factor * i + r`` samples, relative to input ``i``."""
  return [(r + 0.5) / factor - 0.5 for r in range(factor)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _upsample_axis(x: jnp.ndarray, axis: int, factor: int) -> jnp.ndarray:
  """Integer-factor linear upsampling along ``axis`` (align_corners=False).

  Output ``factor * i + r`` lies between inputs ``i - 1, i`` or ``i, i + 1``
  with a weight that depends only on the phase ``r``; with edge padding this
  equals PyTorch's clamped bilinear interpolation. Costs two multiply-adds
  per output element (a dense interpolation matrix costs ``in_size``).
  The gradient is computed directly at the input's size
  (``_upsample_axis_grad``) rather than by differentiating the slices,
  which would write three zero-padded input-sized arrays per phase.
  """
  n = x.shape[axis]
  pad = [(0, 0)] * x.ndim
  pad[axis] = (1, 1)
  xp = jnp.pad(x, pad, mode='edge')
  take = lambda start: jax.lax.slice_in_dim(xp, start, start + n, axis=axis)
  prev, cur, nxt = take(0), take(1), take(2)
  phases = []
  for offset in _phase_offsets(factor):
    if offset < 0:
      phases.append(cur + (prev - cur) * (-offset))
    else:
      phases.append(cur + (nxt - cur) * offset)
  out = jnp.stack(phases, axis=axis + 1)
  shape = list(x.shape)
  shape[axis] = n * factor
  return out.reshape(shape)


def _upsample_axis_grad(g: jnp.ndarray, axis: int,
                        factor: int) -> jnp.ndarray:
  """The transpose of ``_upsample_axis``: output gradient -> input gradient.

  Input ``i`` receives, from the outputs of its own cell, ``1 - |offset|``
  of each phase; from the cell after it, ``|offset|`` of the phases that
  look back; from the cell before it, ``offset`` of those that look ahead.
  The clamped edges keep the share that would fall outside.
  """
  if factor == 1:
    return g
  n = g.shape[axis] // factor
  g = g.reshape(g.shape[:axis] + (n, factor) + g.shape[axis + 1:])
  phase = lambda r: jax.lax.index_in_dim(g, r, axis=axis + 1, keepdims=False)
  own, back, ahead = 0.0, 0.0, 0.0
  for r, offset in enumerate(_phase_offsets(factor)):
    gr = phase(r)
    own = own + gr * (1.0 - abs(offset))
    if offset < 0:
      back = back + gr * (-offset)
    elif offset > 0:
      ahead = ahead + gr * offset
  edge = lambda a, i: jax.lax.slice_in_dim(a, i, i + 1, axis=axis)
  # Input i - 1 gets back[i]; input i + 1 gets ahead[i]; the edge padding
  # folds back[0] into input 0 and ahead[n - 1] into input n - 1.
  back = jnp.concatenate(
      [edge(back, 0) + edge(back, 1),
       jax.lax.slice_in_dim(back, 2, n, axis=axis),
       jnp.zeros_like(edge(back, 0))] if n > 1 else [back], axis=axis)
  ahead = jnp.concatenate(
      [jnp.zeros_like(edge(ahead, 0)),
       jax.lax.slice_in_dim(ahead, 0, n - 2, axis=axis),
       edge(ahead, n - 2) + edge(ahead, n - 1)] if n > 1 else [ahead],
      axis=axis)
  return own + back + ahead


_upsample_axis.defvjp(
    lambda x, axis, factor: (_upsample_axis(x, axis, factor), None),
    lambda axis, factor, _, g: (_upsample_axis_grad(g, axis, factor),))


def resize_bilinear(x: jnp.ndarray, size: tuple[int, int],
                    align_corners: bool = False) -> jnp.ndarray:
  """Bilinear resize of ``[N, H, W, C]``.

  Matches ``torch.nn.functional.interpolate(mode='bilinear')`` for both
  ``align_corners`` settings (no antialiasing). Integer upsampling factors
  (the parser's stride-4 logits to label size) use a two-tap phase
  decomposition; other sizes use two small dense matrix products, which are
  faster than gathers on every backend and have a cheap transpose for the
  backward pass.
  """
  h, w = x.shape[1:3]
  if (h, w) == tuple(size):
    return x
  if (not align_corners and size[0] % h == 0 and size[1] % w == 0 and
      size[0] > h and size[1] > w):
    x = _upsample_axis(x, 1, size[0] // h)
    return _upsample_axis(x, 2, size[1] // w)
  mh = jnp.asarray(interp_matrix(size[0], h, align_corners), x.dtype)
  mw = jnp.asarray(interp_matrix(size[1], w, align_corners), x.dtype)
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
  if h % bh == 0 and w % bw == 0:
    # Whole cells: a reshape-mean, one add per input element.
    n, c = x.shape[0], x.shape[3]
    return x.reshape(n, bh, h // bh, bw, w // bw, c).mean(axis=(2, 4))
  mh = jnp.asarray(_adaptive_pool_matrix(bh, h), x.dtype)
  mw = jnp.asarray(_adaptive_pool_matrix(bw, w), x.dtype)
  return jnp.einsum('oh,nhwc,pw->nopc', mh, x, mw)


class Conv1x1(nn.Module):
  """A 1x1 convolution computed as a matrix product.

  Same parameters as ``nn.Conv(features, (1, 1))`` (``kernel`` of shape
  ``[1, 1, in, out]``, same initializer), so checkpoints and weight import
  are unaffected. XLA:CPU computes the gradients of 1x1 convolutions several
  times slower than the equivalent matmul; as an einsum they cost what a
  matmul costs on every backend.
  """
  features: int
  strides: int = 1
  use_bias: bool = False
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', self.kernel_init,
                        (1, 1, x.shape[-1], self.features))
    if self.strides > 1:
      x = x[:, ::self.strides, ::self.strides]
    y = jnp.einsum('nhwc,cd->nhwd', x.astype(self.dtype),
                   kernel[0, 0].astype(self.dtype))
    if self.use_bias:
      y = add_bias(y, self.param('bias', nn.initializers.zeros,
                                 (self.features,)))
    return y


def add_bias(y: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
  """``y + bias`` added in float32, returned in ``y``'s dtype.

  The bias's gradient is the output gradient summed over every pixel of the
  batch: added in float32, that sum is float32 too, where in bfloat16 (8
  significant bits) the terms of a sum over 10^5 pixels would be lost.
  """
  return (y.astype(jnp.float32) + bias.astype(jnp.float32)).astype(y.dtype)


def conv_nhwc(x, kernel, strides: int, padding: int, dilation: int):
  """An NHWC/HWIO convolution with symmetric integer padding (XLA's)."""
  return jax.lax.conv_general_dilated(
      x, kernel, (strides, strides), [(padding, padding)] * 2,
      rhs_dilation=(dilation, dilation),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class Conv(nn.Module):
  """A KxK convolution, ``nn.Conv``-compatible.

  Same parameters as ``nn.Conv(features, kernel_size)`` with symmetric
  integer padding (``kernel [kh, kw, in, out]``, optional ``bias``, same
  initializers), so checkpoints and weight import do not depend on
  ``convolution``: the function ``(x, kernel, strides, padding, dilation)``
  that computes it, :func:`conv_nhwc` or one with another gradient
  (``sst_jax.models.fast_paths``).
  """
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: int = 1
  padding: int = 0
  kernel_dilation: int = 1
  use_bias: bool = False
  dtype: Any = jnp.float32
  convolution: Callable = conv_nhwc

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (*self.kernel_size, x.shape[-1], self.features))
    y = self.convolution(x.astype(self.dtype), kernel.astype(self.dtype),
                         self.strides, self.padding, self.kernel_dilation)
    if self.use_bias:
      y = add_bias(y, self.param('bias', nn.initializers.zeros,
                                 (self.features,)))
    return y


class ResizeConcatConv(nn.Module):
  """A KxK convolution of ``concat(inputs)``, the small inputs resized first.

  Every input but ``inputs[full_index]`` is bilinearly resized to that
  one's size, the inputs are concatenated in order and convolved (stride 1,
  ``padding`` on each side) with one ``kernel [k, k, sum(C), features]``:
  the literal form of ``fast_paths.FactoredConcatConv``, which computes the
  same without resizing.
  """
  features: int
  kernel_size: int = 3
  padding: int = 1
  full_index: int = 0
  align_corners: bool = False
  dtype: Any = jnp.float32
  convolution: Callable = conv_nhwc

  @nn.compact
  def __call__(self, inputs):
    size = inputs[self.full_index].shape[1:3]
    x = jnp.concatenate(
        [resize_bilinear(x, size, self.align_corners) for x in inputs],
        axis=-1)
    kernel = self.param(
        'kernel', nn.initializers.lecun_normal(),
        (self.kernel_size, self.kernel_size, x.shape[-1], self.features))
    return self.convolution(x.astype(self.dtype), kernel.astype(self.dtype),
                            1, self.padding, 1)


def conv(features: int, kernel_size=(3, 3), strides=1, *, padding: int = 0,
         kernel_dilation: int = 1, use_bias: bool = False, dtype=jnp.float32,
         convolution: Callable = conv_nhwc,
         name: str | None = None) -> nn.Module:
  """:class:`Conv` (symmetric integer padding), or :class:`Conv1x1` for 1x1.

  ``convolution`` computes the KxK convolutions (:class:`Conv`).
  """
  strides = strides[0] if isinstance(strides, (tuple, list)) else strides
  if tuple(kernel_size) == (1, 1):
    return Conv1x1(features, strides, use_bias, dtype, name=name)
  return Conv(features, tuple(kernel_size), strides, padding, kernel_dilation,
              use_bias, dtype, convolution, name=name)
