"""Optimizers and learning-rate schedules from ``config.optim``."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup, then ``poly`` (power ``cfg.poly_power``) or ``cosine``.

  With ``cfg.restart_steps = R > 0`` that schedule covers the first
  ``total_steps - R`` steps and the last ``R`` restart it: a linear warm-up
  from 0 to ``cfg.restart_lr`` over ``cfg.restart_warmup_steps``, then a
  cosine decay to 0 (e.g. a final phase on larger crops, see
  ``config.data.final_crop_steps``).
  """
  restart = int(cfg.restart_steps)
  if not 0 <= restart < total_steps:
    raise ValueError(f'optim.restart_steps must be in [0, total_steps='
                     f'{total_steps}), got {restart}')
  main = _base_schedule(cfg, total_steps - restart)
  if not restart:
    return main
  warmup = int(cfg.restart_warmup_steps)
  if not 0 <= warmup < restart or cfg.restart_lr <= 0:
    raise ValueError(
        'optim.restart_lr must be > 0 and optim.restart_warmup_steps in '
        f'[0, restart_steps={restart}); got {cfg.restart_lr} and '
        f'{warmup}')
  decay = optax.cosine_decay_schedule(cfg.restart_lr, restart - warmup)
  if warmup:
    decay = optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.restart_lr, warmup), decay], [warmup])
  return optax.join_schedules([main, decay], [total_steps - restart])


def _base_schedule(cfg, total_steps: int) -> optax.Schedule:
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
