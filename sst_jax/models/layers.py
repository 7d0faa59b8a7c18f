"""Small building blocks shared by the backbone, the parser and SST modules."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=256)
def interp_matrix(out_size: int, in_size: int,
                  align_corners: bool) -> np.ndarray:
  """``[out, in]`` linear-interpolation weights (PyTorch conventions).

  ``resize_bilinear`` along one axis is this matrix applied to that axis
  (cached: do not modify the returned array).
  """
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


@jax.custom_jvp
def relu(x: jnp.ndarray) -> jnp.ndarray:
  """``max(x, 0)`` written as a select: what residual sums should go through.

  Same values (NaN propagates) and the same gradient as ``jax.nn.relu`` (0
  at ``x == 0``). The difference is in how XLA:CPU fuses it. A residual
  stream ``x_k = relu(x_{k-1} + bn(conv(x_{k-1})))`` feeds two consumers,
  the next block's convolution and its residual add. With ``max`` the CPU
  fusion pass duplicates the producer into the add's fusion, block after
  block, so the fusion of block ``k`` recomputes the BatchNorm, add and
  ReLU of every earlier block of the stage: quadratic elementwise work
  (ResNet-101's layer3 has 23 blocks; its last fusion holds 361
  instructions). The select is not duplicated, each fusion stays the size
  of one block: the ResNet-101 parser's forward pass takes 0.87x and its
  train step 0.92x the time (257x257, ``docs/results.md``).
  """
  return jnp.where(x < 0, jnp.zeros_like(x), x)


relu.defjvps(lambda g, ans, x: jax.lax.select(x > 0, g, jnp.zeros_like(g)))

RESIDUAL_RELUS = {'select': relu, 'max': jax.nn.relu}


def residual_relu(name: str):
  """The ReLU after residual sums, by name.

  ``'select'`` is :func:`relu` (the default), ``'max'`` is ``jax.nn.relu``:
  same values and gradients, different XLA fusion.
  """
  if name not in RESIDUAL_RELUS:
    raise ValueError(f'residual_relu must be one of {tuple(RESIDUAL_RELUS)}, '
                     f'got {name!r}')
  return RESIDUAL_RELUS[name]


KERNEL_GRAD_MODES = ('auto', 'xla', 'matmul')
MATMUL_KERNEL_GRAD_MIN_CHANNELS = 64


def resolve_kernel_grad(mode: str) -> str:
  """``'auto'`` is ``'matmul'`` on the CPU backend and ``'xla'`` elsewhere."""
  if mode not in KERNEL_GRAD_MODES:
    raise ValueError(f'conv_kernel_grad must be one of {KERNEL_GRAD_MODES}, '
                     f'got {mode!r}')
  if mode == 'auto':
    return 'matmul' if jax.default_backend() == 'cpu' else 'xla'
  return mode


def _conv_nhwc(x, kernel, strides: int, padding: int, dilation: int):
  return jax.lax.conv_general_dilated(
      x, kernel, (strides, strides), [(padding, padding)] * 2,
      rhs_dilation=(dilation, dilation),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _tap_inputs(x, kernel_hw, strides: int, padding: int, dilation: int,
                out_hw) -> list[jnp.ndarray]:
  """For each kernel tap ``(i, j)`` (row-major), the ``[N, oh, ow, C]``
  input pixels that tap multiplies."""
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  oh, ow = out_hw
  taps = []
  for i in range(kernel_hw[0]):
    for j in range(kernel_hw[1]):
      start = (0, i * dilation, j * dilation, 0)
      limit = (xp.shape[0], i * dilation + (oh - 1) * strides + 1,
               j * dilation + (ow - 1) * strides + 1, xp.shape[3])
      taps.append(jax.lax.slice(xp, start, limit, (1, strides, strides, 1)))
  return taps


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_matmul_kernel_grad(x, kernel, strides: int, padding: int,
                            dilation: int):
  """An NHWC/HWIO convolution whose kernel gradient is a matrix product per tap.

  The forward pass and the input gradient are XLA's convolutions. The kernel
  gradient ``dK[i, j] = sum_{n,h,w} x_tap(i,j)[n,h,w,:]^T g[n,h,w,:]`` is
  computed as one ``[C, N*H*W] @ [N*H*W, O]`` product per tap instead of
  XLA's transposed convolution, whose window is the whole feature map and
  whose "batch" is the channel count: on XLA:CPU that form runs at a
  fraction of the matmul rate (docs/results.md, "CPU train step").
  """
  return _conv_nhwc(x, kernel, strides, padding, dilation)


def _cmkg_fwd(x, kernel, strides, padding, dilation):
  return _conv_nhwc(x, kernel, strides, padding, dilation), (x, kernel)


def _cmkg_bwd(strides, padding, dilation, residuals, g):
  x, kernel = residuals
  _, x_vjp = jax.vjp(
      lambda x: _conv_nhwc(x, kernel, strides, padding, dilation), x)
  (dx,) = x_vjp(g)
  taps = _tap_inputs(x, kernel.shape[:2], strides, padding, dilation,
                     g.shape[1:3])
  if kernel.shape[2] > kernel.shape[3]:
    # Contract with the narrower operand on the left: XLA:CPU transposes
    # the left operand, so this moves fewer bytes.
    dk = [jnp.einsum('nhwo,nhwc->oc', g, t).T for t in taps]
  else:
    dk = [jnp.einsum('nhwc,nhwo->co', t, g) for t in taps]
  dk = jnp.stack(dk).reshape(kernel.shape).astype(kernel.dtype)
  return dx, dk


conv_matmul_kernel_grad.defvjp(_cmkg_fwd, _cmkg_bwd)


def _conv(x, kernel, strides: int, padding: int, dilation: int,
          kernel_grad: str):
  if (resolve_kernel_grad(kernel_grad) == 'matmul' and
      x.shape[-1] >= MATMUL_KERNEL_GRAD_MIN_CHANNELS):
    return conv_matmul_kernel_grad(x, kernel, strides, padding, dilation)
  return _conv_nhwc(x, kernel, strides, padding, dilation)


class Conv(nn.Module):
  """A KxK convolution, ``nn.Conv``-compatible, with a choice of gradient.

  Same parameters as ``nn.Conv(features, kernel_size)`` with symmetric
  integer padding (``kernel [kh, kw, in, out]``, optional ``bias``, same
  initializers), so checkpoints and weight import do not depend on
  ``kernel_grad``. ``kernel_grad='matmul'`` computes the kernel gradient
  with :func:`conv_matmul_kernel_grad`; the forward pass and the input
  gradient are the same in both modes. Convolutions reading fewer than
  ``MATMUL_KERNEL_GRAD_MIN_CHANNELS`` channels keep XLA's gradient: with few
  channels the per-tap products are too small to beat it (measured in
  docs/results.md).
  """
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: int = 1
  padding: int = 0
  kernel_dilation: int = 1
  use_bias: bool = False
  dtype: Any = jnp.float32
  kernel_grad: str = 'xla'

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (*self.kernel_size, x.shape[-1], self.features))
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    y = _conv(x, kernel, self.strides, self.padding, self.kernel_dilation,
              self.kernel_grad)
    if self.use_bias:
      y = add_bias(y, self.param('bias', nn.initializers.zeros,
                                 (self.features,)))
    return y


@functools.lru_cache(maxsize=256)
def _shifted_interp_matrices(out_size: int, in_size: int, taps: int,
                             dilation: int, padding: int,
                             align_corners: bool) -> np.ndarray:
  """``[taps, out, in]``: row ``o`` of tap ``i`` interpolates the upsampled
  pixel ``o + i * dilation - padding`` (zero outside the map)."""
  m = interp_matrix(out_size, in_size, align_corners)
  a = np.zeros((taps, out_size, in_size), np.float32)
  for i in range(taps):
    src = np.arange(out_size) + i * dilation - padding
    inside = (src >= 0) & (src < out_size)
    a[i, inside] = m[src[inside]]
  return a


def conv_of_upsampled(branches, kernels, size: tuple[int, int], *,
                      padding: int, dilation: int = 1,
                      align_corners: bool = False) -> jnp.ndarray:
  """``sum_b conv(resize_bilinear(branches[b], size), kernels[b])``, cheaply.

  Bilinear upsampling and a stride-1 convolution are both linear, so each
  branch's channels are mixed at its own small size first (``y @ K[i, j]``
  for every tap) and only then interpolated, with the tap's shift and zero
  padding folded into the interpolation matrices. A PSP bottleneck reads
  pooled branches of 1x1 to 6x6 pixels: this costs ``O(H * W * O * taps *
  sum(bins))`` instead of ``O(H * W * O * taps * C)``.

  Args:
    branches: ``[N, h_b, w_b, C_b]`` arrays.
    kernels: matching ``[kh, kw, C_b, O]`` kernels (same ``kh, kw``).
    size: the upsampled ``(H, W)``, also the output size.
    padding, dilation: of the convolution (stride 1).
    align_corners: of the bilinear upsampling.

  Returns:
    ``[N, H, W, O]``.
  """
  rows, cols = [], []
  for y, k in zip(branches, kernels):
    kh, kw = k.shape[:2]
    z = jnp.einsum('npqc,ijco->nijpqo', y, k.astype(y.dtype))
    aw = _shifted_interp_matrices(size[1], y.shape[2], kw, dilation, padding,
                                  align_corners)
    cols.append(jnp.einsum('jwq,nijpqo->nipwo', jnp.asarray(aw, y.dtype), z))
    rows.append(_shifted_interp_matrices(size[0], y.shape[1], kh, dilation,
                                         padding, align_corners))
  t = jnp.concatenate(cols, axis=2)
  ah = jnp.asarray(np.concatenate(rows, axis=2), t.dtype)
  return jnp.einsum('ihp,nipwo->nhwo', ah, t)


class UpsampledConcatConv(nn.Module):
  """A KxK convolution of ``concat(inputs)`` where some inputs are upsampled.

  Same parameter (``kernel [kh, kw, sum(C), O]``, input channels in the
  order of ``inputs``) and same output as ``Conv`` applied to the
  concatenation of ``inputs`` with every small input bilinearly resized to
  the size of the full-size one, but the small inputs are never resized:
  their part of the convolution is :func:`conv_of_upsampled`. The full-size
  input goes through :class:`Conv`'s path (and its ``kernel_grad``).

  ``inputs`` holds exactly one array whose spatial size is the output size
  (``full_index`` says which); the others are the low-resolution branches.
  """
  features: int
  kernel_size: int = 3
  padding: int = 1
  full_index: int = 0
  align_corners: bool = False
  dtype: Any = jnp.float32
  kernel_grad: str = 'xla'

  @nn.compact
  def __call__(self, inputs):
    channels = [x.shape[-1] for x in inputs]
    kernel = self.param(
        'kernel', nn.initializers.lecun_normal(),
        (self.kernel_size, self.kernel_size, sum(channels), self.features))
    kernel = kernel.astype(self.dtype)
    bounds = np.cumsum([0] + channels)
    parts = [kernel[:, :, bounds[i]:bounds[i + 1]] for i in range(len(inputs))]
    full = inputs[self.full_index].astype(self.dtype)
    y = _conv(full, parts[self.full_index], 1, self.padding, 1,
              self.kernel_grad)
    small = [(x.astype(self.dtype), k) for i, (x, k) in
             enumerate(zip(inputs, parts)) if i != self.full_index]
    if small:
      y = y + conv_of_upsampled(
          [x for x, _ in small], [k for _, k in small], full.shape[1:3],
          padding=self.padding, align_corners=self.align_corners)
    return y


def conv(features: int, kernel_size=(3, 3), strides=1, *, padding: int = 0,
         kernel_dilation: int = 1, use_bias: bool = False, dtype=jnp.float32,
         kernel_grad: str = 'xla', name: str | None = None) -> nn.Module:
  """:class:`Conv` (symmetric integer padding), or :class:`Conv1x1` for 1x1."""
  strides = strides[0] if isinstance(strides, (tuple, list)) else strides
  if tuple(kernel_size) == (1, 1):
    return Conv1x1(features, strides, use_bias, dtype, name=name)
  return Conv(features, tuple(kernel_size), strides, padding, kernel_dilation,
              use_bias, dtype, kernel_grad, name=name)
