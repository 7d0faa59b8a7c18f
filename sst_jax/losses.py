"""Segmentation losses. Pure jnp functions, no model or config knowledge."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sst_jax.domains import IGNORE_ID


def pixel_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray
                        ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Per-pixel CE and a validity mask.

  Args:
    logits: ``[..., C]`` float logits.
    labels: ``[...]`` int labels; ``IGNORE_ID`` and any value >= C are
      excluded.

  Returns:
    ``(ce, valid)``: float ``[...]`` (0 where invalid) and bool ``[...]``.
  """
  num_classes = logits.shape[-1]
  valid = (labels != IGNORE_ID) & (labels >= 0) & (labels < num_classes)
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  ce = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  return jnp.where(valid, ce, 0.0), valid


def own_head_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray,
                           num_classes: jnp.ndarray) -> jnp.ndarray:
  """Mean CE of every sample against its own domain's head.

  Labels of a sample are only meaningful in its own label domain, so each
  sample is scored only by its own head. The result is the mean over all
  valid pixels of the global batch, so a domain's share of the gradient
  follows its share of the batch.

  Args:
    logits: ``[B, H, W, C]`` each sample's own-head logits at label
      resolution, the class axis padded to the largest head with large
      negative values (``steps.own_domain_logits``).
    labels: ``[B, H, W]`` int labels.
    num_classes: ``[B]`` class count of each sample's head; labels at or
      above it are excluded like ``IGNORE_ID``.

  Returns:
    Scalar mean CE.
  """
  labels = labels.astype(jnp.int32)
  in_head = labels < num_classes[:, None, None]
  ce, valid = pixel_cross_entropy(logits,
                                  jnp.where(in_head, labels, IGNORE_ID))
  return jnp.sum(ce) / jnp.maximum(jnp.sum(valid), 1)


