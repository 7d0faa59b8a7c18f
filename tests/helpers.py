"""Helpers shared by the tests."""

import jax
import jax.numpy as jnp
import numpy as np


def random_like(abstract, seed: int = 0):
  """Concrete random leaves for an abstract tree (no compilation needed).

  Floats are random (BatchNorm variances positive), so a leaf that is
  dropped or re-initialized on the way changes the logits; integers are zero.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      return np.zeros(leaf.shape, leaf.dtype)
    if jax.tree_util.keystr(path).endswith("['var']"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(leaf.dtype)
    return rng.normal(0, 0.3, leaf.shape).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def write_workdir(workdir, variant=None, seed: int = 0, step: int = 3,
                  size: int = 32, edit_metadata=None):
  """A tiny-config checkpoint written as training writes one, random values.

  The TrainState (parser, SST parameters and memory, optimizer state) gets
  its structure from ``recipe.init_train_state`` through ``jax.eval_shape``
  and random values (``random_like``): no init compilation.
  ``edit_metadata(metadata) -> metadata`` changes what is saved.

  Returns:
    ``(config, domains, model, sst_model)``.
  """
  # pylint: disable=g-import-not-at-top
  import os
  import sys
  from sst_jax import checkpointing
  from sst_jax import config_lib
  from sst_jax import optim
  from sst_jax import recipe
  from sst_jax import train
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'configs'))
  import tiny
  # pylint: enable=g-import-not-at-top
  config = tiny.get_config(variant)
  domains = config_lib.validate_config(config)
  model, sst_model = recipe.build_models(config, domains)
  tx = optim.make_optimizer(config.optim, config.total_steps)
  state = random_like(jax.eval_shape(lambda r: recipe.init_train_state(
      r, model=model, sst_model=sst_model, tx=tx, image_size=size),
                                     jax.random.key(seed)), seed)
  manager = checkpointing.make_manager(workdir, async_save=False)
  metadata = train.checkpoint_metadata(config, domains, step)
  if edit_metadata is not None:
    metadata = edit_metadata(metadata)
  checkpointing.save(manager, step, state, {'next_index': step}, metadata,
                     force=True)
  manager.wait_until_finished()
  manager.close()
  return config, domains, model, sst_model


class Interrupt(Exception):
  """Raised by :func:`interrupt_training_after` in place of a batch."""


def interrupt_training_after(monkeypatch, batches: int):
  """Training's input iterators raise :class:`Interrupt` after ``batches``.

  Simulates a run killed between steps: whatever was checkpointed before
  stays, nothing after.
  """
  from sst_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  original = pipeline.train_iterator

  def interrupting(*args, **kwargs):
    it = original(*args, **kwargs)

    class Wrapped:
      served = 0

      def __next__(self):
        if self.served == batches:
          raise Interrupt()
        self.served += 1
        return next(it)

      def get_state(self):
        return it.get_state()

    return Wrapped()

  monkeypatch.setattr(pipeline, 'train_iterator', interrupting)


def tiny_config(arg='baseline', **overrides):
  """``configs/tiny.py:<arg>`` with dotted-key overrides (``'sst.dim'=8``)."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  config = tiny.get_config(arg)
  with config.unlocked():
    for key, value in overrides.items():
      node = config
      *path, leaf = key.split('.')
      for p in path:
        node = node[p]
      node[leaf] = value
  return config
