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
