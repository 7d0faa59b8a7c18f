"""Training losses against plain numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sst_jax import losses
from sst_jax import steps

NAMES = ('a', 'b', 'c')
COUNTS = (3, 5, 4)


def _batch(seed=0, b=6, h=7, w=9):
  rng = np.random.default_rng(seed)
  domain = np.array([0, 1, 2, 1, 0, 2][:b], np.int32)
  logits = {n: rng.normal(size=(b, h, w, c)).astype(np.float32) * 2
            for n, c in zip(NAMES, COUNTS)}
  label = np.stack([rng.integers(0, COUNTS[d], (h, w)) for d in domain])
  label[rng.random(label.shape) < 0.15] = 255
  return logits, label.astype(np.uint8), domain


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_own_head_cross_entropy_matches_per_head_reference():
  logits, label, domain = _batch()
  label[1, 0, :3] = 4  # valid in head b
  label[0, 0, :2] = 4  # out of range for head a: excluded like ignore
  own = steps.own_domain_logits(logits, domain, NAMES)
  got = losses.own_head_cross_entropy(own, label,
                                      jnp.asarray(COUNTS)[domain])
  total, count = 0.0, 0
  for i, d in enumerate(domain):
    logp = _log_softmax(logits[NAMES[d]][i].astype(np.float64))
    for (y, x), l in np.ndenumerate(label[i]):
      if l < COUNTS[d]:
        total -= logp[y, x, l]
        count += 1
  np.testing.assert_allclose(got, total / count, rtol=1e-5)


def test_soft_iou_loss_matches_reference():
  logits, label, domain = _batch(1)
  own = steps.own_domain_logits(logits, domain, NAMES)
  got = losses.soft_iou_loss(own, label, domain, len(NAMES))
  terms = []
  for k, c in enumerate(COUNTS):
    rows = np.flatnonzero(domain == k)
    p = np.exp(_log_softmax(logits[NAMES[k]][rows].astype(np.float64)))
    lab = label[rows]
    valid = lab != 255
    for cls in range(c):
      g = (lab == cls) & valid
      if not g.any():
        continue
      inter = (p[..., cls] * g).sum()
      union = (p[..., cls] * valid).sum() + g.sum() - inter
      terms.append(1 - inter / union)
  np.testing.assert_allclose(got, np.mean(terms), rtol=1e-5)


def test_soft_iou_loss_weighs_rare_classes_like_common_ones():
  # A perfect prediction of the common class and a wrong one of a tiny class
  # must cost half the maximum, whatever the tiny class's pixel count.
  label = np.zeros((1, 8, 8), np.int32)
  label[0, 0, 0] = 1
  logits = np.full((1, 8, 8, 2), -30.0, np.float32)
  logits[..., 0] = 30.0
  got = losses.soft_iou_loss(jnp.asarray(logits), label, np.zeros(1, np.int32),
                             1)
  np.testing.assert_allclose(got, 0.5 * (1 - 63 / 64) + 0.5, rtol=1e-4)


def test_soft_iou_gradient_reaches_only_valid_pixels():
  logits, label, domain = _batch(2)
  own = steps.own_domain_logits(logits, domain, NAMES)
  grad = jax.grad(lambda x: losses.soft_iou_loss(x, label, domain, 3))(own)
  ignored = label == 255
  assert np.all(np.asarray(grad)[ignored] == 0)
  assert np.abs(np.asarray(grad)[~ignored]).sum() > 0


@pytest.mark.parametrize('cotangents', [(1.0, 0.0), (0.0, 1.0), (0.7, 5.0)])
def test_fused_own_head_losses_equal_the_two_losses(cotangents):
  """Values and logit gradients of ``own_head_losses`` against
  ``own_head_cross_entropy`` and ``soft_iou_loss`` differentiated by JAX."""
  rng = np.random.default_rng(0)
  counts = np.asarray([7, 4, 5])                  # the domains' class counts
  domain = jnp.asarray([0, 1, 2, 1])
  num_classes = jnp.asarray(counts)[domain]
  logits = rng.standard_normal((4, 6, 5, 7)).astype(np.float32) * 3
  for b, k in enumerate(np.asarray(domain)):       # padded classes
    logits[b, ..., counts[k]:] = -1e9
  labels = np.stack([rng.integers(0, counts[k], (6, 5))
                     for k in np.asarray(domain)]).astype(np.uint8)
  labels[0, 0] = 255
  labels[3, :2] = 255
  labels[2, 5, 4] = 6        # at or above the head's classes: excluded by CE
  # Domain 2 has a single sample: one of its classes absent from the batch.
  labels[2][labels[2] == 3] = 0

  def reference(z):
    return (losses.own_head_cross_entropy(z, jnp.asarray(labels),
                                          num_classes),
            losses.soft_iou_loss(z, jnp.asarray(labels), domain, 3))

  def fused(z):
    return losses.own_head_losses(z, jnp.asarray(labels), num_classes,
                                  domain, 3)

  want, want_vjp = jax.vjp(reference, jnp.asarray(logits))
  got, got_vjp = jax.vjp(jax.jit(fused), jnp.asarray(logits))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  ct = tuple(jnp.float32(c) for c in cotangents)
  want_grad, = want_vjp(ct)
  got_grad, = got_vjp(ct)
  scale = float(jnp.max(jnp.abs(want_grad)))
  assert scale > 0
  np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4,
                             atol=1e-6 * scale)
  # Ignored pixels get no gradient.
  assert not np.asarray(got_grad)[0, 0].any()
