"""Export: SST stripped, baseline FLOPs, same logits, StableHLO reload."""

import json
import os
import subprocess
import sys

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sst_jax import checkpointing
from sst_jax import config_lib
from sst_jax import export as export_lib
from sst_jax import optim
from sst_jax import recipe
from sst_jax import steps
from sst_jax import train
from sst_jax.models import parser as parser_lib

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'configs'))
import tiny  # pylint: disable=g-import-not-at-top,wrong-import-position

import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position

SIZE = 32


def make_workdir(workdir, variant=None, seed=0):
  """A checkpoint written exactly as training writes one (no train steps).

  The TrainState (parser, SST parameters and memory, optimizer state) gets
  its structure from ``recipe.init_train_state`` via ``jax.eval_shape`` and
  random values, which keeps the test free of slow init compilations.
  """
  config = tiny.get_config(variant)
  if config.parsing == 'dedicated':
    config.init_from = '/source_workdir'  # only read when training starts
  domains = config_lib.validate_config(config)
  model, sst_model = recipe.build_models(config, domains)
  tx = optim.make_optimizer(config.optim, config.total_steps)
  state = helpers.random_like(jax.eval_shape(lambda r: recipe.init_train_state(
      r, model=model, sst_model=sst_model, tx=tx, image_size=SIZE,
      frozen_source=config_lib.dedicated_source(config)),
                                      jax.random.key(seed)), seed)
  manager = checkpointing.make_manager(workdir, async_save=False)
  checkpointing.save(manager, 3, state, {'next_index': 3},
                     train.checkpoint_metadata(config, domains, 3), force=True)
  manager.wait_until_finished()
  manager.close()
  return config, domains, model, sst_model


@pytest.fixture(scope='module')
def universal(tmp_path_factory):
  root = tmp_path_factory.mktemp('export')
  workdir, out = str(root / 'work'), str(root / 'export')
  config, domains, model, sst_model = make_workdir(workdir)
  info = export_lib.export(workdir, out)
  return dict(workdir=workdir, out=out, config=config, domains=domains,
              model=model, sst_model=sst_model, info=info)


def _flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree), sep='/')


def _image(batch, seed=0):
  return np.random.default_rng(seed).normal(
      size=(batch, SIZE, SIZE, 3)).astype(np.float32)


def test_export_has_no_sst_leaf_and_only_parser_tree(universal):
  meta, params, model_state, _ = export_lib.load_checkpoint(
      universal['workdir'])
  # The checkpoint does hold SST parameters and memory, so stripping matters.
  assert 'sst' in params and 'sst_memory' in model_state
  module, variables, info = export_lib.load_exported(universal['out'])
  flat = _flat(variables)
  assert not [k for k in flat if 'sst' in k.lower()]
  assert set(variables) == {'params', 'batch_stats'}
  heads = [d.name for d in universal['domains']]
  fresh = parser_lib.make_parser(universal['config'].model, heads,
                                 [d.num_classes for d in universal['domains']])
  abstract = jax.eval_shape(
      lambda x: fresh.init(jax.random.key(0), x),
      jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32))
  want = {k: v.shape for k, v in _flat(abstract).items()}
  assert {k: v.shape for k, v in flat.items()} == want
  # Values are the checkpoint's parser leaves, bit for bit.
  ckpt = _flat(steps.parser_variables(params, model_state))
  for k, v in flat.items():
    np.testing.assert_array_equal(v, ckpt[k])
  assert [d['name'] for d in info['domains']] == heads
  assert info['preprocessing']['input_size'] == SIZE
  assert module.num_classes == {d.name: d.num_classes
                                for d in universal['domains']}
  with open(os.path.join(universal['out'], 'export.json')) as f:
    assert json.load(f)['model']['backbone'] == 'resnet_tiny'


def _flops(fn, *args, compile_=True):
  lowered = jax.jit(fn).lower(*args)
  return (lowered.compile() if compile_ else lowered).cost_analysis()['flops']


def test_exported_forward_has_baseline_flops(universal):
  module, variables, _ = export_lib.load_exported(universal['out'])
  x = jnp.asarray(_image(2))
  exported = _flops(lambda v, x: module.apply(v, x)[0], variables, x)
  heads = [d.name for d in universal['domains']]
  fresh = parser_lib.make_parser(universal['config'].model, heads,
                                 [d.num_classes for d in universal['domains']],
                                 implementations=recipe.speed_paths())
  fresh_vars = jax.eval_shape(lambda x: fresh.init(jax.random.key(1), x), x)
  baseline = _flops(lambda v, x: fresh.apply(v, x)[0], fresh_vars, x)
  # The training forward with the SST modules costs more, so equality above
  # is a real check that the SST modules are gone.
  _, params, model_state, _ = export_lib.load_checkpoint(universal['workdir'])
  batch = {'image': x, 'label': jnp.zeros((2, SIZE, SIZE), jnp.int32),
           'domain': jnp.array([0, 1], jnp.int32)}

  def loss_flops(sst_model):
    def f(p, s, b):
      return steps.compute_losses(
          p, s, b, model=universal['model'],
          sst_model=sst_model, domain_names=heads, cfg=universal['config'],
          train=False)[0]
    # Pre-compilation HLO cost analysis: enough to compare, and fast.
    return _flops(f, params, model_state, batch, compile_=False)

  with_sst, without_sst = (loss_flops(universal['sst_model']),
                           loss_flops(None))
  print(f'flops: exported {exported:.4g} baseline {baseline:.4g}; training '
        f'losses with SST {with_sst:.4g} without {without_sst:.4g}')
  assert exported == baseline
  assert with_sst > 1.05 * without_sst


