"""Segmentation losses. Pure jnp functions, no model or config knowledge."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sst_jax.domains import IGNORE_ID


def pixel_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray,
                        ignore_id: int = IGNORE_ID) -> tuple[jnp.ndarray,
                                                             jnp.ndarray]:
  """Per-pixel CE and a validity mask.

  Args:
    logits: ``[..., C]`` float logits.
    labels: ``[...]`` int labels; ``ignore_id`` and any value >= C are
      excluded.

  Returns:
    ``(ce, valid)``: float ``[...]`` (0 where invalid) and bool ``[...]``.
  """
  num_classes = logits.shape[-1]
  valid = (labels != ignore_id) & (labels >= 0) & (labels < num_classes)
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  ce = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  return jnp.where(valid, ce, 0.0), valid


def own_head_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray,
                           num_classes: jnp.ndarray,
                           ignore_id: int = IGNORE_ID) -> jnp.ndarray:
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
      above it are excluded like ``ignore_id``.

  Returns:
    Scalar mean CE.
  """
  labels = labels.astype(jnp.int32)
  in_head = labels < num_classes[:, None, None]
  ce, valid = pixel_cross_entropy(
      logits, jnp.where(in_head, labels, ignore_id), ignore_id)
  return jnp.sum(ce) / jnp.maximum(jnp.sum(valid), 1)


def edge_targets(labels: jnp.ndarray, ignore_id: int = IGNORE_ID,
                 radius: int = 1) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Binary part-boundary map from a label map (CE2P edge supervision).

  A pixel is an edge pixel when a neighbour within ``radius`` (4-connected
  steps) has a different label; ignore pixels are excluded.

  Returns:
    ``(edges, valid)`` int32 and bool ``[B, H, W]``.
  """
  pad = jnp.pad(labels, ((0, 0), (radius, radius), (radius, radius)),
                mode='edge')
  h, w = labels.shape[1:]
  edge = jnp.zeros(labels.shape, bool)
  for dy in range(-radius, radius + 1):
    for dx in range(-radius, radius + 1):
      if abs(dy) + abs(dx) > radius or (dy == 0 and dx == 0):
        continue
      nb = pad[:, radius + dy:radius + dy + h, radius + dx:radius + dx + w]
      edge |= (nb != labels) & (nb != ignore_id)
  valid = labels != ignore_id
  return edge.astype(jnp.int32), valid


def balanced_edge_loss(edge_logits: jnp.ndarray,
                       labels: jnp.ndarray,
                       ignore_id: int = IGNORE_ID) -> jnp.ndarray:
  """Class-balanced 2-way CE on the CE2P edge branch (logits at label res)."""
  edges, valid = edge_targets(labels, ignore_id)
  ce, _ = pixel_cross_entropy(edge_logits, jnp.where(valid, edges, ignore_id),
                              ignore_id)
  pos = jnp.sum(valid & (edges == 1))
  neg = jnp.sum(valid & (edges == 0))
  n = jnp.maximum(pos + neg, 1)
  weight = jnp.where(edges == 1, neg / n, pos / n) * valid
  return jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1e-6)


def kl_divergence(target_logits: jnp.ndarray, logits: jnp.ndarray,
                  temperature: float = 1.0) -> jnp.ndarray:
  """Per-pixel ``T^2 KL(softmax(t/T) || softmax(s/T))``, ``[...]``."""
  t = jax.nn.log_softmax(target_logits / temperature, axis=-1)
  s = jax.nn.log_softmax(logits / temperature, axis=-1)
  return temperature**2 * jnp.sum(jnp.exp(t) * (t - s), axis=-1)


def soft_iou_loss(logits: jnp.ndarray, labels: jnp.ndarray,
                  domain: jnp.ndarray, num_domains: int,
                  ignore_id: int = IGNORE_ID) -> jnp.ndarray:
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
    labels: ``[B, H, W]`` int labels (``ignore_id`` and values >= C are
      excluded).
    domain: ``[B]`` int domain index of each sample.
    num_domains: number of domains.

  Returns:
    Scalar loss; 0 when no pixel is labelled.
  """
  num_classes = logits.shape[-1]
  valid = (labels != ignore_id) & (labels >= 0) & (labels < num_classes)
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
