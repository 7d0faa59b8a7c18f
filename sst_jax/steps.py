"""Pure train and eval steps. No I/O; ``train.py`` jit-compiles them once.

Parameters live in ``state.params = {'parser': ..., 'sst': ...}`` and
non-trainable state in ``state.model_state = {'batch_stats': ...,
'sst_memory': ...}``. Everything under ``'sst'`` / ``'sst_memory'`` is used
only here, in training: the deployed network is ``params['parser']`` with
``model_state['batch_stats']`` and nothing else.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sst_jax import losses
from sst_jax import metrics as metrics_lib
from sst_jax.data import transforms
from sst_jax.models import layers


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Any
  model_state: Any
  opt_state: Any


def parser_variables(params, model_state) -> dict:
  """The inference network's variables (what export keeps)."""
  return {'params': params['parser'],
          'batch_stats': model_state['batch_stats']}


def normalize_images(image, image_hw=None):
  """The network input: uint8 pixels -> float32, ImageNet mean and std.

  Batches cross to the devices as uint8 (a quarter of float32's bytes) and
  become the network input here, inside the compiled train, evaluation and
  prediction functions: the one definition of the normalization
  (``transforms.IMAGENET_MEAN``/``IMAGENET_STD``). A floating-point
  ``image`` is already the network input (e.g. SCHP's BGR normalization,
  the float32 contract of ``export``'s serialized function) and is returned
  as is.

  Args:
    image: uint8 RGB ``[B, H, W, 3]``, or a normalized float array.
    image_hw: optional int32 ``[B, 2]``, the rows and columns each uint8
      image covers from the top-left of its canvas; the padding beyond them
      becomes exactly 0 (the mean colour), as evaluation and prediction
      canvases are defined.

  Returns:
    float ``[B, H, W, 3]``.

  Raises:
    TypeError: for an integer dtype other than uint8.
  """
  if jnp.issubdtype(image.dtype, jnp.floating):
    return image
  if image.dtype != jnp.uint8:
    raise TypeError(f'images must be uint8 pixels or a normalized float '
                    f'array, got {image.dtype}')
  x = (image.astype(jnp.float32) - transforms.IMAGENET_MEAN) / (
      transforms.IMAGENET_STD)
  if image_hw is not None:
    rows = jnp.arange(image.shape[1]) < image_hw[:, :1]    # [B, H]
    cols = jnp.arange(image.shape[2]) < image_hw[:, 1:]    # [B, W]
    x = jnp.where((rows[:, :, None] & cols[:, None, :])[..., None], x, 0.0)
  return x


def compute_losses(params, model_state, batch, *, model, sst_model,
                   domain_names: Sequence[str], cfg, train: bool = True):
  """All training losses for one global batch.

  Returns:
    ``(loss, (metrics, new_model_state))``.
  """
  image, label, domain = batch['image'], batch['label'], batch['domain']
  image = normalize_images(image)  # uint8 pixels from the input pipeline
  frozen = model_state.get('frozen')
  source = None
  if frozen is not None:
    # Dedicated parsing: the first cfg.batch_size rows are the target's, the
    # rest the source domains'. The frozen source (network, MSA, MSE) reads
    # the source rows; the target network only its own.
    n = cfg.batch_size
    source = frozen_source_sets(jax.lax.stop_gradient(frozen),
                                image[n:], label[n:], domain[n:],
                                model=model, sst_model=sst_model)
    image, label, domain = image[:n], label[:n], domain[:n]
  (logits, aux), updates = model.apply(
      parser_variables(params, model_state), image, train=train,
      mutable=['batch_stats'])
  size = label.shape[1:3]
  # Each sample's own head, gathered at the logits' stride and then resized
  # (bilinear resizing is per channel, so this equals resizing every head and
  # picking afterwards, at a fraction of the cost).
  own = layers.resize_bilinear(
      own_domain_logits(logits, domain, domain_names), size)
  num_classes = jnp.asarray([logits[n].shape[-1] for n in domain_names])
  if cfg.loss.iou_weight:
    ce, iou = losses.own_head_losses(own, label, num_classes[domain], domain,
                                     len(domain_names))
    loss = ce + cfg.loss.iou_weight * iou
    metrics = {'ce': ce, 'iou': iou}
  else:
    ce = losses.own_head_cross_entropy(own, label, num_classes[domain])
    loss = ce
    metrics = {'ce': ce}
  new_state = dict(model_state, batch_stats=updates['batch_stats'])
  if 'edge' in aux and cfg.loss.edge_weight:
    edge = losses.balanced_edge_loss(
        layers.resize_bilinear(aux['edge'].astype(jnp.float32), size), label)
    loss += cfg.loss.edge_weight * edge
    metrics['edge'] = edge
  if sst_model is not None:
    (sst_loss, sst_metrics), sst_updates = sst_model.apply(
        {'params': params['sst'], 'sst_memory': model_state['sst_memory']},
        aux, label, domain, train=train, mutable=['sst_memory'],
        **({} if source is None else {'source': source}))
    loss += sst_loss
    metrics.update(sst_metrics)
    new_state['sst_memory'] = sst_updates['sst_memory']
  metrics['loss'] = loss
  return loss, (metrics, new_state)


