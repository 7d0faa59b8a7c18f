"""Building blocks: bilinear resizing against PyTorch's weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sst_jax.models import layers


def _torch_bilinear_weights(out_size, in_size):
  """PyTorch's ``interpolate(mode='bilinear', align_corners=False)`` taps."""
  m = np.zeros((out_size, in_size))
  for i in range(out_size):
    src = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
    lo = min(int(np.floor(src)), in_size - 1)
    hi = min(lo + 1, in_size - 1)
    m[i, lo] += 1.0 - (src - lo)
    m[i, hi] += src - lo
  return m


@pytest.mark.parametrize('in_hw,out_hw', [
    ((7, 4), (28, 16)),    # the parser's stride-4 logits to the crop, x4
    ((1, 2), (3, 6)),      # one-pixel axis, x3
    ((5, 3), (10, 24)),    # x2 and x8
    ((6, 5), (9, 7)),      # not integer factors: the matrix path
])
def test_resize_bilinear_values_and_gradient_match_pytorch_weights(in_hw,
                                                                   out_hw):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2,) + in_hw + (3,)).astype(np.float32)
  g = rng.standard_normal((2,) + out_hw + (3,)).astype(np.float32)
  mh = _torch_bilinear_weights(out_hw[0], in_hw[0])
  mw = _torch_bilinear_weights(out_hw[1], in_hw[1])
  want = np.einsum('oh,nhwc,pw->nopc', mh, x.astype(np.float64), mw)
  # The gradient of a linear map is its transpose applied to the cotangent.
  want_grad = np.einsum('oh,nopc,pw->nhwc', mh, g.astype(np.float64), mw)
  out, vjp = jax.vjp(lambda v: layers.resize_bilinear(v, out_hw), x)
  grad, = vjp(jnp.asarray(g))
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-5,
                             atol=1e-5)
