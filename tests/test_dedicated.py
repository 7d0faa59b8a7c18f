"""Dedicated parsing as drawn: a frozen source, a target started from it."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from sst_jax import checkpointing
from sst_jax import config_lib
from sst_jax import optim
from sst_jax import recipe
from sst_jax import steps
from sst_jax import train


def _quick(arg, **overrides):
  """A tiny run that evaluates only at its end, on 8 images, synchronously."""
  return helpers.tiny_config(arg, **{
      'eval_every': 0, 'eval.num_vis': 0, 'data.max_eval_examples': 8,
      'async_checkpoints': False, **overrides})


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """A source model trained on synthetic_cihp only (2 steps)."""
  workdir = str(tmp_path_factory.mktemp('source'))
  config = _quick('sst,domains=cihp', total_steps=2,
                  checkpoint_every=2)
  train.train_and_evaluate(config, workdir)
  raw = checkpointing.restore(checkpointing.make_manager(workdir), 2)['state']
  return workdir, raw


def _dedicated(source_dir, **overrides):
  return _quick('dedicated', init_from=source_dir,
                **{'sst.dedicated_aux_batch': 8, **overrides})


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _initial_state(config):
  domains = config_lib.validate_config(config)
  model, sst_model = recipe.build_models(config, domains)
  tx = optim.make_optimizer(config.optim, config.total_steps)
  state = recipe.init_train_state(
      jax.random.key(3), model=model, sst_model=sst_model, tx=tx,
      image_size=32, frozen_source=config_lib.dedicated_source(config))
  params, model_state, new = train.load_init_from(config, domains, state)
  return domains, model, sst_model, params, model_state, new


def test_target_starts_as_the_source_and_the_frozen_copy_is_the_source(
    source):
  workdir, raw = source
  config = _dedicated(workdir)
  assert config_lib.dedicated_source(config)
  _, _, _, params, model_state, new = _initial_state(config)
  assert new == ['synthetic_pascal']
  saved = _flat({'params': raw['params'], 'model_state': raw['model_state']})
  target = _flat({'params': params, 'model_state': {
      k: v for k, v in model_state.items() if k != 'frozen'}})
  frozen = _flat(model_state['frozen'])
  for path, value in saved.items():
    np.testing.assert_array_equal(target[path], value, err_msg=path)
    np.testing.assert_array_equal(frozen[path], value, err_msg=path)
  # The target's new head and node set are the only additions.
  assert all('synthetic_pascal' in p for p in set(target) - set(saved))


def test_frozen_source_gets_no_gradient_and_mst_reaches_the_target(source):
  workdir, _ = source
  config = _dedicated(workdir, **{'sst.mse_weight': 0.0})
  domains, model, sst_model, params, model_state, _ = _initial_state(config)
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
           'label': rng.integers(0, 7, (16, 32, 32)).astype(np.int32),
           'domain': np.asarray([0] * 8 + [1] * 8, np.int32)}
  names = [d.name for d in domains]

  def loss(params, frozen):
    state = dict(model_state, frozen=frozen)
    total, (metrics, _) = steps.compute_losses(
        params, state, batch, model=model,
        sst_model=sst_model, domain_names=names, cfg=config)
    return total - metrics['ce'], metrics

  (value, metrics), (g_target, g_frozen) = jax.value_and_grad(
      loss, argnums=(0, 1), has_aux=True)(params, model_state['frozen'])
  assert float(metrics['sst_mst']) > 0 and float(value) > 0
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(g_frozen))
  norm = lambda t: float(jnp.sqrt(sum(jnp.sum(x * x)
                                      for x in jax.tree.leaves(t))))
  assert norm(g_target['parser']['backbone']) > 1e-6
  assert norm(g_target['sst']['embed_synthetic_pascal']) > 1e-6
  # The source domain's node set of the target module takes no part.
  assert norm(g_target['sst']['embed_synthetic_cihp']) == 0


def test_frozen_source_is_bitwise_unchanged_and_resumes_exactly(
    source, tmp_path, monkeypatch):
  workdir, raw = source
  # A copy of the source, deleted before the resume below: a resumed stage 2
  # must need nothing but its own workdir (the frozen copy is in it).
  source_dir = str(tmp_path / 'source')
  shutil.copytree(workdir, source_dir)
  config = _dedicated(source_dir, total_steps=4, checkpoint_every=2)
  full = str(tmp_path / 'full')
  train.train_and_evaluate(config, full)
  end = checkpointing.restore(checkpointing.make_manager(full), 4)['state']
  frozen = _flat(end['model_state']['frozen'])
  saved = _flat({'params': raw['params'], 'model_state': raw['model_state']})
  for path, value in saved.items():
    np.testing.assert_array_equal(frozen[path], value, err_msg=path)
  trained = _flat({'params': end['params']})
  assert any(not np.array_equal(trained[p], saved[p]) for p in trained
             if p in saved)

  # Stopped after step 3 (checkpoint at 2), then the same command again.
  resumed = str(tmp_path / 'resumed')
  with monkeypatch.context() as patch:
    helpers.interrupt_training_after(patch, 3)
    with pytest.raises(helpers.Interrupt):
      train.train_and_evaluate(config, resumed)
  assert checkpointing.make_manager(resumed).latest_step() == 2
  shutil.rmtree(source_dir)
  train.train_and_evaluate(config, resumed)
  again = checkpointing.restore(checkpointing.make_manager(resumed), 4)['state']
  want = _flat({'params': end['params'], 'model_state': end['model_state']})
  got = _flat({'params': again['params'],
               'model_state': again['model_state']})
  assert want.keys() == got.keys()
  for path, value in want.items():
    np.testing.assert_array_equal(got[path], value, err_msg=path)