def frozen_source_sets(frozen, image, label, domain, *, model, sst_model):
  """The frozen source's MSA and MSE node sets on the batch's source rows.

  ``frozen`` is ``model_state['frozen']``: the source's
  ``{'params': {'parser', 'sst'}, 'model_state': {'batch_stats',
  'sst_memory'}}``, fixed for the whole of dedicated training (inference
  mode: running BatchNorm statistics, no adjacency update).
  """
  params, state = frozen['params'], frozen['model_state']
  _, aux = model.apply(parser_variables(params, state), image, train=False)
  return sst_model.apply(
      {'params': params['sst'], 'sst_memory': state['sst_memory']}, aux,
      label, domain, train=False, method=type(sst_model).node_sets)


def train_step(state: TrainState, batch: dict, *, model, sst_model,
               tx: optax.GradientTransformation, domain_names, cfg,
               lr_fn: Callable | None = None):
  """One optimizer step; returns ``(new_state, metrics)``.

  ``metrics['nonfinite']`` is 1 when the loss is NaN/inf; in that case the
  update is skipped (the state only advances its step), so a checkpoint
  written later never contains NaN parameters.
  """
  grad_fn = jax.value_and_grad(compute_losses, has_aux=True)
  (loss, (metrics, model_state)), grads = grad_fn(
      state.params, state.model_state, batch, model=model,
      sst_model=sst_model, domain_names=domain_names, cfg=cfg)
  finite = jnp.isfinite(loss)

  def update(params, opt_state, model_state):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, model_state

  # A branch, not a select per leaf: the update is computed (in place, the
  # state being donated) only when the loss is finite, and the old state is
  # not kept alive beside the new one, as selects would keep it (the times:
  # docs/history.md, "The loss, the upsampling gradient, the optimizer
  # branch and the renders").
  params, opt_state, model_state = jax.lax.cond(
      finite, update, lambda p, o, _: (p, o, state.model_state),
      state.params, state.opt_state, model_state)
  new_state = TrainState(step=state.step + 1, params=params,
                         model_state=model_state, opt_state=opt_state)
  metrics['nonfinite'] = (~finite).astype(jnp.float32)
  metrics['grad_norm'] = optax.tree.norm(grads)
  if lr_fn is not None:
    metrics['lr'] = lr_fn(state.step)
  return new_state, metrics


def predict_logits(variables, image, *, model, heads: Sequence[str],
                   flip_perms: dict[str, np.ndarray] | None = None,
                   scales: Sequence[float] = (1.0,),
                   average: str = 'probs', image_hw=None) -> dict:
  """Logits at input resolution, averaged over scales and flips.

  With one view the raw logits are returned. With several, ``average``
  picks the rule: ``'probs'`` averages the probabilities (softmax) and
  returns their log; ``'logits'`` averages the logits themselves, SCHP's
  rule (its ``evaluate.py``), which the argmax of ``'probs'`` need not
  match.

  Args:
    image: uint8 ``[B, S, S, 3]`` pixels or the normalized network input
      (``normalize_images``).
    flip_perms: ``{head: permutation}`` to add the flipped view; the flipped
      prediction's left/right channels are swapped back with the domain's
      flip permutation before averaging.
    average: ``'probs'`` or ``'logits'``.
    image_hw: the uint8 images' extent in the canvas (``normalize_images``).

  Raises:
    ValueError: on another ``average``.
  """
  if average not in ('probs', 'logits'):
    raise ValueError(f"average must be 'probs' or 'logits', got {average!r}")
  image = normalize_images(image, image_hw)
  size = image.shape[1:3]
  views = {h: [] for h in heads}
  for s in scales:
    x = image if s == 1.0 else layers.resize_bilinear(
        image, (max(int(size[0] * s + 0.5), 8), max(int(size[1] * s + 0.5), 8)))
    flips = [False, True] if flip_perms else [False]
    for flip in flips:
      xi = x[:, :, ::-1] if flip else x
      logits, _ = model.apply(variables, xi, train=False, heads=heads)
      for h in heads:
        lg = layers.resize_bilinear(logits[h], size)
        if flip:
          lg = lg[:, :, ::-1][..., flip_perms[h]]
        views[h].append(lg)
  if len(scales) == 1 and not flip_perms:
    return {h: v[0] for h, v in views.items()}
  if average == 'logits':
    return {h: jnp.mean(jnp.stack(vs), axis=0) for h, vs in views.items()}
  return {h: jnp.log(jnp.mean(jnp.stack(
      [jax.nn.softmax(v, axis=-1) for v in vs]), axis=0) + 1e-12)
          for h, vs in views.items()}


