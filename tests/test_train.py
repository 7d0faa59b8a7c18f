"""Training: exact resume, checkpoint refusal, outputs, compilation ahead.

(The train step itself, e.g. 8 devices = 1 device: tests/test_steps.py.)
"""

import contextlib
import json
import os
import sys
import threading

import jax
import numpy as np
import pytest

import helpers
from helpers import assert_trees_close
from sst_jax import checkpointing
from sst_jax import config_lib
from sst_jax import domains as domains_lib
from sst_jax import evaluate as evaluate_lib
from sst_jax import optim
from sst_jax import parallel
from sst_jax import recipe
from sst_jax import steps
from sst_jax import train
from sst_jax.data import pipeline


@contextlib.contextmanager
def recorded_compilations():
  """Yields the functions lowered or compiled meanwhile, as 'name [thread]'."""
  compiles = []

  def listener(event, duration, **kwargs):
    del duration
    # jax.monitoring's events for lowering and for XLA compilation.
    if event in ('/jax/core/compile/jaxpr_to_mlir_module_duration',
                 '/jax/core/compile/backend_compile_duration'):
      compiles.append(f"{kwargs.get('fun_name', '?')} "
                      f'[{threading.current_thread().name}]')
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def replicated_setup(config, mesh):
  """Domains, models, optimizer and a jit-initialized state replicated on mesh."""
  domains, model, sst_model, tx, init_fn = helpers.train_parts(config)
  state = jax.jit(init_fn, out_shardings=parallel.replicated(mesh))(
      jax.random.key(0))
  return domains, model, sst_model, tx, state


def load_state(workdir, step=None):
  manager = checkpointing.make_manager(workdir, async_save=False)
  step = manager.latest_step() if step is None else step
  return checkpointing.restore(manager, step)['state']


@pytest.mark.platform_behaviour
def test_cheaply_compiled_initialization_is_bitwise_the_default():
  """XLA:CPU behaviour: init compiled at level 1 equals level 2 bit for bit."""
  config = helpers.tiny_config('sst')
  *_, init_fn = helpers.train_parts(config)
  repl = parallel.replicated(parallel.make_mesh(1))
  rng = jax.random.key(3)
  want = jax.jit(init_fn, out_shardings=repl)(rng)
  got = train.run_init(init_fn, repl, rng)
  paths = jax.tree_util.tree_leaves_with_path(want)
  assert len(paths) == len(jax.tree.leaves(got)) > 10
  for (path, a), b in zip(paths, jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a),
                                  err_msg=jax.tree_util.keystr(path))


def test_compile_ahead_runs_in_order_inline_or_in_one_background_thread():
  """The helper's contract, for one process and for several."""
  calls = []

  def record(name):
    calls.append((name, threading.current_thread().name))
    return name

  def fail():
    raise ValueError('compilation failed')

  # Several processes: each call runs at once, in the caller's thread.
  with train.CompileAhead(inline=True) as ahead:
    first = ahead.submit(record, 'init')
    assert calls == [('init', threading.current_thread().name)]
    assert first.done() and first.result()[0] == 'init'
    ahead.submit(record, 'step')
    with pytest.raises(ValueError, match='compilation failed'):
      ahead.submit(fail)
  assert [c[0] for c in calls] == ['init', 'step']

  # One process: in submission order, in one background thread; an error
  # surfaces at result().
  calls.clear()
  with train.CompileAhead(inline=False) as ahead:
    submitted = [ahead.submit(record, n) for n in ('init', 'step', 'eval')]
    failed = ahead.submit(fail)
    assert [f.result()[0] for f in submitted] == ['init', 'step', 'eval']
    with pytest.raises(ValueError, match='compilation failed'):
      failed.result()
  assert [c[0] for c in calls] == ['init', 'step', 'eval']
  assert len({c[1] for c in calls}) == 1
  assert calls[0][1].startswith('compile')


