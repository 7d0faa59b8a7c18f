"""SST's first reconstruction (``config.sst.variant='first'``).

Made before the paper's figures were found: prototypes of the other domains
pooled from predictions, pixel re-projection by attention with auxiliary
classifiers, a label-transition consistency loss and self-distillation. The
figures draw none of that (``docs/method.md``); it is kept only to be
compared once with the method as drawn (``sst_jax/models/sst.py``) in the
ablation.

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
from sst_jax.models import layers
from sst_jax.models.sst import cooccurrence_prior
from sst_jax.models.sst import masked_softmax
from sst_jax.models.sst import NEG_INF
from sst_jax.models.sst import soft_label_masks



# ----------------------------------------------------------------------------
# Pure functions (tested against numpy references).
# ----------------------------------------------------------------------------


def masked_pool(masks: jnp.ndarray, feats: jnp.ndarray,
                eps: float = 1e-6) -> jnp.ndarray:
  """Soft masked average pooling (MSA prototypes).

  ``v[b, c] = sum_p masks[b, p, c] feats[b, p] / (sum_p masks[b, p, c] + eps)``

  Args:
    masks: ``[..., P, C]``; feats: ``[..., P, D]`` (leading axes broadcast).

  Returns:
    ``[..., C, D]``.
  """
  num = jnp.einsum('...pc,...pd->...cd', masks, feats)
  return num / (jnp.sum(masks, axis=-2)[..., None] + eps)


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


class DenseParams(nn.Module):
  """The kernel and bias of an ``nn.Dense``, returned instead of applied.

  Same parameter names, shapes and initializers as ``nn.Dense(features)``, so
  a module that folds a projection into other products keeps the parameter
  tree (and the initial values) of the plain layer.
  """
  features: int

  @nn.compact
  def __call__(self, in_features: int):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (in_features, self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    return kernel, bias


class QueryFoldedAttention(nn.Module):
  """``ClassAttention`` for many queries and few keys, same parameters.

  The query projection is folded into the keys and the output projection
  into the values (matrix products are associative):

    logits = (X Wq + bq) K^T / sqrt(D) = X (Wq K^T / sqrt(D)) + bq K^T / sqrt(D)
    out    = (A V) Wo + bo             = A (V Wo) + bo

  so each query costs two ``D x C`` products instead of two ``D x D`` and two
  ``D x C`` ones (C: keys, a domain's classes; D: the prototype width). With
  every key masked, ``A = 0`` and the output is ``bo`` in both forms.
  """
  dim: int

  @nn.compact
  def __call__(self, queries, keys, key_mask):
    wq, bq = DenseParams(self.dim, name='query')(queries.shape[-1])
    k = nn.Dense(self.dim, name='key')(keys)                     # [..., C, D]
    v = nn.Dense(self.dim, name='value')(keys)
    wo, bo = DenseParams(self.dim, name='out')(self.dim)
    scale = 1.0 / math.sqrt(self.dim)
    g = jnp.einsum('id,...kd->...ik', wq, k) * scale             # [..., I, C]
    g0 = jnp.einsum('d,...kd->...k', bq, k) * scale              # [..., C]
    logits = jnp.einsum('...qi,...ik->...qk', queries, g) + g0[..., None, :]
    attn = masked_softmax(logits, key_mask[..., None, :])
    return jnp.einsum('...qk,...kd->...qd', attn, v @ wo) + bo


class PixelAttention(nn.Module):
  """Pixel re-projection: ``X' = X + Attn(X, prototypes)`` over present ones.

  The attention is ``ClassAttention``'s (same parameters, ``attn/...``)
  computed as ``QueryFoldedAttention``: a stride-4 map has hundreds of
  pixels per image and a domain at most 20 classes.
  """
  dim: int

  @nn.compact
  def __call__(self, pixels, prototypes, present):
    b, h, w, d = pixels.shape
    out = QueryFoldedAttention(self.dim, name='attn')(
        pixels.reshape(b, h * w, d), prototypes, present)
    return nn.LayerNorm(name='norm')(pixels + out.reshape(b, h, w, d))


class CrossDomainAttention(nn.Module):
  """MST attention from one domain's prototypes to every other domain's.

  ``B[k<-j] = softmax_c(Q(q) K(v_j)^T / sqrt(D))`` separately for each key
  domain j (a ``C_k x C_j`` association for any class counts), output
  ``W(sum_j B[k<-j] V(v_j))``. Q, K, V, W are shared by all domain pairs, so
  adding a domain adds no association parameters.

  Shapes: queries ``[..., Cq, D]``, keys ``[..., J, Ck, D]``, key_mask
  ``[..., J, Ck]``; returns ``([..., Cq, D], attention [..., J, Cq, Ck])``.
  """
  dim: int

  @nn.compact
  def __call__(self, queries, keys, key_mask):
    q = nn.Dense(self.dim, name='query')(queries)
    k = nn.Dense(self.dim, name='key')(keys)
    v = nn.Dense(self.dim, name='value')(keys)
    logits = jnp.einsum('...qd,...jkd->...jqk', q, k) / math.sqrt(self.dim)
    attn = masked_softmax(logits, key_mask[..., None, :])
    out = jnp.einsum('...jqk,...jkd->...qd', attn, v)
    return nn.Dense(self.dim, name='out')(out), attn


class SST(nn.Module):
  """MSA + MSE + MST over the parser's features; returns the SST losses.

  All domains are handled at once: class axes are padded to the largest
  class count ``C`` with masks, and each sample selects its own domain, so
  the cost does not grow with the number of domains beyond the per-domain
  classifiers.

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
      self.mse_cls = {n: DenseParams(c, name=f'mse_cls_{n}') for n, c in
                      zip(self.domain_names, self.num_classes)}
    if self.use_mst:
      self.mst_attn = CrossDomainAttention(d)
      self.mst_pixels = PixelAttention(d)
      self.mst_cls = {n: DenseParams(c, name=f'mst_cls_{n}') for n, c in
                      zip(self.domain_names, self.num_classes)}

  # Padding helpers -----------------------------------------------------------

  @property
  def c_max(self) -> int:
    return max(self.num_classes)

  def class_mask(self) -> jnp.ndarray:
    """``[K, C]``: which padded class slots are real classes."""
    return jnp.arange(self.c_max)[None, :] < jnp.asarray(self.num_classes)[
        :, None]

  def _pad(self, x, value=0.0):
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, self.c_max - x.shape[-1])],
                   constant_values=value)

  def _select_own(self, per_domain, own):
    """Each sample's own-domain entry of ``[B, ..., C_k]`` arrays, padded."""
    stacked = jnp.stack([self._pad(x, NEG_INF) for x in per_domain], axis=1)
    return jnp.einsum('bk,bk...->b...', own.astype(stacked.dtype), stacked)

  def _own_classifier(self, classifiers, domain):
    """Each sample's own-domain classifier: kernel ``[B, D, C]``, bias ``[B, C]``.

    Padded classes get a zero kernel and a ``NEG_INF`` bias, so applying it
    equals applying every domain's ``nn.Dense`` and ``_select_own``'s pick,
    at a K-th of the cost.
    """
    params = [classifiers[n](self.dim) for n in self.domain_names]
    kernel = jnp.stack([self._pad(w) for w, _ in params])        # [K, D, C]
    bias = jnp.stack([self._pad(b, NEG_INF) for _, b in params])  # [K, C]
    return kernel[domain], bias[domain]

  # MSA ----------------------------------------------------------------------

  def aggregate(self, logits, aux, label, domain):
    """Multi-scale prototypes of every domain for every image.

    Returns:
      feats ``{scale: [B, h, w, D]}``; protos ``[B, K, C, D]``; present
      ``[B, K, C]``; own-domain soft ground truth at stride 4 ``[B, h, w, C]``.
    """
    feats = {s: self.proj[s](aux[s].astype(jnp.float32)) for s in self.scales}
    fuse = jax.nn.softmax(self.scale_weights)
    grid = feats[self.scales[-1]].shape[1:3]
    own = jax.nn.one_hot(domain, len(self.domain_names), dtype=bool)
    real = self.class_mask()[domain]                               # [B, C]
    gt = {}
    for s in self.scales:
      size = tuple(feats[s].shape[1:3])
      if size not in gt:
        gt[size] = soft_label_masks(label, self.c_max, size) * real[
            :, None, None, :]
    probs = jax.lax.stop_gradient(jnp.stack(
        [self._pad(jax.nn.softmax(logits[n], axis=-1))
         for n in self.domain_names], axis=1))                   # [B,K,h,w,C]
    b, k = probs.shape[:2]
    # Pooling is linear in the features and scales of one size share their
    # masks, so each size pools the weighted sum of its scales' features
    # once (res2 and the decoder are both at stride 4).
    by_size = {}
    for w, s in zip(fuse, self.scales):
      size = tuple(feats[s].shape[1:3])
      by_size[size] = by_size.get(size, 0.0) + w * feats[s]
    protos = 0.0
    for size, f in by_size.items():
      pred = probs if size == tuple(grid) else layers.adaptive_avg_pool(
          probs.reshape((b * k,) + probs.shape[2:]), size).reshape(
              (b, k) + size + (self.c_max,))
      m = jnp.where(own[:, :, None, None, None], gt[size][:, None], pred)
      p = size[0] * size[1]
      protos = protos + masked_pool(m.reshape(b, k, p, self.c_max),
                                    f.reshape(b, 1, p, self.dim))
    gt_grid = gt[tuple(grid)]
    mass_gt = jnp.sum(gt_grid, axis=(1, 2))                        # [B, C]
    mass_pred = jnp.sum(probs, axis=(2, 3))                        # [B,K,C]
    present = jnp.where(own[..., None], (mass_gt > 0)[:, None],
                        mass_pred >= self.present_threshold)
    return feats, protos, present & self.class_mask()[None], gt_grid

  def update_memory(self, protos, present, domain):
    """EMA of each class's ground-truth prototype over the global batch."""
    m = self.memory_momentum
    for j, (name, c) in enumerate(zip(self.domain_names, self.num_classes)):
      use = present[:, j, :c] & (domain == j)[:, None]           # [B, C_j]
      cnt = jnp.sum(use, axis=0).astype(jnp.float32)
      mean = jnp.einsum('bc,bcd->cd', use.astype(jnp.float32),
                        jax.lax.stop_gradient(protos[:, j, :c])) / jnp.maximum(
                            cnt, 1.0)[:, None]
      mem = self.memory[name].value
      seen = mem['count'] > 0
      new = jnp.where(seen[:, None], m * mem['proto'] + (1 - m) * mean, mean)
      self.memory[name].value = {
          'proto': jnp.where((cnt > 0)[:, None], new, mem['proto']),
          'count': mem['count'] + cnt}

  def memory_prototypes(self):
    """Padded memory ``[K, C, D]`` (stop-gradient) and filled rows ``[K, C]``."""
    protos = jnp.stack([self._pad(self.memory[n].value['proto'].T).T
                        for n in self.domain_names])
    filled = jnp.stack([self._pad(self.memory[n].value['count'] > 0)
                        for n in self.domain_names])
    return jax.lax.stop_gradient(protos), filled

  # Associations ----------------------------------------------------------------

  def memory_associations(self) -> jnp.ndarray:
    """``B[k<-j]`` between the memory prototypes, ``[K, K, C, C]``."""
    protos, filled = self.memory_prototypes()
    k = len(self.domain_names)
    keys = jnp.broadcast_to(protos[None], (k,) + protos.shape)
    mask = filled[None] & ~jnp.eye(k, dtype=bool)[..., None]
    _, assoc = self.mst_attn(protos, keys, mask)
    return assoc * filled[:, None, :, None]

  def associations(self) -> dict:
    """``{(k, j): B[k<-j]}`` ``[C_k, C_j]`` from memory (for pictures)."""
    assoc = self.memory_associations()
    return {(kn, jn): assoc[a, b, :kc, :jc]
            for a, (kn, kc) in enumerate(zip(self.domain_names,
                                             self.num_classes))
            for b, (jn, jc) in enumerate(zip(self.domain_names,
                                             self.num_classes)) if a != b}

  def transitions(self, k_name: str) -> dict:
    """``{j: T[j->k]}`` ``[C_j, C_k]`` from the memory prototypes."""
    t = transition_matrix(self.memory_associations())            # [K,K,Cj,Ck]
    a = self.domain_names.index(k_name)
    kc = self.num_classes[a]
    return {jn: t[a, b, :jc, :kc] for b, (jn, jc) in enumerate(
        zip(self.domain_names, self.num_classes)) if b != a}

  # Losses ----------------------------------------------------------------------

  def __call__(self, logits, aux, label, domain, train: bool = True,
               ramp=1.0):
    """SST losses; ``ramp`` scales the kd and cons weights (warm-up)."""
    w = dict(self.weights or {})
    feats, protos, present, gt = self.aggregate(logits, aux, label, domain)
    if train and not self.is_initializing():
      self.update_memory(protos, present, domain)
    k = len(self.domain_names)
    own = jax.nn.one_hot(domain, k, dtype=bool)                    # [B, K]
    v_own = jnp.einsum('bk,bkcd->bcd', own.astype(jnp.float32), protos)
    p_own = jnp.any(own[..., None] & present, axis=1)              # [B, C]
    grid = gt.shape[1:3]
    coverage = jnp.sum(gt, axis=-1)                                # [B, h, w]
    labelled = coverage > 0.5
    terms = {}

    def seg_ce(classifiers, pixels, prototypes):
      # Soft-target CE at the stride-4 grid against area-resized labels:
      # as informative as full resolution for the auxiliary classifiers, at
      # a sixteenth of the cost.
      total, outs = 0.0, {}
      kernel, bias = self._own_classifier(classifiers, domain)
      for s in self.scales:
        x = pixels(feats[s], prototypes, p_own)
        lg = jnp.einsum('bhwd,bdc->bhwc', x, kernel) + bias[:, None, None, :]
        outs[s] = layers.resize_bilinear(lg, grid)
        total += -jnp.sum(gt * jax.nn.log_softmax(outs[s], axis=-1))
      n = jnp.sum(coverage) * len(self.scales)
      return total / jnp.maximum(n, 1e-6), outs[self.scales[-1]]

    teacher = None
    v_enh = v_own
    if self.use_mse:
      prior = cooccurrence_prior(gt, self.prior_dilation)
      bias = self.prior_scale * prior if self.prior == 'bias' else None
      enh, attn, _ = self.mse_attn(v_own, v_own, p_own, bias)
      v_enh = v_own + enh
      if self.prior == 'kl':
        kl = jnp.sum(prior * (jnp.log(prior + 1e-6) - jnp.log(attn + 1e-6)),
                     axis=-1)
        terms['prior'] = jnp.sum(jnp.where(p_own, kl, 0.0)) / jnp.maximum(
            jnp.sum(p_own), 1.0)
      terms['mse'], teacher = seg_ce(self.mse_cls, self.mse_pixels, v_enh)
    if self.use_mst:
      if self.other_prototypes == 'memory':
        mem, filled = self.memory_prototypes()
        keys = jnp.broadcast_to(mem[None], (own.shape[0],) + mem.shape)
        key_mask = jnp.broadcast_to(filled[None], own.shape + filled.shape[1:])
      else:
        keys, key_mask = protos, present
      transfer, _ = self.mst_attn(v_enh, keys, key_mask & ~own[..., None])
      terms['mst'], teacher = seg_ce(self.mst_cls, self.mst_pixels,
                                     v_enh + transfer)

    # Self-distillation: the enhanced/transferred prediction teaches the head.
    if teacher is not None and w.get('kd', 0.0):
      student = self._select_own([logits[n] for n in self.domain_names], own)
      kd = losses.kl_divergence(jax.lax.stop_gradient(teacher), student,
                                self.kd_temperature)
      mask = labelled
      if self.target >= 0:
        mask &= (domain == self.target)[:, None, None]
      terms['kd'] = jnp.sum(jnp.where(mask, kd, 0.0)) / jnp.maximum(
          jnp.sum(mask), 1.0)

    # Cross-domain consistency: every other head j, mapped into the sample's
    # domain k through the learned transition T[j->k], must explain the
    # domain-k labels. Starts once the memory holds prototypes.
    if self.use_mst and w.get('cons', 0.0):
      t = transition_matrix(self.memory_associations())           # [K,K,Cj,Ck]
      t_own = jnp.einsum('bk,kj...->bj...', own.astype(jnp.float32), t)
      probs = jnp.stack([self._pad(jax.nn.softmax(logits[n], axis=-1))
                         for n in self.domain_names], axis=1)     # [B,J,h,w,C]
      q = jnp.einsum('bjhwc,bjck->bjhwk', probs, t_own)
      ce = -jnp.sum(gt[:, None] * jnp.log(q + 1e-6), axis=-1) / jnp.maximum(
          coverage[:, None], 1e-6)                                 # [B,J,h,w]
      ready = jnp.any(self.memory_prototypes()[1], axis=-1)        # [K]
      pairs = ~own & ready[None, :] & jnp.any(own & ready[None, :], axis=1,
                                              keepdims=True)
      if self.target >= 0:
        pairs &= (jnp.arange(k) == self.target)[None, :]
      mask = pairs[:, :, None, None] & labelled[:, None]
      terms['cons'] = jnp.sum(jnp.where(mask, ce, 0.0)) / jnp.maximum(
          jnp.sum(mask), 1.0)

    metrics, total = {}, 0.0
    for key, value in terms.items():
      metrics[f'sst_{key}'] = value
      scale = ramp if key in ('kd', 'cons') else 1.0
      total = total + scale * w.get(key, 0.0) * value
    return total, metrics


# The parser features (``aux``) that can serve as MSA scales.
SCALES = ('res2', 'res5', 'context', 'decoder')


def make_sst(config, domains) -> SST:
  """The first reconstruction's module for ``config.sst``."""
  cfg = config.sst
  if cfg.prior not in ('bias', 'kl', 'none'):
    raise ValueError(f"config.sst.prior must be 'bias', 'kl' or 'none', got "
                     f'{cfg.prior!r}')
  if cfg.other_prototypes not in ('predicted', 'memory'):
    raise ValueError("config.sst.other_prototypes must be 'predicted' or "
                     f"'memory', got {cfg.other_prototypes!r}")
  unknown = [s for s in cfg.scales if s not in SCALES]
  if unknown or not cfg.scales:
    raise ValueError(f'config.sst.scales must be features of the parser '
                     f'{SCALES}, got {tuple(cfg.scales)}')
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
