"""Helpers shared by the tests."""

import json
import pathlib

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


def expected_torch_shapes(target_variables, name_fn):
  """The PyTorch state dict (names and shapes) a target tree would accept.

  ``{torch_name: shape}`` for ``pretrained.import_state_dict`` with
  ``name_fn``: what a fake checkpoint needs to load into ``target_variables``.
  """
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from sst_jax.models import pretrained  # pylint: disable=g-import-not-at-top
  # pylint: disable=protected-access
  flat = traverse_util.flatten_dict(dict(target_variables))
  return {name: pretrained._flax_shape_to_torch(flat[key].shape, key[-1])
          for name, key in pretrained._name_table(target_variables,
                                                  name_fn).items()}


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


def train_parts(config):
  """What training builds from ``config`` (the library's plain forms).

  Returns ``(domains, model, sst_model, tx, init_fn)``: the validated
  domains, the parser, the SST module (or None), the optimizer and
  ``init_fn``, a key -> a fresh train state for ``config``'s crops.
  """
  # pylint: disable=g-import-not-at-top
  import functools
  from sst_jax import config_lib
  from sst_jax import optim
  from sst_jax import recipe
  # pylint: enable=g-import-not-at-top
  domains = config_lib.validate_config(config)
  model, sst_model = recipe.build_models(config, domains)
  tx = optim.make_optimizer(config.optim, config.total_steps)
  init_fn = functools.partial(
      recipe.init_train_state, model=model, sst_model=sst_model, tx=tx,
      image_size=config.data.crop_size)
  return domains, model, sst_model, tx, init_fn


def jit_train_setup(config):
  """Domain names, the parser, a jit-initialized state and the jitted step.

  The step is ``steps.train_step`` under plain ``jax.jit`` (one device, no
  donation).
  """
  import functools  # pylint: disable=g-import-not-at-top
  from sst_jax import steps  # pylint: disable=g-import-not-at-top
  domains, model, sst_model, tx, init_fn = train_parts(config)
  names = [d.name for d in domains]
  state = jax.jit(init_fn)(jax.random.key(0))
  step = jax.jit(functools.partial(
      steps.train_step, model=model, sst_model=sst_model, tx=tx,
      domain_names=names, cfg=config))
  return names, model, state, step


def fake_schp_npz(path, domain: str, num_classes: int = 7):
  """A random SCHP-layout state dict of a tiny SCHP network, saved as .npz.

  ResNet-50 depth at width 4 with 8-wide heads; BatchNorm variances
  positive. What ``Parser.load``/``--model=`` read as an SCHP checkpoint.
  """
  # pylint: disable=g-import-not-at-top
  from sst_jax.models import pretrained
  from sst_jax.models import schp
  # pylint: enable=g-import-not-at-top
  module = schp.AugmentCE2P(
      num_classes={domain: num_classes}, backbone='resnet50', width=4,
      context_features=8, edge_features=8, decoder_features=8,
      skip_features=8, fusion_features=8)
  shapes = expected_torch_shapes(
      pretrained.abstract_variables(module), pretrained.schp_name_fn())
  rng = np.random.default_rng(0)
  state = {k: (rng.uniform(0.5, 1.5, s) if k.endswith('running_var')
               else rng.normal(0, 0.3, s)).astype(np.float32)
           for k, s in shapes.items()}
  pretrained.save_npz(state, path)
  return path


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  """Leaf by leaf ``assert_allclose``; a failure names the leaf's path."""
  la = jax.tree_util.tree_leaves_with_path(a)
  lb = jax.tree.leaves(b)
  assert len(la) == len(lb)
  for (path, x), y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                               atol=atol, err_msg=jax.tree_util.keystr(path))


def random_record(rng, h=24, w=30, c=20):
  """A decoded example: random uint8 ``image`` and ``label`` below ``c``."""
  return {'image': rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
          'label': rng.integers(0, c, (h, w), dtype=np.uint8)}


def train_steps(workdir) -> list[int]:
  """The train steps in ``workdir``'s ``metrics.jsonl`` so far.

  The file may be being written: a partial last line is skipped.
  """
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  steps = []
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        record = json.loads(line)
      except json.JSONDecodeError:  # a line being written
        continue
      if record['kind'] == 'train':
        steps.append(record['step'])
  return steps