def test_initial_state_is_computed_ahead_from_its_arguments(monkeypatch):
  """``initialize_state`` run ahead returns the initialized state.

  Everything it needs comes as arguments (nothing is read from names the
  caller rebinds meanwhile), so frequent thread switches change nothing.
  """
  config = helpers.tiny_config('sst')
  domains, _, _, tx, init_fn = helpers.train_parts(config)
  mesh = parallel.make_mesh(2)
  interval = sys.getswitchinterval()
  sys.setswitchinterval(1e-6)
  try:
    with train.CompileAhead(inline=False) as ahead:
      fresh = ahead.submit(train.initialize_state, config, domains, init_fn,
                           tx, mesh)
      # Meanwhile the caller computes the same state itself.
      want = train.run_init(init_fn, parallel.replicated(mesh),
                            jax.random.key(config.seed))
      state, _ = fresh.result()
  finally:
    sys.setswitchinterval(interval)
  assert isinstance(state, steps.TrainState)
  head = state.params['parser']['head_synthetic_pascal']['kernel']
  assert head.sharding == parallel.replicated(mesh)
  paths = jax.tree_util.tree_leaves_with_path(want)
  assert len(paths) == len(jax.tree.leaves(state)) > 10
  for (path, a), b in zip(paths, jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a),
                                  err_msg=jax.tree_util.keystr(path))


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path,
                                                           monkeypatch):
  config = helpers.tiny_config(total_steps=6, checkpoint_every=3, eval_every=0,
                       async_checkpoints=False)
  full = str(tmp_path / 'full')
  train.train_and_evaluate(config, full)

  resumed = str(tmp_path / 'resumed')
  # Stopped one step past the checkpoint at step 3.
  with monkeypatch.context() as patch:
    helpers.interrupt_training_after(patch, 4)
    with pytest.raises(helpers.Interrupt):
      train.train_and_evaluate(config, resumed)
  assert checkpointing.make_manager(resumed).latest_step() == 3
  train.train_and_evaluate(config, resumed)
  a, b = load_state(full, 6), load_state(resumed, 6)
  assert_trees_close(a['params'], b['params'], rtol=1e-6, atol=1e-7)
  assert_trees_close(a['model_state'], b['model_state'], rtol=1e-6, atol=1e-7)


def test_end_to_end_outputs_and_mismatch_refusal(tmp_path):
  workdir = str(tmp_path / 'run')
  config = helpers.tiny_config('sst', total_steps=4, checkpoint_every=2, eval_every=4)
  results = train.train_and_evaluate(config, workdir)
  assert set(results) == {'synthetic_pascal', 'synthetic_cihp'}
  records = [json.loads(l) for l in open(os.path.join(workdir,
                                                      'metrics.jsonl'))]
  evals = [r for r in records if r['kind'] == 'eval']
  assert evals and {'synthetic_pascal', 'synthetic_cihp'} <= set(evals[-1])
  assert 0.0 <= evals[-1]['synthetic_pascal']['miou'] <= 1.0
  train_lines = [r for r in records if r['kind'] == 'train']
  assert all(np.isfinite(r['loss']) for r in train_lines)
  assert {'images_per_sec', 'eta_sec', 'sst_mse', 'sst_mst'} <= set(
      train_lines[-1])
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  pngs = os.listdir(os.path.join(workdir, 'predictions'))
  assert 'step_0000004.png' in pngs and 'associations_0000004.png' in pngs
  assert checkpointing.make_manager(workdir).latest_step() == 4

  # Same workdir, different class list for one domain: refused, by name.
  bad = domains_lib.Domain('synthetic_cihp_small',
                           domains_lib.get_domain('synthetic_cihp').classes[:5])
  meta = train.checkpoint_metadata(config, config_lib.validate_config(config), 4)
  meta['domains'][1]['classes'] = list(bad.classes)
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match='synthetic_cihp.*5 classes'):
    checkpointing.check_domains(meta, config_lib.validate_config(config), workdir)

  # Through the real entry point: a config whose domains differ is refused.
  other = helpers.tiny_config('sst', total_steps=6)
  with other.unlocked():
    other.domains = ['synthetic_pascal', 'synthetic_lip']
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match='synthetic_cihp'):
    train.train_and_evaluate(other, workdir)

  # Evaluation mode scores the same checkpoint the same way.
  with config.unlocked():
    config.mode = 'eval'
  again = train.train_and_evaluate(config, workdir)
  for name in results:
    assert again[name]['miou'] == pytest.approx(results[name]['miou'])