def edge_targets(labels: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Binary part-boundary map from a label map (CE2P edge supervision).

  A pixel is an edge pixel when one of its 4 neighbours has a different
  label; ignore pixels are excluded.

  Returns:
    ``(edges, valid)`` int32 and bool ``[B, H, W]``.
  """
  pad = jnp.pad(labels, ((0, 0), (1, 1), (1, 1)), mode='edge')
  h, w = labels.shape[1:]
  edge = jnp.zeros(labels.shape, bool)
  for dy, dx in ((-1, 0), (0, -1), (0, 1), (1, 0)):
    nb = pad[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
    edge |= (nb != labels) & (nb != IGNORE_ID)
  valid = labels != IGNORE_ID
  return edge.astype(jnp.int32), valid


def balanced_edge_loss(edge_logits: jnp.ndarray,
                       labels: jnp.ndarray) -> jnp.ndarray:
  """Class-balanced 2-way CE on the CE2P edge branch (logits at label res)."""
  edges, valid = edge_targets(labels)
  ce, _ = pixel_cross_entropy(edge_logits, jnp.where(valid, edges, IGNORE_ID))
  pos = jnp.sum(valid & (edges == 1))
  neg = jnp.sum(valid & (edges == 0))
  n = jnp.maximum(pos + neg, 1)
  weight = jnp.where(edges == 1, neg / n, pos / n) * valid
  return jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1e-6)


def soft_iou_loss(logits: jnp.ndarray, labels: jnp.ndarray,
                  domain: jnp.ndarray, num_domains: int) -> jnp.ndarray:
  """``1 - soft IoU``, averaged over the (domain, class) pairs in the batch.

  Cross-entropy weighs a class by its pixel count, so thin and rare classes
  (belt, sunglasses, glove) are learned last although mIoU counts every class
  the same. This loss gives each class present in the global batch the same
  weight: for domain ``k`` and class ``c`` over the pixels of domain-``k``
  samples, ``I = sum p_c g_c`` and ``U = sum p_c + sum g_c - I`` with softmax
  probabilities ``p`` and one-hot labels ``g``.

  Args:
    logits: ``[B, H, W, C]`` each sample's own-head logits at label
      resolution; padding classes of smaller heads hold large negative
      values (``steps.own_domain_logits``).
    labels: ``[B, H, W]`` int labels (``IGNORE_ID`` and values >= C are
      excluded).
    domain: ``[B]`` int domain index of each sample.
    num_domains: number of domains.

  Returns:
    Scalar loss; 0 when no pixel is labelled.
  """
  num_classes = logits.shape[-1]
  valid = (labels != IGNORE_ID) & (labels >= 0) & (labels < num_classes)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  probs = jnp.where(valid[..., None], probs, 0.0)
  onehot = jax.nn.one_hot(jnp.where(valid, labels, 0), num_classes) * valid[
      ..., None]
  by_domain = jax.nn.one_hot(domain, num_domains)                # [B, K]
  inter = jnp.einsum('bk,bhwc->kc', by_domain, probs * onehot)
  pred = jnp.einsum('bk,bhwc->kc', by_domain, probs)
  true = jnp.einsum('bk,bhwc->kc', by_domain, onehot)
  present = true > 0
  iou = inter / jnp.maximum(pred + true - inter, 1e-6)
  return jnp.sum(jnp.where(present, 1.0 - iou, 0.0)) / jnp.maximum(
      jnp.sum(present), 1)


def own_head_losses(logits: jnp.ndarray, labels: jnp.ndarray,
                    num_classes: jnp.ndarray, domain: jnp.ndarray,
                    num_domains: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """``(own_head_cross_entropy, soft_iou_loss)`` of the same logits, fused.

  The two losses read the same per-pixel softmax; here it is computed once,
  and the gradient with respect to the logits is written out (one pass over
  ``[B, H, W, C]``) instead of differentiating each loss through its own
  softmax, selects and one-hot products. Same values and gradients as the
  two functions, up to float rounding (tested).

  Args:
    logits: ``[B, H, W, C]`` each sample's own-head logits at label
      resolution, padded classes at large negative values.
    labels: ``[B, H, W]`` int labels.
    num_classes: ``[B]`` class count of each sample's head.
    domain: ``[B]`` int domain index of each sample.
    num_domains: number of domains.

  Returns:
    ``(ce, iou)`` scalars.
  """
  return _own_head_losses(logits.astype(jnp.float32),
                          labels.astype(jnp.int32), num_classes, domain,
                          num_domains)


def _own_head_losses_fwd(logits, labels, num_classes, domain, num_domains):
  z = logits
  c = z.shape[-1]
  top = jnp.max(z, axis=-1, keepdims=True)
  e = jnp.exp(z - top)
  total = jnp.sum(e, axis=-1, keepdims=True)
  p = e / total
  valid = (labels != IGNORE_ID) & (labels >= 0) & (labels < c)
  in_head = valid & (labels < num_classes[:, None, None])
  onehot = (labels[..., None] == jnp.arange(c)) & valid[..., None]
  z_label = jnp.sum(jnp.where(onehot, z, 0.0), axis=-1)
  ce_pixel = (top[..., 0] + jnp.log(total[..., 0])) - z_label
  n_ce = jnp.maximum(jnp.sum(in_head), 1).astype(jnp.float32)
  ce = jnp.sum(jnp.where(in_head, ce_pixel, 0.0)) / n_ce
  # Per-sample class sums, then per domain (a [K, B] @ [B, C] product).
  by_domain = jax.nn.one_hot(domain, num_domains, dtype=jnp.float32).T
  pv = jnp.where(valid[..., None], p, 0.0)
  inter = by_domain @ jnp.sum(jnp.where(onehot, pv, 0.0), axis=(1, 2))
  pred = by_domain @ jnp.sum(pv, axis=(1, 2))
  true = by_domain @ jnp.sum(onehot.astype(jnp.float32), axis=(1, 2))
  present = true > 0
  count = jnp.maximum(jnp.sum(present), 1).astype(jnp.float32)
  union = jnp.maximum(pred + true - inter, 1e-6)
  iou = jnp.sum(jnp.where(present, 1.0 - inter / union, 0.0)) / count
  # d iou_loss / d p_c of a pixel of domain k: alpha[k, c] if c is its label
  # (through the intersection and the union), plus beta[k, c] (union only).
  # A present class has union >= its pixel count >= 1: never clamped.
  alpha = jnp.where(present, -(union + inter) / (union * union * count), 0.0)
  beta = jnp.where(present, inter / (union * union * count), 0.0)
  res = (p, labels, valid, in_head, n_ce, alpha, beta, domain)
  return (ce, iou), res


def _own_head_losses_bwd(num_domains, res, cotangents):
  del num_domains
  p, labels, valid, in_head, n_ce, alpha, beta, domain = res
  g_ce, g_iou = cotangents
  onehot = (labels[..., None] == jnp.arange(p.shape[-1])) & valid[..., None]
  a = jnp.where(onehot, alpha[domain][:, None, None, :], 0.0) + beta[
      domain][:, None, None, :]
  pa = p * a
  d_iou = pa - p * jnp.sum(pa, axis=-1, keepdims=True)
  d_ce = p - onehot.astype(jnp.float32)
  dz = (jnp.where(in_head[..., None], d_ce, 0.0) * (g_ce / n_ce) +
        jnp.where(valid[..., None], d_iou, 0.0) * g_iou)
  return dz, None, None, None


_own_head_losses = jax.custom_vjp(
    lambda logits, labels, num_classes, domain, num_domains:
    _own_head_losses_fwd(logits, labels, num_classes, domain, num_domains)[0],
    nondiff_argnums=(4,))
_own_head_losses.defvjp(_own_head_losses_fwd, _own_head_losses_bwd)
