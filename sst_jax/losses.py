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


def multi_head_cross_entropy(logits: dict[str, jnp.ndarray],
                             labels: jnp.ndarray, domain: jnp.ndarray,
                             domain_names, ignore_id: int = IGNORE_ID):
  """CE of every sample against its own domain's head only.

  Labels of a sample are only meaningful in its own label domain, so head
  ``k`` sees only the pixels of samples with ``domain == k``. The result is
  the mean over all valid pixels of the global batch, so a domain's share of
  the gradient follows its share of the batch.

  Args:
    logits: ``{name: [B, H, W, C_name]}`` at label resolution.
    labels: ``[B, H, W]`` int labels.
    domain: ``[B]`` int index into ``domain_names``.
    domain_names: head names in domain-index order.

  Returns:
    ``(loss, per_domain)``: scalar mean CE and ``{name: (sum, count)}``.
  """
  total, count, per_domain = 0.0, 0.0, {}
  for k, name in enumerate(domain_names):
    ce, valid = pixel_cross_entropy(logits[name], labels, ignore_id)
    mine = (domain == k)[:, None, None] & valid
    s, c = jnp.sum(jnp.where(mine, ce, 0.0)), jnp.sum(mine)
    per_domain[name] = (s, c)
    total, count = total + s, count + c
  return total / jnp.maximum(count, 1), per_domain


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