def test_exported_logits_equal_training_model(universal):
  _, params, model_state, _ = export_lib.load_checkpoint(universal['workdir'])
  heads = tuple(d.name for d in universal['domains'])
  x = jnp.asarray(_image(3, seed=1))
  want = steps.predict_logits(steps.parser_variables(params, model_state), x,
                              model=universal['model'], heads=heads)
  module, variables, _ = export_lib.load_exported(universal['out'])
  got = export_lib.forward_fn(module, variables, heads)(x)
  for h in heads:
    assert got[h].shape == (3, SIZE, SIZE, want[h].shape[-1])
    np.testing.assert_allclose(got[h], want[h], atol=1e-6, rtol=0)
  serialized = export_lib.load_serialized(universal['out'])(x)
  for h in heads:
    np.testing.assert_allclose(serialized[h], want[h], atol=1e-5, rtol=0)


_RELOAD = r'''
import sys
import jax, numpy as np
data = np.load(sys.argv[2])
exp = jax.export.deserialize(bytearray(open(sys.argv[1], 'rb').read()))
out = {}
for key in ('x1', 'x3'):
  for head, lg in exp.call(data[key]).items():
    out[f'{key}/{head}'] = np.asarray(lg)
np.savez(sys.argv[3], **out)
assert not any(m.startswith(('sst_jax', 'flax')) for m in sys.modules)
print('shapes', exp.in_avals[0].shape)
'''


def test_serialized_forward_reloads_in_fresh_process(universal, tmp_path):
  _, params, model_state, _ = export_lib.load_checkpoint(universal['workdir'])
  heads = tuple(d.name for d in universal['domains'])
  inputs = {'x1': _image(1, seed=2), 'x3': _image(3, seed=3)}
  np.savez(tmp_path / 'in.npz', **inputs)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run(
      [sys.executable, '-c', _RELOAD,
       os.path.join(universal['out'], export_lib.FORWARD_FILE),
       str(tmp_path / 'in.npz'), str(tmp_path / 'out.npz')],
      capture_output=True, text=True, env=env, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  assert "shapes (b, 32, 32, 3)" in proc.stdout
  got = np.load(tmp_path / 'out.npz')
  for key, x in inputs.items():
    want = steps.predict_logits(steps.parser_variables(params, model_state),
                                jnp.asarray(x), model=universal['model'],
                                heads=heads)
    for h in heads:
      diff = np.abs(got[f'{key}/{h}'] - want[h]).max()
      print(f'{key} {h}: max abs diff {diff:.2e}')
      assert got[f'{key}/{h}'].shape == want[h].shape
      assert diff <= 1e-5


def test_default_heads_read_parsing_and_the_older_mode_sst_field():
  domains = [{'name': 'a', 'classes': ['x']}, {'name': 'b', 'classes': ['y']}]
  for key in ('parsing', 'mode_sst'):  # 'mode_sst': sst_jax 0.1.0's name
    meta = {'domains': domains, key: 'dedicated', 'target': 'b'}
    assert export_lib.parsing_of(meta) == 'dedicated'
    assert export_lib.select_heads(meta) == ['b']
    assert export_lib.select_heads(dict(meta, **{key: 'universal'})) == [
        'a', 'b']
    assert export_lib.select_heads(meta, ['a']) == ['a']


def test_dedicated_export_keeps_only_target_head(tmp_path):
  workdir = str(tmp_path / 'work')
  config, _, _, _ = make_workdir(workdir, 'dedicated', seed=3)
  info = export_lib.export(workdir, str(tmp_path / 'e'), serialize=False)
  target = config.target
  assert [d['name'] for d in info['domains']] == [target]
  module, variables, _ = export_lib.load_exported(str(tmp_path / 'e'))
  # The target network only: no SST module, no frozen source.
  assert sorted(variables) == ['batch_stats', 'params']
  assert not any('sst' in k or 'frozen' in k for k in variables['params'])
  for col in ('params',):
    assert sorted(k for k in variables[col] if k.startswith('head_')) == [
        f'head_{target}']
  assert module.num_classes == {target: 7}
  # The values are the trained target's, bit for bit, not the frozen
  # source's (random_like draws the two copies independently, so every
  # leaf differs between them).
  _, params, model_state, _ = export_lib.load_checkpoint(workdir)
  frozen = model_state['frozen']
  flat = _flat(variables)
  target_leaves = _flat(steps.parser_variables(params, model_state))
  source_leaves = _flat(steps.parser_variables(frozen['params'],
                                               frozen['model_state']))
  assert flat and set(flat) <= set(target_leaves)
  for k, v in flat.items():
    np.testing.assert_array_equal(v, target_leaves[k])
    assert not np.array_equal(v, source_leaves[k]), k
  logits, _ = module.apply(variables, jnp.asarray(_image(1)))
  assert set(logits) == {target}
  # Selecting heads explicitly overrides the default, and is checked.
  other = [n for n in config.domains if n != target][0]
  info = export_lib.export(workdir, str(tmp_path / 'e2'), [other],
                           serialize=False)
  assert [d['name'] for d in info['domains']] == [other]
  assert export_lib.main([f'--workdir={workdir}', f'--output={tmp_path}/e3',
                          '--domains=nope', '--no_serialize']) == 2
