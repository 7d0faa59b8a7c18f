"""MSA, MSE and MST as the paper's figures draw them (training only).

``docs/method.md`` separates what the figures show from what is
reconstructed here; every reconstructed choice is a field of ``config.sst``
except the few fixed in the code that it lists (under MST).

Notation: ``K`` label domains, domain k with ``Z_k`` classes, class axes
padded to ``C = max Z_k`` (padded slots are masked everywhere), ``D`` the
node width, taps t = 1..3 (``config.sst.taps``, coarse to fine along the
decoder), ``B`` the global batch.

* **MSA**: ``S_t^(k)[c]`` is the mean of tap t's D-projected features over
  the pixels labelled c in the step's domain-k images, summed over the whole
  global batch before dividing (so the same on any device count), with a
  presence mask.
* **MSE**: learnable class embeddings ``X_0^(k)``; ``SP_t`` injects ``S_t``
  (cross-attention of the nodes over the present ``S_t``) and propagates over
  the intra-domain matrix ``M_intra^(k)`` (learned from the labels: the EMA
  of the classes' spatial adjacency). ``X_3^(k) (x) F^(k)`` is a per-pixel
  cosine similarity, trained with cross-entropy: ``L_mse``.
* **MST**: for every ordered pair (k, j) of domains in the step, the static
  matrix ``M_0(k<-j)`` (from the embeddings) and the dynamic ``M_t(k<-j)``
  (from ``S_t``) map domain j's nodes onto domain k's; ``SM_t`` is the
  cosine distance between ``X_t^(k)`` and ``M_t(k<-j) X_t^(j)``: ``L_mst``.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

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


def masked_softmax(logits: jnp.ndarray, key_mask: jnp.ndarray) -> jnp.ndarray:
  """Softmax over the last axis restricted to ``key_mask``; all-masked -> 0."""
  logits = jnp.where(key_mask, logits, NEG_INF)
  attn = jax.nn.softmax(logits, axis=-1)
  return jnp.where(jnp.any(key_mask, axis=-1, keepdims=True), attn, 0.0)


def class_adjacency(masks: jnp.ndarray, dilation: int) -> jnp.ndarray:
  """``[B, C, C]``: ``sum_p dilate(mask_c)(p) mask_c'(p)``, unnormalized."""
  k = 2 * dilation + 1
  dilated = nn.max_pool(masks, (k, k), strides=(1, 1), padding='SAME')
  return jnp.einsum('bhwc,bhwd->bcd', dilated, masks)


def msa_pool(masks: jnp.ndarray, feats: jnp.ndarray, domain: jnp.ndarray,
             num_domains: int, eps: float = 1e-6
             ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """MSA: per-domain class means of features over the whole batch.

  ``S[k, c] = sum_{b in k, p} m[b, p, c] f[b, p] / sum_{b in k, p} m[b, p, c]``

  Under ``jit`` over a sharded batch the sums run over the global batch, so
  the result does not depend on how many devices hold it.

  Args:
    masks: ``[B, P, C]`` soft class masks (0 on ignore pixels and on classes
      outside each sample's domain).
    feats: ``[B, P, D]``.
    domain: ``[B]`` domain index of each sample.
    num_domains: K.
    eps: the mass under which a class counts as absent.

  Returns:
    ``S`` ``[K, C, D]`` (0 where absent) and ``present`` ``[K, C]``.
  """
  own = jax.nn.one_hot(domain, num_domains, dtype=feats.dtype)
  sums = jnp.einsum('bk,bpc,bpd->kcd', own, masks.astype(feats.dtype), feats)
  mass = jnp.einsum('bk,bpc->kc', own, masks.astype(feats.dtype))
  present = mass > eps
  return jnp.where(present[..., None],
                   sums / jnp.maximum(mass, eps)[..., None], 0.0), present


def row_normalize(m: jnp.ndarray) -> jnp.ndarray:
  """Rows divided by their sums (all-zero rows stay zero)."""
  return m / jnp.maximum(jnp.sum(m, axis=-1, keepdims=True), 1e-12)


def cosine(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """``[..., M, N]`` cosine similarities of ``a [..., M, D]``, ``b [..., N, D]``."""
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-6)
  b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-6)
  return jnp.einsum('...md,...nd->...mn', a, b)


