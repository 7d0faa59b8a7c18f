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
  its structure from ``train.init_train_state`` through ``jax.eval_shape``
  and random values (``random_like``): no init compilation.
  ``edit_metadata(metadata) -> metadata`` changes what is saved.

  Returns:
    ``(config, domains, model, sst_model)``.
  """
  # pylint: disable=g-import-not-at-top
  import os
  import sys
  from sst_jax import checkpointing
  from sst_jax import optim
  from sst_jax import train
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'configs'))
  import tiny
  # pylint: enable=g-import-not-at-top
  config = tiny.get_config(variant)
  domains = train.validate_config(config)
  model, sst_model = train.build_models(config, domains)
  tx = optim.make_optimizer(config.optim, config.total_steps)
  state = random_like(jax.eval_shape(lambda r: train.init_train_state(
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
