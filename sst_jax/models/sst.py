"""MSA, MSE and MST: SST's training-only modules (this project's reconstruction).

Everything here is used only by the training loss; the deployed parser never
calls it. ``docs/method.md`` states which parts the paper states and which are
reconstructed; every reconstructed choice is a field of ``config.sst``.

Shapes: ``B`` batch, ``P`` pixels of a scale, ``C_k`` classes of domain k,
``D`` prototype width. The modules are vectorized over the batch and loop
over the (few) label domains in Python; a sample only contributes to the
losses of its own domain ``k`` (masks by ``domain == k``).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sst_jax import losses
from sst_jax.domains import IGNORE_ID
from sst_jax.models import layers

NEG_INF = -1e9


# ----------------------------------------------------------------------------
# Pure functions (tested against numpy references).
# ----------------------------------------------------------------------------


def soft_label_masks(label: jnp.ndarray, num_classes: int,
                     size: tuple[int, int]) -> jnp.ndarray:
  """Ground-truth one-hot masks area-resized to ``size``; ignore excluded.

  Returns:
    ``[B, h, w, C]``: the fraction of each output cell covered by each class
    (cells partly covered by ignore pixels sum to less than 1).
  """
  valid = (label != IGNORE_ID) & (label < num_classes)
  onehot = jax.nn.one_hot(jnp.where(valid, label, 0), num_classes) * valid[
      ..., None]
  return layers.adaptive_avg_pool(onehot, tuple(size))


def masked_pool(masks: jnp.ndarray, feats: jnp.ndarray,
                eps: float = 1e-6) -> jnp.ndarray:
  """Soft masked average pooling (MSA prototypes).

  ``v[b, c] = sum_p masks[b, p, c] feats[b, p] / (sum_p masks[b, p, c] + eps)``

  Args:
    masks: ``[B, P, C]``; feats: ``[B, P, D]``.

  Returns:
    ``[B, C, D]``.
  """
  num = jnp.einsum('bpc,bpd->bcd', masks, feats)
  return num / (jnp.sum(masks, axis=1)[..., None] + eps)


def masked_softmax(logits: jnp.ndarray, key_mask: jnp.ndarray) -> jnp.ndarray:
  """Softmax over the last axis restricted to ``key_mask``; all-masked -> 0."""
  logits = jnp.where(key_mask, logits, NEG_INF)
  attn = jax.nn.softmax(logits, axis=-1)
  return jnp.where(jnp.any(key_mask, axis=-1, keepdims=True), attn, 0.0)


def cooccurrence_prior(masks: jnp.ndarray, dilation: int) -> jnp.ndarray:
  """Row-normalized spatial adjacency of ground-truth class masks.

  ``prior[b, c, c'] ∝ sum_p dilate(mask_c)(p) mask_c'(p)``: how much of
  class c's neighbourhood (``dilation`` pixels) class c' occupies.

  Args:
    masks: ``[B, h, w, C]`` soft ground-truth masks.

  Returns:
    ``[B, C, C]`` rows summing to 1 (0 rows for absent classes).
  """
  k = 2 * dilation + 1
  dilated = nn.max_pool(masks, (k, k), strides=(1, 1), padding='SAME')
  co = jnp.einsum('bhwc,bhwd->bcd', dilated, masks)
  return co / jnp.maximum(jnp.sum(co, axis=-1, keepdims=True), 1e-6)


def transition_matrix(assoc: jnp.ndarray) -> jnp.ndarray:
  """Label-transition matrix ``T[j->k]`` from an association ``B[k<-j]``.

  ``assoc`` is ``[..., C_k, C_j]``; its columns are normalized over k and the
  result transposed, so row ``c_j`` of ``T`` is a distribution over domain
  k's classes: ``P^j @ T`` maps domain-j probabilities into domain k.
  """
  t = assoc / jnp.maximum(jnp.sum(assoc, axis=-2, keepdims=True), 1e-6)
  return jnp.swapaxes(t, -1, -2)


# ----------------------------------------------------------------------------
# Modules.
# ----------------------------------------------------------------------------


class ClassAttention(nn.Module):
  """Attention from query prototypes to key prototypes with a key mask.

  ``A = softmax(Q(q) K(k)^T / sqrt(D) + bias)`` over present keys, output
  ``W(A V(k))`` (``V`` = identity when ``project_values`` is false).
  """
  dim: int
  project_values: bool = True

  @nn.compact
  def __call__(self, queries, keys, key_mask, bias=None):
    q = nn.Dense(self.dim, name='query')(queries)
    k = nn.Dense(self.dim, name='key')(keys)
    v = nn.Dense(self.dim, name='value')(keys) if self.project_values else keys
    logits = jnp.einsum('...qd,...kd->...qk', q, k) / math.sqrt(self.dim)
    if bias is not None:
      logits = logits + bias
    attn = masked_softmax(logits, key_mask[..., None, :])
    out = nn.Dense(self.dim, name='out')(jnp.einsum('...qk,...kd->...qd',
                                                    attn, v))
    return out, attn, logits


class PixelAttention(nn.Module):
  """Pixel re-projection: ``X' = X + Attn(X, prototypes)`` over present ones."""
  dim: int

  @nn.compact
  def __call__(self, pixels, prototypes, present):
    b, h, w, d = pixels.shape
    out, _, _ = ClassAttention(self.dim, name='attn')(
        pixels.reshape(b, h * w, d), prototypes, present)
    return nn.LayerNorm(name='norm')(pixels + out.reshape(b, h, w, d))


class SST(nn.Module):
  """MSA + MSE + MST over the parser's features; returns the SST losses.

  Attributes:
    domain_names / num_classes: the label domains, in config order.
    dim: prototype width D.
    scales: ``aux`` feature names used as scales (the last one must be at
      the logits' resolution, stride 4: ``'decoder'``).
    memory_momentum: EMA momentum of the per-class prototype memory.
    use_mse / use_mst: enable the two branches (MSA always runs).
    prior: ``'bias'`` | ``'kl'`` | ``'none'``: how the co-occurrence prior
      enters MSE's class attention.
    prior_dilation: neighbourhood (pixels at the stride-4 scale) of the prior.
    other_prototypes: ``'predicted'`` (MSA with stop-gradient predictions of
      the other heads) or ``'memory'`` (the EMA memory) for MST's keys.
    present_threshold: predicted mass (in stride-4 pixels) for a class of
      another domain to count as present in an image.
    weights: ``{'mse', 'mst', 'cons', 'kd', 'prior'}`` loss weights.
    kd_temperature: temperature of the self-distillation term.
    target: dedicated mode's target domain index, or -1 (universal).
  """
  domain_names: Sequence[str]
  num_classes: Sequence[int]
  dim: int = 256
  scales: Sequence[str] = ('context', 'decoder')
  memory_momentum: float = 0.9
  use_mse: bool = True
  use_mst: bool = True
  prior: str = 'bias'
  prior_dilation: int = 2
  other_prototypes: str = 'predicted'
  present_threshold: float = 1.0
  weights: dict | None = None
  kd_temperature: float = 2.0
  target: int = -1

  def setup(self):
    d = self.dim
    self.proj = {s: nn.Dense(d, name=f'proj_{s}') for s in self.scales}
    self.scale_weights = self.param('scale_weights', nn.initializers.zeros,
                                    (len(self.scales),))
    self.memory = {
        n: self.variable('sst_memory', n, lambda c=c: {
            'proto': jnp.zeros((c, d)), 'count': jnp.zeros((c,))})
        for n, c in zip(self.domain_names, self.num_classes)}
    if self.use_mse:
      self.mse_attn = ClassAttention(d, project_values=False)
      self.prior_scale = self.param('prior_scale', nn.initializers.ones, ())
      self.mse_pixels = PixelAttention(d)
      self.mse_cls = {n: nn.Dense(c, name=f'mse_cls_{n}') for n, c in
                      zip(self.domain_names, self.num_classes)}
    if self.use_mst:
      self.mst_attn = ClassAttention(d)
      self.mst_pixels = PixelAttention(d)
      self.mst_cls = {n: nn.Dense(c, name=f'mst_cls_{n}') for n, c in
                      zip(self.domain_names, self.num_classes)}

  # MSA ----------------------------------------------------------------------

  def aggregate(self, logits, aux, label, domain):
    """Multi-scale prototypes of every domain for every image.

    Returns:
      feats ``{scale: [B, h, w, D]}``, protos ``{name: [B, C, D]}``,
      present ``{name: [B, C]}``, gt masks at stride 4 ``{name: [B,h,w,C]}``.
    """
    feats = {s: self.proj[s](aux[s].astype(jnp.float32)) for s in self.scales}
    fuse = jax.nn.softmax(self.scale_weights)
    grid = feats[self.scales[-1]].shape[1:3]
    protos, present, gt_masks = {}, {}, {}
    for j, (name, c) in enumerate(zip(self.domain_names, self.num_classes)):
      own = (domain == j)[:, None, None, None]
      probs = jax.lax.stop_gradient(jax.nn.softmax(logits[name], axis=-1))
      gt = soft_label_masks(label, c, grid)
      gt_masks[name] = gt
      v = 0.0
      for w, s in zip(fuse, self.scales):
        size = feats[s].shape[1:3]
        gt_s = gt if size == grid else soft_label_masks(label, c, size)
        pred_s = probs if size == probs.shape[1:3] else (
            layers.adaptive_avg_pool(probs, tuple(size)))
        m = jnp.where(own, gt_s, pred_s)
        b, h, ww, _ = m.shape
        v = v + w * masked_pool(m.reshape(b, h * ww, c),
                                feats[s].reshape(b, h * ww, self.dim))
      mass_gt = jnp.sum(gt, axis=(1, 2))
      mass_pred = jnp.sum(probs, axis=(1, 2))
      present[name] = jnp.where(own[:, :, 0, 0], mass_gt > 0,
                                mass_pred >= self.present_threshold)
      protos[name] = v
    return feats, protos, present, gt_masks

  def update_memory(self, protos, present, domain):
    """EMA of each class's ground-truth prototype over the global batch."""
    m = self.memory_momentum
    for j, name in enumerate(self.domain_names):
      use = present[name] & (domain == j)[:, None]             # [B, C]
      cnt = jnp.sum(use, axis=0).astype(jnp.float32)          # [C]
      mean = jnp.einsum('bc,bcd->cd', use.astype(jnp.float32),
                        jax.lax.stop_gradient(protos[name])) / jnp.maximum(
                            cnt, 1.0)[:, None]
      mem = self.memory[name].value
      seen = mem['count'] > 0
      new = jnp.where(seen[:, None], m * mem['proto'] + (1 - m) * mean, mean)
      self.memory[name].value = {
          'proto': jnp.where((cnt > 0)[:, None], new, mem['proto']),
          'count': mem['count'] + cnt}

  def memory_prototypes(self, name):
    mem = self.memory[name].value
    return jax.lax.stop_gradient(mem['proto']), mem['count'] > 0

  # MSE / MST -----------------------------------------------------------------

  def transitions(self, k_name: str) -> dict:
    """``{j: T[j->k]}`` from the memory prototypes (``[C_j, C_k]``)."""
    vk, pk = self.memory_prototypes(k_name)
    out = {}
    for j_name in self.domain_names:
      if j_name == k_name:
        continue
      vj, pj = self.memory_prototypes(j_name)
      _, assoc, _ = self.mst_attn(vk, vj, pj)
      out[j_name] = transition_matrix(assoc * pk[:, None])
    return out

  def associations(self) -> dict:
    """``{(k, j): B[k<-j]}`` ``[C_k, C_j]`` from memory (for pictures)."""
    out = {}
    for k_name in self.domain_names:
      vk, _ = self.memory_prototypes(k_name)
      for j_name in self.domain_names:
        if j_name != k_name:
          vj, pj = self.memory_prototypes(j_name)
          out[(k_name, j_name)] = self.mst_attn(vk, vj, pj)[1]
    return out

  def _classify(self, pixel_module, classifier, feats, prototypes, present):
    return {s: classifier(pixel_module(feats[s], prototypes, present))
            for s in self.scales}

  def __call__(self, logits, aux, label, domain, train: bool = True):
    w = dict(self.weights or {})
    names = self.domain_names
    feats, protos, present, gt_masks = self.aggregate(logits, aux, label,
                                                      domain)
    if train and not self.is_initializing():
      self.update_memory(protos, present, domain)
    sums = {k: 0.0 for k in ('mse', 'mst', 'kd', 'cons', 'prior')}
    counts = {k: 0.0 for k in sums}

    def add(key, value_sum, count):
      sums[key] = sums[key] + value_sum
      counts[key] = counts[key] + count

    grid = feats[self.scales[-1]].shape[1:3]

    def seg_ce(scale_logits, gt, own):
      # Soft-target CE at the stride-4 grid against area-resized labels:
      # as informative as full resolution for the auxiliary classifiers, at
      # a sixteenth of the cost.
      total, n = 0.0, 0.0
      mine = own[:, None, None]
      for lg in scale_logits.values():
        logp = jax.nn.log_softmax(layers.resize_bilinear(lg, grid), axis=-1)
        total += jnp.sum(jnp.where(mine, -jnp.sum(gt * logp, axis=-1), 0.0))
        n += jnp.sum(jnp.where(mine, jnp.sum(gt, axis=-1), 0.0))
      return total / len(scale_logits), n / len(scale_logits)

    for k, name in enumerate(names):
      own = domain == k
      vk, pk = protos[name], present[name]
      teacher = None
      if self.use_mse:
        prior = cooccurrence_prior(gt_masks[name], self.prior_dilation)
        bias = self.prior_scale * prior if self.prior == 'bias' else None
        enh, attn, _ = self.mse_attn(vk, vk, pk, bias)
        vk_enh = vk + enh
        if self.prior == 'kl':
          kl = jnp.sum(prior * (jnp.log(prior + 1e-6) - jnp.log(attn + 1e-6)),
                       axis=-1)
          rows = pk & own[:, None]
          add('prior', jnp.sum(jnp.where(rows, kl, 0.0)), jnp.sum(rows))
        out = self._classify(self.mse_pixels, self.mse_cls[name], feats,
                             vk_enh, pk)
        add('mse', *seg_ce(out, gt_masks[name], own))
        teacher = out[self.scales[-1]]
      else:
        vk_enh = vk
      if self.use_mst:
        transfer = 0.0
        for j_name in names:
          if j_name == name:
            continue
          if self.other_prototypes == 'memory':
            vj, pj = self.memory_prototypes(j_name)
            vj = jnp.broadcast_to(vj, (vk.shape[0],) + vj.shape)
            pj = jnp.broadcast_to(pj, (vk.shape[0],) + pj.shape)
          else:
            vj, pj = protos[j_name], present[j_name]
          t_out, _, _ = self.mst_attn(vk_enh, vj, pj)
          transfer = transfer + t_out
        out = self._classify(self.mst_pixels, self.mst_cls[name], feats,
                             vk_enh + transfer, pk)
        add('mst', *seg_ce(out, gt_masks[name], own))
        teacher = out[self.scales[-1]]

      gt = gt_masks[name]
      labelled = (jnp.sum(gt, axis=-1) > 0.5) & own[:, None, None]
      # Self-distillation: enhanced/transferred predictions teach the head.
      if teacher is not None and w.get('kd', 0.0) and (
          self.target < 0 or self.target == k):
        kd = losses.kl_divergence(jax.lax.stop_gradient(teacher),
                                  logits[name], self.kd_temperature)
        add('kd', jnp.sum(jnp.where(labelled, kd, 0.0)), jnp.sum(labelled))
      # Cross-domain consistency: other heads, mapped into domain k through
      # the learned transition, must explain domain k's labels.
      if self.use_mst and w.get('cons', 0.0):
        for j_name, t in self.transitions(name).items():
          if self.target >= 0 and j_name != names[self.target]:
            continue
          q = jax.nn.softmax(logits[j_name], axis=-1) @ t       # [B,h,w,C_k]
          ce = -jnp.sum(gt * jnp.log(q + 1e-6), axis=-1) / jnp.maximum(
              jnp.sum(gt, axis=-1), 1e-6)
          ready = jnp.any(self.memory_prototypes(j_name)[1])
          mask = labelled & ready
          add('cons', jnp.sum(jnp.where(mask, ce, 0.0)), jnp.sum(mask))

    metrics, total = {}, 0.0
    for key in sums:
      if not isinstance(sums[key], jnp.ndarray):
        continue
      value = sums[key] / jnp.maximum(counts[key], 1.0)
      metrics[f'sst_{key}'] = value
      total = total + w.get(key, 0.0) * value
    return total, metrics


def make_sst(config, domains) -> SST | None:
  """The SST module for ``config.sst``, or None when disabled."""
  cfg = config.sst
  if not cfg.enabled:
    return None
  if cfg.prior not in ('bias', 'kl', 'none'):
    raise ValueError(f"config.sst.prior must be 'bias', 'kl' or 'none', got "
                     f'{cfg.prior!r}')
  if cfg.other_prototypes not in ('predicted', 'memory'):
    raise ValueError("config.sst.other_prototypes must be 'predicted' or "
                     f"'memory', got {cfg.other_prototypes!r}")
  if cfg.scales[-1] != 'decoder':
    raise ValueError("config.sst.scales must end with 'decoder' (the scale "
                     f'of the logits), got {tuple(cfg.scales)}')
  names = [d.name for d in domains]
  target = names.index(config.target) if config.mode_sst == 'dedicated' else -1
  return SST(
      domain_names=tuple(names),
      num_classes=tuple(d.num_classes for d in domains),
      dim=cfg.dim, scales=tuple(cfg.scales),
      memory_momentum=cfg.memory_momentum, use_mse=cfg.mse, use_mst=cfg.mst,
      prior=cfg.prior, prior_dilation=cfg.prior_dilation,
      other_prototypes=cfg.other_prototypes,
      weights={'mse': cfg.mse_weight, 'mst': cfg.mst_weight,
               'cons': cfg.cons_weight, 'kd': cfg.kd_weight,
               'prior': cfg.prior_weight if cfg.prior == 'kl' else 0.0},
      kd_temperature=cfg.kd_temperature, target=target)


def association_images(sst_model: SST, sst_params, sst_memory, domains):
  """Heat maps of the learned cross-domain associations, as RGB images."""
  from sst_jax import heatmaps  # Host-side drawing, only when asked for.
  if not sst_model.use_mst:
    return {}
  assoc = jax.device_get(sst_model.apply(
      {'params': sst_params, 'sst_memory': sst_memory},
      method=SST.associations))
  by_name = {d.name: d for d in domains}
  panels = []
  for (k, j), matrix in sorted(assoc.items()):
    panels.append(heatmaps.heatmap(
        matrix, by_name[k].classes, by_name[j].classes,
        title=f'{k} <- {j}'))
  return {"associations": heatmaps.tile(panels)}
