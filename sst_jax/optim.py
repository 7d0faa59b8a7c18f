"""Optimizers and learning-rate schedules from ``config.optim``."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup, then ``poly`` (power ``cfg.poly_power``) or ``cosine``."""
  warmup = int(cfg.warmup_steps)
  decay_steps = max(total_steps - warmup, 1)
  if cfg.schedule == 'poly':
    main = optax.polynomial_schedule(cfg.lr, cfg.lr * cfg.end_lr_factor,
                                     cfg.poly_power, decay_steps)
  elif cfg.schedule == 'cosine':
    main = optax.cosine_decay_schedule(cfg.lr, decay_steps,
                                       alpha=cfg.end_lr_factor)
  elif cfg.schedule == 'constant':
    main = optax.constant_schedule(cfg.lr)
  else:
    raise ValueError(f"optim.schedule must be 'poly', 'cosine' or 'constant', "
                     f'got {cfg.schedule!r}')
  if warmup == 0:
    return main
  ramp = optax.linear_schedule(cfg.lr * cfg.warmup_init_factor, cfg.lr, warmup)
  return optax.join_schedules([ramp, main], [warmup])


def _decay_mask(params):
  # Convolution kernels decay; BatchNorm scales/biases and conv biases do not.
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
  """SGD with momentum or AdamW, with weight decay and optional clipping."""
  schedule = learning_rate_schedule(cfg, total_steps)
  mask = None if cfg.decay_all else _decay_mask
  if cfg.name == 'sgd':
    parts = [optax.add_decayed_weights(cfg.weight_decay, mask=mask),
             optax.sgd(schedule, momentum=cfg.momentum, nesterov=cfg.nesterov)]
  elif cfg.name == 'adamw':
    parts = [optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2,
                         weight_decay=cfg.weight_decay,
                         mask=mask)]
  else:
    raise ValueError(f"optim.name must be 'sgd' or 'adamw', got {cfg.name!r}")
  if cfg.grad_clip_norm:
    parts.insert(0, optax.clip_by_global_norm(cfg.grad_clip_norm))
  return optax.chain(*parts)