def cross_matrices(a: jnp.ndarray, key_mask: jnp.ndarray,
                   temperature: float) -> jnp.ndarray:
  """``M(k<-j)`` for every ordered pair: row-softmax of cosine similarities.

  Args:
    a: ``[K, C, D]`` one vector per class of each domain (the embeddings
      ``X_0`` for the static matrix, ``S_t`` for the dynamic ones).
    key_mask: ``[K, C]``: the classes of domain j a row may map from.
    temperature: softmax temperature on the cosines.

  Returns:
    ``[K, K, C, C]``: ``M[k, j, c, e]``, rows summing to 1 over domain j's
    unmasked classes (0 rows where none is).
  """
  sim = cosine(a[:, None], a[None, :]) / temperature           # [K, K, C, C]
  return masked_softmax(sim, key_mask[None, :, None, :])


def mapping_distances(x: jnp.ndarray, m: jnp.ndarray,
                      stop_mapped: bool = False) -> jnp.ndarray:
  """SM: ``1 - cos(x^(k)[c], (M(k<-j) x^(j))[c])`` for every pair and class.

  Args:
    x: ``[K, C, D]`` node sets.
    m: ``[K, K, C, C]`` cross matrices (:func:`cross_matrices`).
    stop_mapped: no gradient through the mapped side ``M x^(j)``.

  Returns:
    ``[K, K, C]``.
  """
  mapped = jnp.einsum('kjce,jed->kjcd', m, x)
  if stop_mapped:
    mapped = jax.lax.stop_gradient(mapped)
  xn = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
  mn = mapped / jnp.maximum(jnp.linalg.norm(mapped, axis=-1, keepdims=True),
                            1e-6)
  return 1.0 - jnp.einsum('kcd,kjcd->kjc', xn, mn)


