"""The model's speed paths, and the set of them each backend runs.

Each path computes what a plain building block of :mod:`layers` (or
``jax.nn.relu``) computes, with the same parameters, values and gradients,
in a form that runs faster:

* :func:`conv` / :func:`conv_nhwc`: KxK convolutions whose kernel gradient is
  one matrix product per kernel tap (:func:`conv_matmul_kernel_grad`) instead
  of XLA's transposed convolution, which XLA:CPU runs at a fraction of its
  matmul rate. On the CPU only.
* :func:`relu_as_select`: the ReLU after residual sums written as a select,
  which XLA:CPU's fusion pass does not copy into every later block.
* :class:`FactoredConcatConv`: a KxK convolution over a concatenation with
  upsampled inputs that mixes the small inputs' channels before upsampling
  them: far fewer FLOPs on any backend.

The rule, stated here only: every library constructor
(``parser.ParsingNetwork``, ``resnet.ResNet``, ``schp.AugmentCE2P``,
``parser.make_parser``, ``pretrained.import_schp``, ``recipe.build_models``)
defaults to the plain forms, ``Implementations()``: what each path is tested
and benchmarked against. The entry points (training, evaluation,
prediction, export, ``sst_jax.Parser``, the benchmarks) pass the backend's
speed paths explicitly, ``sst_jax.recipe.speed_paths()``, which calls
:func:`for_backend` once where the model is built. The modules receive them
as arguments (an :class:`Implementations`) and never ask which backend they
are traced for.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sst_jax.models import layers

ModuleDef = Any

# Convolutions reading fewer input channels keep XLA's kernel gradient: with
# few channels the per-tap products are too small to beat it
# (docs/results.md, "JAX against PyTorch on the CPU").
MATMUL_KERNEL_GRAD_MIN_CHANNELS = 64


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
  fraction of the matmul rate (docs/results.md, "JAX against PyTorch on
  the CPU").
  """
  return layers.conv_nhwc(x, kernel, strides, padding, dilation)


def _cmkg_fwd(x, kernel, strides, padding, dilation):
  return layers.conv_nhwc(x, kernel, strides, padding, dilation), (x, kernel)


def _cmkg_bwd(strides, padding, dilation, residuals, g):
  x, kernel = residuals
  _, x_vjp = jax.vjp(
      lambda x: layers.conv_nhwc(x, kernel, strides, padding, dilation), x)
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


def conv_nhwc(x, kernel, strides: int, padding: int, dilation: int):
  """:func:`layers.conv_nhwc`, with :func:`conv_matmul_kernel_grad`'s kernel
  gradient for inputs of at least ``MATMUL_KERNEL_GRAD_MIN_CHANNELS``
  channels."""
  if x.shape[-1] >= MATMUL_KERNEL_GRAD_MIN_CHANNELS:
    return conv_matmul_kernel_grad(x, kernel, strides, padding, dilation)
  return layers.conv_nhwc(x, kernel, strides, padding, dilation)


def conv(features: int, kernel_size=(3, 3), strides=1,
         **kwargs) -> nn.Module:
  """:func:`layers.conv` computing its KxK convolutions with
  :func:`conv_nhwc` (same arguments, parameters and outputs)."""
  return layers.conv(features, kernel_size, strides, convolution=conv_nhwc,
                     **kwargs)


@jax.custom_jvp
def relu_as_select(x: jnp.ndarray) -> jnp.ndarray:
  """``max(x, 0)`` written as a select: what residual sums should go through.

  Same values (NaN propagates) and the same gradient as ``jax.nn.relu`` (0
  at ``x == 0``). The difference is in how XLA:CPU fuses it. A residual
  stream ``x_k = relu(x_{k-1} + bn(conv(x_{k-1})))`` feeds two consumers,
  the next block's convolution and its residual add. With ``max`` the CPU
  fusion pass duplicates the producer into the add's fusion, block after
  block, so the fusion of block ``k`` recomputes the BatchNorm, add and
  ReLU of every earlier block of the stage: quadratic elementwise work in
  the depth of a stage. The select is not duplicated, so each fusion stays
  the size of one block (docs/results.md, "The residual stream, computed
  once").
  """
  return jnp.where(x < 0, jnp.zeros_like(x), x)


relu_as_select.defjvps(
    lambda g, ans, x: jax.lax.select(x > 0, g, jnp.zeros_like(g)))


@functools.lru_cache(maxsize=256)
def _shifted_interp_matrices(out_size: int, in_size: int, taps: int,
                             dilation: int, padding: int,
                             align_corners: bool) -> np.ndarray:
  """``[taps, out, in]``: row ``o`` of tap ``i`` interpolates the upsampled
  pixel ``o + i * dilation - padding`` (zero outside the map)."""
  m = layers.interp_matrix(out_size, in_size, align_corners)
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


class FactoredConcatConv(nn.Module):
  """:class:`layers.ResizeConcatConv` without resizing the small inputs.

  Same fields, parameter (``kernel [k, k, sum(C), features]``, input
  channels in the order of ``inputs``) and output as the literal form, but
  the small inputs' part of the convolution is :func:`conv_of_upsampled`.
  The full-size input ``inputs[full_index]`` goes through ``convolution``.
  """
  features: int
  kernel_size: int = 3
  padding: int = 1
  full_index: int = 0
  align_corners: bool = False
  dtype: Any = jnp.float32
  convolution: Callable = layers.conv_nhwc

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
    y = self.convolution(full, parts[self.full_index], 1, self.padding, 1)
    small = [(x.astype(self.dtype), k) for i, (x, k) in
             enumerate(zip(inputs, parts)) if i != self.full_index]
    if small:
      y = y + conv_of_upsampled(
          [x for x, _ in small], [k for _, k in small], full.shape[1:3],
          padding=self.padding, align_corners=self.align_corners)
    return y


@dataclasses.dataclass(frozen=True)
class Implementations:
  """What a model's convolutions and residual ReLUs run.

  Every choice gives the same parameters and outputs; the defaults are the
  plain forms.

  Attributes:
    conv: builds a convolution, with the arguments of :func:`layers.conv`
      (``layers.conv`` or :func:`conv`).
    concat_conv: the module of a KxK convolution over a concatenation whose
      inputs but ``inputs[full_index]`` are upsampled to that one's size
      (``layers.ResizeConcatConv`` or :class:`FactoredConcatConv`: same
      fields and parameter).
    residual_act: the ReLU after each residual sum of the backbone
      (``jax.nn.relu`` or :func:`relu_as_select`).
  """
  conv: ModuleDef = layers.conv
  concat_conv: ModuleDef = layers.ResizeConcatConv
  residual_act: Callable = jax.nn.relu


CPU = Implementations(
    conv=conv,
    concat_conv=functools.partial(FactoredConcatConv, convolution=conv_nhwc),
    residual_act=relu_as_select)
# GPUs and TPUs keep XLA's kernel gradients.
ACCELERATOR = Implementations(concat_conv=FactoredConcatConv,
                              residual_act=relu_as_select)


def for_backend(backend: str) -> Implementations:
  """The implementations a model built to run on ``backend`` uses.

  Args:
    backend: a JAX platform name as ``jax.default_backend()`` gives it
      (``'cpu'``, ``'gpu'``, ``'tpu'``, ...).

  Returns:
    :data:`CPU` for ``'cpu'``, :data:`ACCELERATOR` otherwise.
  """
  return CPU if backend == 'cpu' else ACCELERATOR
