"""Convolution building blocks: the matmul kernel gradient equals XLA's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sst_jax.models import layers
from sst_jax.models import parser as parser_lib


def _lax_conv(x, k, strides, padding, dilation):
  return jax.lax.conv_general_dilated(
      x, k, (strides, strides), [(padding, padding)] * 2,
      rhs_dilation=(dilation, dilation),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@pytest.mark.parametrize('shape,kernel,strides,padding,dilation', [
    ((2, 9, 9, 24), (3, 3, 24, 16), 1, 1, 1),   # in > out
    ((2, 9, 9, 16), (3, 3, 16, 24), 1, 1, 1),   # in < out
    ((2, 11, 10, 16), (3, 3, 16, 8), 2, 1, 1),  # strided, odd sizes
    ((1, 12, 12, 16), (3, 3, 16, 16), 1, 2, 2),  # dilated
    ((2, 13, 13, 16), (5, 5, 16, 8), 2, 0, 1),   # 5x5, no padding
])
def test_matmul_kernel_grad_matches_xla(shape, kernel, strides, padding,
                                        dilation):
  kx, kk, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, shape)
  k = jax.random.normal(kk, kernel) * 0.1
  args = (strides, padding, dilation)
  y_ref = _lax_conv(x, k, *args)
  g = jax.random.normal(kg, y_ref.shape)

  def loss(fn):
    return lambda x, k: jnp.sum(fn(x, k, *args) * g)

  y = layers.conv_matmul_kernel_grad(x, k, *args)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
  dx, dk = jax.grad(loss(layers.conv_matmul_kernel_grad), (0, 1))(x, k)
  dx_ref, dk_ref = jax.grad(loss(_lax_conv), (0, 1))(x, k)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dk, dk_ref, rtol=1e-4, atol=1e-4)
  # The kernel gradient is not trivially small: the comparison has teeth.
  assert float(jnp.abs(dk_ref).max()) > 1.0


def test_parser_kernel_grad_modes_agree(monkeypatch):
  """Same parameters, outputs and gradients with either kernel gradient."""
  # The tiny parser's convolutions are narrower than the threshold above
  # which 'matmul' applies; lower it so every KxK conv but the RGB stem
  # takes the matmul path here.
  monkeypatch.setattr(layers, 'MATMUL_KERNEL_GRAD_MIN_CHANNELS', 8)
  calls = []
  original = layers.conv_matmul_kernel_grad
  monkeypatch.setattr(layers, 'conv_matmul_kernel_grad',
                      lambda *a: calls.append(a[1].shape) or original(*a))
  def make(mode):
    return parser_lib.Parser(num_classes={'a': 3, 'b': 5},
                             backbone='resnet_tiny', width=16,
                             output_stride=16, context_features=24,
                             decoder_features=16, conv_kernel_grad=mode)
  image = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  xla_model, mm_model = make('xla'), make('matmul')
  variables = xla_model.init(jax.random.key(0), image)
  mm_variables = mm_model.init(jax.random.key(0), image)
  assert (jax.tree.map(np.shape, variables) ==
          jax.tree.map(np.shape, mm_variables))
  calls.clear()  # mm_model.init ran the convolutions too.

  def loss(model):
    def fn(params):
      logits, _ = model.apply({**variables, 'params': params}, image,
                              train=True, mutable=['batch_stats'])[0]
      return sum(jnp.mean(v**2) for v in logits.values())
    return fn

  l_ref, g_ref = jax.value_and_grad(loss(xla_model))(variables['params'])
  assert not calls
  l_mm, g_mm = jax.value_and_grad(loss(mm_model))(variables['params'])
  # Every 3x3 conv of the backbone, the PSP bottleneck and the decoder.
  assert len(calls) == 8 + 1 + 2, calls
  np.testing.assert_allclose(l_mm, l_ref, rtol=1e-6)
  flat_ref = jax.tree_util.tree_leaves_with_path(g_ref)
  flat_mm = dict(jax.tree_util.tree_leaves_with_path(g_mm))
  for path, ref in flat_ref:
    np.testing.assert_allclose(flat_mm[path], ref, rtol=1e-3, atol=1e-5,
                               err_msg=jax.tree_util.keystr(path))


def test_kernel_grad_mode_is_validated():
  assert layers.resolve_kernel_grad('auto') == 'matmul'  # tests run on CPU
  assert layers.resolve_kernel_grad('xla') == 'xla'
  with pytest.raises(ValueError, match="'auto', 'xla', 'matmul'.*'fast'"):
    layers.resolve_kernel_grad('fast')