def masked_mean(values: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


# ----------------------------------------------------------------------------
# Modules.
# ----------------------------------------------------------------------------


class SemanticPropagation(nn.Module):
  """SP: inject the batch's class vectors, then propagate over M_intra.

  ``H = LN(X + W_o attn(X, S, S))`` (the nodes attend over the present
  classes' MSA vectors) and ``X' = LN(H + relu(Â H W))`` with ``Â`` the
  row-normalized intra-domain matrix. Shared by every domain: a new domain
  adds no parameters here.
  """
  dim: int

  @nn.compact
  def __call__(self, x, s, present, a_hat):
    """``x``, ``s`` ``[K, C, D]``; ``present`` ``[K, C]``; ``a_hat`` ``[K, C, C]``."""
    q = nn.Dense(self.dim, name='query')(x)
    k = nn.Dense(self.dim, name='key')(s)
    v = nn.Dense(self.dim, name='value')(s)
    attn = masked_softmax(jnp.einsum('kcd,ked->kce', q, k) /
                          math.sqrt(self.dim), present[:, None, :])
    h = nn.LayerNorm(name='inject_norm')(
        x + nn.Dense(self.dim, name='out')(jnp.einsum('kce,ked->kcd', attn, v)))
    g = nn.Dense(self.dim, name='propagate')(jnp.einsum('kce,ked->kcd', a_hat,
                                                        h))
    return nn.LayerNorm(name='propagate_norm')(h + jax.nn.relu(g))


class SST(nn.Module):
  """MSA + MSE + MST as drawn; returns the SST losses.

  Attributes:
    domain_names / num_classes: the label domains, in config order.
    dim: node width D.
    taps: ``aux`` features of the parser used as MSA's three taps.
    intra: ``'adjacency'`` (EMA of the classes' spatial adjacency in the
      labels) or ``'learned'`` (a trainable matrix per domain).
    intra_dilation: neighbourhood (pixels of the last tap) of adjacency.
    intra_momentum: EMA momentum of the adjacency.
    temperature: of the cosine logits of the ``X_3 (x) F`` output.
    cross_temperature: of the cross-domain matrices' softmax.
    mst_stop_gradient: ``'none'`` or ``'mapped'`` (no gradient through the
      mapped side ``M X^(j)`` of each SM term).
    use_mse / use_mst: the ``L_mse`` / ``L_mst`` terms.
    weights: ``{'mse', 'mst'}`` loss weights.
  """
  domain_names: Sequence[str]
  num_classes: Sequence[int]
  dim: int = 64
  taps: Sequence[str] = ('context', 'decoder_fuse1', 'decoder')
  intra: str = 'adjacency'
  intra_dilation: int = 2
  intra_momentum: float = 0.99
  temperature: float = 0.1
  cross_temperature: float = 0.1
  mst_stop_gradient: str = 'none'
  use_mse: bool = True
  use_mst: bool = True
  weights: dict | None = None

  @property
  def c_max(self) -> int:
    return max(self.num_classes)

  def class_mask(self) -> jnp.ndarray:
    """``[K, C]``: which padded class slots are real classes."""
    return jnp.arange(self.c_max)[None, :] < jnp.asarray(self.num_classes)[
        :, None]

  def _pad_rows(self, x):
    return jnp.pad(x, [(0, self.c_max - x.shape[0])] + [(0, 0)] * (x.ndim - 1))

  def setup(self):
    self.tap_proj = [nn.Dense(self.dim, name=f'tap_{t}') for t in self.taps]
    self.feature_proj = nn.Dense(self.dim, name='feature')
    self.embeddings = {
        n: self.param(f'embed_{n}', nn.initializers.normal(1.0), (c, self.dim))
        for n, c in zip(self.domain_names, self.num_classes)}
    self.sp = [SemanticPropagation(self.dim, name=f'sp{t + 1}')
               for t in range(len(self.taps))]
    if self.intra == 'adjacency':
      self.adjacency = {
          n: self.variable('sst_memory', f'adjacency_{n}',
                           lambda c=c: jnp.eye(c))
          for n, c in zip(self.domain_names, self.num_classes)}
    elif self.intra == 'learned':
      self.intra_logits = {
          n: self.param(f'intra_{n}', nn.initializers.zeros, (c, c))
          for n, c in zip(self.domain_names, self.num_classes)}

  # MSA ----------------------------------------------------------------------

  def aggregate(self, aux, label, domain):
    """``S_t`` ``[K, C, D]`` and ``present_t`` ``[K, C]`` for every tap.

    Also returns the last tap's class masks ``[B, h, w, C]`` (the targets
    of ``L_mse`` and the source of the adjacency).
    """
    real = self.class_mask()[domain]                             # [B, C]
    masks, s, present = {}, [], []
    for proj, tap in zip(self.tap_proj, self.taps):
      f = proj(aux[tap].astype(jnp.float32))                      # [B,h,w,D]
      size = tuple(f.shape[1:3])
      if size not in masks:
        masks[size] = soft_label_masks(label, self.c_max, size) * real[
            :, None, None, :]
      b, p = f.shape[0], size[0] * size[1]
      s_t, present_t = msa_pool(masks[size].reshape(b, p, self.c_max),
                                f.reshape(b, p, self.dim), domain,
                                len(self.domain_names))
      s.append(s_t)
      present.append(present_t)
    return s, present, masks[tuple(aux[self.taps[-1]].shape[1:3])]

  # M_intra --------------------------------------------------------------------

  def intra_matrices(self, gt, domain, train: bool) -> jnp.ndarray:
    """Row-normalized ``Â^(k)`` ``[K, C, C]`` (padded rows and columns 0)."""
    if self.intra == 'learned':
      mats = [jax.nn.softmax(self.intra_logits[n], axis=-1)
              for n in self.domain_names]
      return jnp.stack([self._pad_rows(self._pad_rows(m).T).T for m in mats])
    if train and not self.is_initializing():
      adj = jax.lax.stop_gradient(class_adjacency(gt, self.intra_dilation))
      own = jax.nn.one_hot(domain, len(self.domain_names))
      per_domain = jnp.einsum('bk,bce->kce', own, adj)            # [K, C, C]
      for j, (name, c) in enumerate(zip(self.domain_names, self.num_classes)):
        batch = row_normalize(per_domain[j, :c, :c])
        seen = jnp.sum(batch, axis=-1, keepdims=True) > 0        # [c, 1]
        old = self.adjacency[name].value
        m = self.intra_momentum
        self.adjacency[name].value = jnp.where(seen, m * old + (1 - m) * batch,
                                               old)
    return jnp.stack([
        self._pad_rows(self._pad_rows(row_normalize(
            self.adjacency[n].value)).T).T for n in self.domain_names])

  # MSE ------------------------------------------------------------------------

  def enhance(self, s, present, a_hat):
    """``[X_0, X_1, X_2, X_3]``, each ``[K, C, D]``."""
    x = jnp.stack([self._pad_rows(self.embeddings[n])
                   for n in self.domain_names])
    nodes = [x]
    for sp, s_t, p_t in zip(self.sp, s, present):
      x = sp(x, s_t, p_t, a_hat)
      nodes.append(x)
    return nodes

  # Cross-domain matrices --------------------------------------------------------

  def cross(self, x0, s, present):
    """``[M_0, M_1, M_2, M_3]``, each ``[K, K, C, C]`` (``M[k, j] = M(k<-j)``).

    ``M_0`` from the embeddings ``x0`` (static), ``M_t`` from ``S_t``
    (dynamic).
    """
    mats = [cross_matrices(x0, self.class_mask(), self.cross_temperature)]
    for s_t, p_t in zip(s, present):
      mats.append(cross_matrices(s_t, p_t, self.cross_temperature))
    return mats

  def associations(self) -> dict:
    """``{(k, j): M_0(k<-j)}`` ``[Z_k, Z_j]``: the static matrices (pictures)."""
    x0 = jnp.stack([self._pad_rows(self.embeddings[n])
                    for n in self.domain_names])
    m = cross_matrices(x0, self.class_mask(), self.cross_temperature)
    return {(kn, jn): m[a, b, :kc, :jc]
            for a, (kn, kc) in enumerate(zip(self.domain_names,
                                             self.num_classes))
            for b, (jn, jc) in enumerate(zip(self.domain_names,
                                             self.num_classes)) if a != b}

  # Losses ----------------------------------------------------------------------

  def node_sets(self, aux, label, domain, train: bool = False) -> dict:
    """MSA and MSE of one batch: everything MST and ``L_mse`` read.

    Returns:
      ``{'s': [S_1..S_3], 'present': [..], 'nodes': [X_0..X_3], 'gt': the
      last tap's class masks, 'in_step': [K] domains in the batch}``.
    """
    s, present, gt = self.aggregate(aux, label, domain)
    a_hat = self.intra_matrices(gt, domain, train)
    k = len(self.domain_names)
    return {'s': s, 'present': present,
            'nodes': self.enhance(s, present, a_hat), 'gt': gt,
            'in_step': jnp.any(jax.nn.one_hot(domain, k, dtype=bool), axis=0)}

  def __call__(self, aux, label, domain, train: bool = True,
               source: dict | None = None):
    """SST losses ``(total, metrics)``.

    Args:
      aux: the parser's features (``taps``).
      label: ``[B, H, W]`` ground truth; ``domain``: ``[B]``.
      train: update the adjacency statistics.
      source: dedicated parsing: the frozen source's :meth:`node_sets` on
        the batch's source rows (``aux``, ``label``, ``domain`` are then the
        target rows). MST then relates the target's node sets to the
        source's, in both directions, and the source's are constants.
    """
    w = dict(self.weights or {})
    own = self.node_sets(aux, label, domain, train)
    k = len(self.domain_names)
    terms = {}
    if self.use_mse:
      # X_3^(k) (x) F^(k): each pixel's cosine to its own domain's nodes.
      gt = own['gt']
      f = self.feature_proj(aux[self.taps[-1]].astype(jnp.float32))
      x3 = own['nodes'][-1][domain]                                # [B, C, D]
      sim = cosine(f.reshape(f.shape[0], -1, self.dim), x3).reshape(
          f.shape[:3] + (self.c_max,)) / self.temperature
      sim = jnp.where(self.class_mask()[domain][:, None, None, :], sim,
                      NEG_INF)
      coverage = jnp.sum(gt, axis=-1)
      terms['mse'] = -jnp.sum(gt * jax.nn.log_softmax(sim, axis=-1)) / (
          jnp.maximum(jnp.sum(coverage), 1e-6))
    if self.use_mst and k > 1:
      if source is None:
        sets = own
        pairs = own['in_step'][:, None] & own['in_step'][None, :]
      else:
        sets, pairs = self._with_source(own, source)
      pairs = pairs & ~jnp.eye(k, dtype=bool)
      rows = [self.class_mask()] + sets['present']
      sm = []
      for x_t, m_t, rows_t in zip(sets['nodes'],
                                  self.cross(sets['nodes'][0], sets['s'],
                                             sets['present']), rows):
        dist = mapping_distances(x_t, m_t,
                                 self.mst_stop_gradient == 'mapped')
        sm.append(masked_mean(dist, pairs[:, :, None] & rows_t[:, None, :]))
      for t, value in enumerate(sm):
        terms[f'sm{t}'] = value
      terms['mst'] = sum(sm) / len(sm)
    metrics, total = {}, 0.0
    for key, value in terms.items():
      metrics[f'sst_{key}'] = value
      total = total + w.get(key, 0.0) * value
    return total, metrics

  def _with_source(self, own: dict, source: dict):
    """Target domains' sets from ``own``, the others' from ``source``.

    Returns the combined sets and the ``[K, K]`` pairs MST relates: every
    pair of a target domain (in ``own``'s batch) and a source domain (in
    the source rows), both ways.
    """
    source = jax.lax.stop_gradient(
        {key: source[key] for key in ('s', 'present', 'nodes', 'in_step')})
    mine = own['in_step']

    def pick(a, b):
      return jnp.where(mine.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

    sets = {key: [pick(a, b) for a, b in zip(own[key], source[key])]
            for key in ('s', 'present', 'nodes')}
    theirs = source['in_step'] & ~mine
    pairs = (mine[:, None] & theirs[None, :]) | (theirs[:, None] & mine[None, :])
    return sets, pairs


def make_sst(config, domains):
  """The SST module for ``config.sst``, or None when disabled.

  ``config_lib.validate_config`` checks the fields (taps, intra, ...).
  """
  cfg = config.sst
  if not cfg.enabled:
    return None
  return SST(
      domain_names=tuple(d.name for d in domains),
      num_classes=tuple(d.num_classes for d in domains),
      dim=cfg.dim, taps=tuple(cfg.taps), intra=cfg.intra,
      intra_dilation=cfg.intra_dilation, intra_momentum=cfg.intra_momentum,
      temperature=cfg.temperature, cross_temperature=cfg.cross_temperature,
      mst_stop_gradient=cfg.mst_stop_gradient, use_mse=cfg.mse,
      use_mst=cfg.mst,
      weights={'mse': cfg.mse_weight if cfg.mse else 0.0,
               'mst': cfg.mst_weight if cfg.mst else 0.0})


def associations_fn(sst_model):
  """Jitted ``(sst_params, sst_memory) -> {(k, j): [C_k, C_j]}``, or None.

  The learned static cross-domain matrices; None without MST or with one
  domain.
  """
  if not sst_model.use_mst or len(sst_model.domain_names) < 2:
    return None
  return jax.jit(lambda params, memory: sst_model.apply(
      {'params': params, 'sst_memory': memory},
      method=type(sst_model).associations))


def association_images(associations: dict, domains) -> dict:
  """Heat maps of ``associations_fn``'s matrices, as one RGB image."""
  from sst_jax import heatmaps  # Host-side drawing, only when asked for.
  assoc = jax.device_get(associations)
  by_name = {d.name: d for d in domains}
  panels = []
  for (k, j), matrix in sorted(assoc.items()):
    panels.append(heatmaps.heatmap(
        matrix, by_name[k].classes, by_name[j].classes,
        title=f"{k} <- {j}", normalize_rows=True))
  return {"associations": heatmaps.tile(panels)}