def test_init_backbone_from_imagenet_weights(tmp_path):
  """``config.init.backbone`` loads torchvision-layout weights before step 1."""
  from sst_jax.models import pretrained
  config = helpers.tiny_config(total_steps=1, eval_every=0, checkpoint_every=1)
  with config.unlocked():
    config.optim.lr = 0.0          # the step must not move the parameters
    config.optim.weight_decay = 0.0
    config.eval.num_vis = 0
  domains = config_lib.validate_config(config)
  model, _ = recipe.build_models(config, domains)
  target = pretrained.abstract_variables(model, (32, 32))
  shapes = helpers.expected_torch_shapes(target,
                                            pretrained.resnet_name_fn())
  rng = np.random.default_rng(0)
  state_dict = {k: rng.normal(size=s).astype(np.float32)
                for k, s in shapes.items()}
  path = str(tmp_path / 'imagenet.npz')
  pretrained.save_npz(state_dict, path)
  with config.unlocked():
    config.init.backbone = path
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  params = load_state(workdir)['params']['parser']['backbone']
  np.testing.assert_allclose(
      np.asarray(params['layer1_0']['conv1']['kernel']),
      state_dict['layer1.0.conv1.weight'].transpose(2, 3, 1, 0), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(params['bn1']['scale']),
                             state_dict['bn1.weight'], rtol=1e-6)


def test_dedicated_aux_rows_join_every_target_batch(tmp_path, monkeypatch):
  # (Without SST: with it, the aux rows go to a frozen source model,
  # tests/test_dedicated.py.)
  config = helpers.tiny_config('dedicated', total_steps=2, checkpoint_every=2,
                       eval_every=2, **{'sst.dedicated_aux_batch': 8,
                                        'sst.enabled': False})
  assert config_lib.global_batch_size(config) == 16
  served, original = [], pipeline.train_iterator

  def recording(*args, **kwargs):
    it = original(*args, **kwargs)

    class Recorded:

      def __next__(self):
        batch = next(it)
        served.append(batch['domain'].copy())
        return batch

      def get_state(self):
        return it.get_state()

    return Recorded()

  monkeypatch.setattr(pipeline, 'train_iterator', recording)
  train.train_and_evaluate(config, str(tmp_path))
  # Eight target (synthetic_pascal) rows, then eight of the other domain.
  assert len(served) == 2
  for domain in served:
    np.testing.assert_array_equal(domain, [0] * 8 + [1] * 8)
  records = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  last = [r for r in records if r['kind'] == 'train'][-1]
  assert last['images_per_sec'] / last['steps_per_sec'] == pytest.approx(16)

  with config.unlocked():
    config.sst.dedicated_aux_batch = -1
  with pytest.raises(ValueError, match='dedicated_aux_batch must be'):
    config_lib.validate_config(config)


def test_train_step_is_compiled_before_the_first_batch():
  """The step compiled from the batch spec serves the real batches as is."""
  config = helpers.tiny_config('baseline')
  mesh = parallel.make_mesh(2)
  domains, model, sst_model, tx, state = replicated_setup(config, mesh)
  names = [d.name for d in domains]
  lr_fn = optim.learning_rate_schedule(config.optim, config.total_steps)
  step = train.jit_train_step(config, model, sst_model, tx, names, lr_fn,
                              mesh)
  batch = pipeline.train_dataset(names, config.data, 4, seed=0)[0]
  spec = pipeline.train_batch_spec(config.data, 4)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == spec
  train.precompile_train_step(step, state, spec, mesh)

  with recorded_compilations() as compiles:
    state, _ = step(state, parallel.shard_batch(batch, mesh))
    jax.block_until_ready(state)
    assert not compiles, 'the first real batch compiled the step again'
    # The listener does see compilations.
    jax.block_until_ready(jax.jit(lambda x: x * 3 + 1)(np.float32(2)))
    assert compiles


def test_evaluation_is_compiled_ahead_and_batch_fits_the_devices():
  """Evaluator.precompile from shapes serves the first evaluation as is."""
  config = helpers.tiny_config('sst', **{'eval.batch_size': 3})
  mesh = parallel.make_mesh(2)
  domains, model, _, _, state = replicated_setup(config, mesh)
  variables = steps.parser_variables(state.params, state.model_state)
  evaluator = evaluate_lib.Evaluator(config, model, mesh, domains)
  assert evaluator.batch_size == 4  # 3 rounded up to the 2 devices
  batches, _ = pipeline.eval_batches(domains[1].name, 1, config.data, 4)
  batch = next(iter(batches))
  assert ({k: (v.shape, v.dtype) for k, v in batch.items()} ==
          pipeline.eval_batch_spec(config.data, 4))
  evaluator.precompile(jax.eval_shape(lambda: variables))
  with recorded_compilations() as compiles:
    results = evaluator(variables).results
  assert sorted(results) == sorted(d.name for d in domains)
  assert compiles and not [c for c in compiles if 'eval_batch_step' in c]