def own_domain_logits(logits: dict, domain, domain_names) -> jnp.ndarray:
  """Each sample's own-head logits, class axis padded to the largest head.

  Padding classes get a large negative logit, so ``argmax`` never picks them.
  """
  c_max = max(logits[n].shape[-1] for n in domain_names)
  stacked = jnp.stack([
      jnp.pad(logits[n], [(0, 0)] * 3 + [(0, c_max - logits[n].shape[-1])],
              constant_values=-1e9) for n in domain_names], axis=1)
  own = jax.nn.one_hot(domain, len(domain_names), dtype=stacked.dtype)
  return jnp.einsum('bk,bkhwc->bhwc', own, stacked)


def label_grid_logits(variables, batch, *, model,
                      domain_names: Sequence[str],
                      flip_perms: dict | None = None,
                      scales: Sequence[float] = (1.0,)) -> jnp.ndarray:
  """Each sample's own-head logits on its original label grid.

  One compiled function serves every domain: all heads are evaluated (1x1
  convolutions, negligible) and each sample keeps its own domain's, class
  axis padded to the largest head (``own_domain_logits``).
  ``resize_h``/``resize_w`` map input-resolution predictions onto the
  original label grid.

  Returns:
    ``[B, L, L, C]`` (L: ``eval.label_size``, C: the largest class count).
  """
  image = normalize_images(batch['image'], batch.get('image_hw'))
  if tuple(scales) == (1.0,) and not flip_perms:
    # One view: the upsampling of the parser's (stride-4) logits to the input
    # and the mapping onto the label grid are both linear along each axis, so
    # they compose into one [L, h] matrix per axis and sample. Applied to the
    # low-resolution logits of the sample's own head, this skips resizing
    # every head's logits to the input first (docs/results.md,
    # "Evaluation").
    logits, _ = model.apply(variables, image, train=False,
                            heads=tuple(domain_names))
    lg = own_domain_logits(logits, batch['domain'], domain_names)
    up_h = layers.interp_matrix(image.shape[1], lg.shape[1], False)
    up_w = layers.interp_matrix(image.shape[2], lg.shape[2], False)
    rows = jnp.einsum('blh,hk->blk', batch['resize_h'], up_h)
    cols = jnp.einsum('bmw,wk->bmk', batch['resize_w'], up_w)
  else:
    logits = predict_logits(variables, image, model=model,
                            heads=tuple(domain_names), flip_perms=flip_perms,
                            scales=scales)
    lg = own_domain_logits(logits, batch['domain'], domain_names)
    rows, cols = batch['resize_h'], batch['resize_w']
  lg = jnp.einsum('blh,bhwc->blwc', rows, lg)
  return jnp.einsum('bmw,blwc->blmc', cols, lg)


def eval_predictions(variables, batch, *, model, domain_names: Sequence[str],
                     flip_perms: dict | None = None,
                     scales: Sequence[float] = (1.0,)) -> jnp.ndarray:
  """Class ids at the original label resolution, each sample's own head."""
  return jnp.argmax(label_grid_logits(
      variables, batch, model=model, domain_names=domain_names,
      flip_perms=flip_perms, scales=scales), axis=-1)


def eval_step(variables, batch, *, model, domain_names: Sequence[str],
              num_classes: int, flip_perms: dict | None = None,
              scales: Sequence[float] = (1.0,)):
  """One batch's ``[C, C]`` confusion matrix and its predictions.

  C is the largest class count. Padding examples (``valid=False``) are not
  counted. Batches hold one domain each, so the caller accumulates one matrix
  per domain.

  Returns:
    ``(confusion, pred)``: int32 ``[C, C]`` and the uint8 class ids
    ``[B, L, L]`` on the label grid.
  """
  pred = eval_predictions(variables, batch, model=model,
                          domain_names=domain_names, flip_perms=flip_perms,
                          scales=scales)
  confusion = metrics_lib.confusion_matrix(pred, batch['label'], num_classes,
                                           batch['valid'][:, None, None])
  return confusion, pred.astype(jnp.uint8)
