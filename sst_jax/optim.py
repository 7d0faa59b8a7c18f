"""Optimizers and learning-rate schedules from ``config.optim``."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup, then ``poly`` (power ``cfg.poly_power``) or ``cosine``
  decay to 0, or ``constant`` (``config_lib.validate_config`` checks
  ``cfg.schedule``)."""
  warmup = int(cfg.warmup_steps)
  decay_steps = max(total_steps - warmup, 1)
  if cfg.schedule == 'poly':
    main = optax.polynomial_schedule(cfg.lr, 0.0, cfg.poly_power, decay_steps)
  elif cfg.schedule == 'cosine':
    main = optax.cosine_decay_schedule(cfg.lr, decay_steps)
  else:
    main = optax.constant_schedule(cfg.lr)
  if warmup == 0:
    return main
  ramp = optax.linear_schedule(cfg.lr * cfg.warmup_init_factor, cfg.lr, warmup)
  return optax.join_schedules([ramp, main], [warmup])


def _decay_mask(params):
  # Convolution kernels decay; BatchNorm scales/biases and conv biases do not.
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
  """SGD with momentum or AdamW (``cfg.name``), decaying conv kernels only."""
  schedule = learning_rate_schedule(cfg, total_steps)
  # A chain in both cases: the optimizer state (and so the checkpoints)
  # keeps the structure it has always had.
  if cfg.name == 'sgd':
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay, mask=_decay_mask),
        optax.sgd(schedule, momentum=cfg.momentum))
  return optax.chain(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2,
                                 weight_decay=cfg.weight_decay,
                                 mask=_decay_mask))
