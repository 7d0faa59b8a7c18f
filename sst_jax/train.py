"""``train_and_evaluate(config, workdir)``: the training orchestrator."""

from __future__ import annotations

from concurrent import futures
import functools
import json
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sst_jax import checkpointing
from sst_jax import domains as domains_lib
from sst_jax import evaluate as evaluate_lib
from sst_jax import optim
from sst_jax import parallel
from sst_jax import steps
from sst_jax import writers
from sst_jax.data import pipeline
from sst_jax.models import layers
from sst_jax.models import parser as parser_lib
from sst_jax.models import sst as sst_lib


def compute_dtype(config):
  if config.dtype not in ('float32', 'bfloat16'):
    raise ValueError(f"config.dtype must be 'float32' or 'bfloat16', got "
                     f'{config.dtype!r}')
  return jnp.bfloat16 if config.dtype == 'bfloat16' else jnp.float32


def validate_config(config) -> tuple[domains_lib.Domain, ...]:
  """Checks cross-field constraints; returns the configured domains."""
  if not config.domains:
    raise ValueError('config.domains is empty: name at least one label domain')
  domains = domains_lib.get_domains(list(config.domains))
  if config.mode_sst not in ('universal', 'dedicated'):
    raise ValueError("config.mode_sst must be 'universal' or 'dedicated', got "
                     f'{config.mode_sst!r}')
  if config.mode_sst == 'dedicated' and config.target not in config.domains:
    raise ValueError(f'dedicated mode: config.target={config.target!r} is not '
                     f'one of config.domains {list(config.domains)}')
  if config.mode not in ('train', 'eval'):
    raise ValueError(f"config.mode must be 'train' or 'eval', got "
                     f'{config.mode!r}')
  layers.resolve_kernel_grad(config.model.get('conv_kernel_grad', 'auto'))
  layers.residual_relu(config.model.get('residual_relu', 'select'))
  if config.data.crop_size <= 0 or config.data.get('crop_width', 0) < 0:
    raise ValueError('config.data.crop_size must be > 0 and '
                     'config.data.crop_width >= 0 (0: square), got '
                     f'{config.data.crop_size} and '
                     f'{config.data.get("crop_width", 0)}')
  final_size = config.data.get('final_crop_size', 0)
  final_steps = config.data.get('final_crop_steps', 0)
  if final_size < 0 or (final_size and not 0 < final_steps <=
                        config.total_steps):
    raise ValueError(
        'config.data.final_crop_size must be >= 0 and, when set, '
        'config.data.final_crop_steps in [1, total_steps='
        f'{config.total_steps}]; got {final_size} and {final_steps}')
  if (config.sst.enabled and config.sst.variant == 'drawn'
      and config.mode_sst == 'dedicated'):
    raise ValueError(
        "config.mode_sst='dedicated' trains with sst.variant='first'; "
        "dedicated parsing from a frozen source with sst.variant='drawn' is "
        'not available yet')
  if (config.sst.enabled and config.sst.variant == 'drawn'
      and config.sst.fixed_batch and config.mode_sst == 'universal'
      and config.batch_size < len(config.domains)):
    raise ValueError(
        f'config.sst.fixed_batch: batch_size={config.batch_size} cannot hold '
        f'an image of each of the {len(config.domains)} domains')
  aux = config.sst.get('dedicated_aux_batch', 0)
  if not isinstance(aux, int) or aux < 0:
    raise ValueError('config.sst.dedicated_aux_batch must be an integer >= 0, '
                     f'got {aux!r}')
  if aux and config.mode_sst == 'dedicated' and len(config.domains) < 2:
    raise ValueError('config.sst.dedicated_aux_batch needs at least one '
                     'domain besides the target in config.domains')
  return domains


def dedicated_aux_batch(config) -> int:
  """Other-domain rows added to each dedicated batch (0: none added)."""
  if config.mode_sst != 'dedicated':
    return 0
  return int(config.sst.get('dedicated_aux_batch', 0))


def global_batch_size(config) -> int:
  """Rows of every training batch: ``batch_size`` plus dedicated aux rows."""
  return config.batch_size + dedicated_aux_batch(config)


def batch_groups(config, mix):
  """Fixed batch composition for ``pipeline.train_dataset`` (None: mixed).

  Dedicated training with ``sst.dedicated_aux_batch = A > 0``: every batch
  holds ``batch_size`` target samples and ``A`` samples of the other
  domains, mixed with ``mix``; so the target sees as many images per step
  as a single-domain run with the same ``batch_size``.
  """
  aux = dedicated_aux_batch(config)
  if aux:
    others = {n: w for n, w in mix.items() if n != config.target}
    return [({config.target: 1.0}, config.batch_size), (others, aux)]
  if (config.sst.enabled and config.sst.variant == 'drawn'
      and config.sst.fixed_batch):
    # SST as drawn: every step holds every domain in use (its node sets and
    # every domain pair exist in each step), in equal shares.
    used = [n for n in config.domains if float(mix.get(n, 1.0)) > 0]
    rows, extra = divmod(config.batch_size, len(used))
    return [({n: 1.0}, rows + (i < extra)) for i, n in enumerate(used)]
  return None


def final_crop_start(config) -> int:
  """Step after which training reads ``data.final_crop_size`` crops."""
  if not config.data.get('final_crop_size', 0):
    return config.total_steps + 1
  return config.total_steps - config.data.final_crop_steps


def build_models(config, domains):
  """The parser and (when enabled) the training-only SST module."""
  model = parser_lib.make_parser(config.model, [d.name for d in domains],
                                 [d.num_classes for d in domains],
                                 compute_dtype(config))
  sst_model = sst_lib.make_sst(config, domains)
  return model, sst_model


def init_train_state(rng, *, model, sst_model, tx, image_size: int):
  """Fresh parameters and optimizer state (jit this with out_shardings)."""
  r_parser, r_sst = jax.random.split(rng)
  image = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
  variables = model.init(r_parser, image, train=False)
  params = {'parser': variables['params']}
  model_state = {'batch_stats': variables['batch_stats']}
  if sst_model is not None:
    logits, aux = model.apply(variables, image, train=False)
    label = jnp.zeros((2, image_size, image_size), jnp.int32)
    sst_vars = sst_model.init({'params': r_sst, 'dropout': r_sst}, logits, aux,
                              label, jnp.zeros((2,), jnp.int32), train=False)
    params['sst'] = sst_vars['params']
    # Empty for modules that keep no statistics (e.g. sst.intra='learned').
    model_state['sst_memory'] = sst_vars.get('sst_memory', {})
  return steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          model_state=model_state, opt_state=tx.init(params))


# The initialization runs once, so on the CPU it is compiled with LLVM's
# optimization level 1 instead of XLA's default 2: the same parameters bit
# for bit (tests/test_train.py), in 2.3x less time for the synthetic model
# (8.6 s against 20.1 s; docs/results.md).
INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 1}


def run_init(init_fn, sharding, rng):
  """``jax.jit(init_fn, out_shardings=sharding)(rng)``, compiled cheaply on CPU."""
  lowered = jax.jit(init_fn, out_shardings=sharding).lower(rng)
  options = INIT_COMPILER_OPTIONS if jax.default_backend() == 'cpu' else None
  return lowered.compile(compiler_options=options)(rng)


def checkpoint_metadata(config, domains, step: int) -> dict:
  return {
      'step': int(step),
      **checkpointing.format_fields(),
      'domains': [d.to_json() for d in domains],
      'mode_sst': config.mode_sst,
      'target': config.target,
      'dtype': config.dtype,
      'model': json.loads(config.model.to_json_best_effort()),
      'config': json.loads(config.to_json_best_effort()),
  }


def merge_into(fresh, loaded, path=()):
  """Copies every leaf of ``loaded`` that ``fresh`` has, keeping new leaves.

  Used when continuing from a trained model with extra label domains: the
  shared network, existing heads and memory rows are kept bit-for-bit; new
  heads and memory rows keep their fresh initialization.

  Raises:
    ValueError: when a shared leaf's shape differs (naming its path).
  """
  if isinstance(fresh, dict):
    return {k: merge_into(v, loaded[k], path + (k,)) if k in loaded else v
            for k, v in fresh.items()}
  if np.shape(fresh) != np.shape(loaded):
    raise ValueError(f'init_from: {"/".join(path)} has shape '
                     f'{np.shape(loaded)} in the checkpoint but '
                     f'{np.shape(fresh)} in the config')
  return loaded


def load_init_from(config, domains, state):
  """Initializes params/model_state from another workdir's latest checkpoint."""
  manager, step, meta = checkpointing.open_latest(config.init_from,
                                                 'config.init_from')
  new = checkpointing.check_domains(meta, domains, config.init_from,
                                    allow_new=True)
  raw = checkpointing.restore_state(manager, step, sharding=state.step.sharding)
  manager.close()
  params = merge_into(jax.device_get(state.params), raw['params'])
  model_state = merge_into(jax.device_get(state.model_state),
                           raw['model_state'])
  writers.echo(f'initialized from {config.init_from} step {step}'
               + (f'; new domains: {", ".join(new)}' if new else ''))
  return params, model_state, new


def jit_train_step(config, model, sst_model, tx, domain_names, lr_fn, mesh):
  """The jitted update step: state replicated, batch sharded, state donated."""
  repl = parallel.replicated(mesh)
  return jax.jit(
      functools.partial(steps.train_step, model=model, sst_model=sst_model,
                        tx=tx, domain_names=domain_names, cfg=config,
                        lr_fn=lr_fn),
      donate_argnums=0,
      in_shardings=(repl, parallel.data_sharding(mesh), repl),
      out_shardings=(repl, repl))


def precompile_train_step(train_step, state, rng, batch_spec: dict, mesh):
  """Compiles ``train_step`` for batches of ``batch_spec`` before any exist.

  ``batch_spec`` is ``pipeline.train_batch_spec``'s ``{key: (shape, dtype)}``
  of the global batch. jit reuses the executable when the real batches come
  (same shapes, dtypes and shardings), so the first step does not compile.
  """
  data = parallel.data_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=data)
           for k, (shape, dtype) in batch_spec.items()}
  return train_step.lower(parallel.shapes_like(state, parallel.replicated(mesh)),
                          batch, rng).compile()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains (resuming from the latest checkpoint in ``workdir``) and evaluates.

  Returns:
    the final evaluation results ``{domain: scores}``.
  """
  domains = validate_config(config)
  domain_names = [d.name for d in domains]
  if config.mode == 'eval':
    return evaluate_lib.evaluate_checkpoint(config, workdir)

  # Set up mesh and models.
  mesh = parallel.make_mesh(config.num_devices or None)
  logging.info('process %d/%d, %d local / %d global devices',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  model, sst_model = build_models(config, domains)
  tx = optim.make_optimizer(config.optim, config.total_steps)
  lr_fn = optim.learning_rate_schedule(config.optim, config.total_steps)
  writer = writers.MetricWriter(workdir)

  # The state's shapes; the state itself comes from a checkpoint or from a
  # (jit-compiled) initialization, which runs in the background below.
  repl = parallel.replicated(mesh)
  init_fn = functools.partial(init_train_state, model=model,
                              sst_model=sst_model, tx=tx,
                              image_size=min(pipeline.crop_hw(config.data)))
  abstract = parallel.shapes_like(
      jax.eval_shape(init_fn, jax.random.key(config.seed)), repl)

  # Several processes must launch their computations in the same order, which
  # a background thread would not guarantee: with several, everything below
  # runs in order (the state is initialized first).
  sequential = jax.process_count() > 1
  fresh = run_init(init_fn, repl, jax.random.key(config.seed)) if (
      sequential) else None

  def initialize():
    """A fresh state, or one from a trained model / pretrained weights."""
    state = fresh if fresh is not None else run_init(
        init_fn, repl, jax.random.key(config.seed))
    if config.init_from:
      params, model_state, _ = load_init_from(config, domains, state)
      state = parallel.replicate(state.replace(
          params=params, model_state=model_state,
          opt_state=tx.init(params)), mesh)
    elif config.init.backbone:
      from sst_jax.models import pretrained
      variables = steps.parser_variables(*jax.device_get(
          (state.params, state.model_state)))
      variables, report = pretrained.load_backbone_into(variables,
                                                        config.init.backbone)
      params = dict(state.params, parser=variables['params'])
      model_state = dict(state.model_state,
                         batch_stats=variables['batch_stats'])
      state = parallel.replicate(state.replace(params=params,
                                               model_state=model_state), mesh)
      writers.echo(f'backbone weights from {config.init.backbone}: '
                   f'{report.summary()}')
    return state

  # Resume from the latest checkpoint.
  manager = checkpointing.make_manager(
      workdir, config.keep_checkpoints, async_save=config.async_checkpoints)
  start_step, data_state, state = 0, None, None
  latest = manager.latest_step()
  if latest is not None:
    meta = checkpointing.restore_metadata(manager, latest)
    checkpointing.check_domains(meta, domains, manager.directory)
    state, data_state = checkpointing.restore(manager, latest, abstract)
    start_step = int(latest)
    writers.echo(f'resuming from {manager.directory} step {start_step}')
  if start_step >= config.total_steps:
    writers.echo(f'{workdir} already holds the final checkpoint (step '
                 f'{start_step}); evaluating it')
  if sequential and state is None:
    state = initialize()

  # Input pipeline.
  mix = dict(config.data.mix)
  if config.mode_sst == 'dedicated':
    for name in domain_names:
      if name != config.target:
        mix.setdefault(name, config.sst.dedicated_other_weight)
  global_batch = global_batch_size(config)
  parallel.local_batch_size(global_batch, mesh)
  switch = final_crop_start(config)

  def phase_data_config(first_index):
    """``config.data`` of the training phase of batch ``first_index``."""
    data_cfg = config.data.copy_and_resolve_references()
    with data_cfg.unlocked():
      data_cfg.mix = mix
      if first_index >= switch:
        data_cfg.crop_size = config.data.final_crop_size
        data_cfg.crop_width = 0  # square
    return data_cfg

  def make_iterator(first_index):
    """Device batches from ``first_index`` to the phase's end, at its crop.

    Placed on the mesh one step ahead (``config.data.device_prefetch``).
    """
    data_cfg = phase_data_config(first_index)
    if first_index >= switch:
      writers.echo(f'steps {first_index + 1}-{config.total_steps}: '
                   '{}x{} crops'.format(*pipeline.crop_hw(data_cfg)))
    dataset = pipeline.train_dataset(
        domain_names, data_cfg, global_batch, config.seed,
        jax.process_index(), jax.process_count(),
        groups=batch_groups(config, mix))
    stop = config.total_steps
    if first_index < switch:
      stop = min(switch, stop)
    return parallel.DevicePrefetcher(
        pipeline.train_iterator(dataset, data_cfg, start_step=first_index,
                                stop_step=stop),
        mesh, config.data.device_prefetch)

  train_step = jit_train_step(config, model, sst_model, tx, domain_names,
                              lr_fn, mesh)

  # XLA compiles the initialization and the step (in C++, without the GIL)
  # while the input pipeline starts up (renders or reads its cache): on a CPU
  # each takes tens of seconds, and the first step then finds all of it done.
  first_index = (data_state or {}).get('next_index', start_step)
  spec = pipeline.train_batch_spec(phase_data_config(first_index),
                                   global_batch)

  def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0

  evaluator = evaluate_lib.Evaluator(config, model, mesh, domains)
  assoc_fn = sst_lib.associations_fn(sst_model) if sst_model else None

  def precompile_evaluation():
    evaluator.precompile(steps.parser_variables(abstract.params,
                                                abstract.model_state))
    if assoc_fn is not None:
      assoc_fn.lower(abstract.params['sst'],
                     abstract.model_state['sst_memory']).compile()

  eval_compiled = final_compiled = None
  rng = parallel.constant(lambda: jax.random.key(config.seed + 1), mesh)
  if sequential:
    # In order on every process, and compiled before the first step: the
    # processes then meet at the barrier below, not in a collective.
    data_iter = make_iterator(first_index)
    if start_step < config.total_steps:
      precompile_train_step(train_step, abstract, rng, spec, mesh)
    precompile_evaluation()
  else:
    pool = futures.ThreadPoolExecutor(1, thread_name_prefix='compile')
    try:
      fresh = pool.submit(timed, initialize) if state is None else None
      compiled = None
      if start_step < config.total_steps:
        compiled = pool.submit(timed, precompile_train_step, train_step,
                               abstract, rng, spec, mesh)
      # The evaluation's compilation, after the step's: it finishes in the
      # background during the first training steps if the pipeline is faster.
      # (Two compiling threads beside the pipeline's rendering made the
      # startup slower on two cores, not faster.)
      eval_compiled = pool.submit(timed, precompile_evaluation)
      if first_index < switch < config.total_steps:
        # The final phase's step (larger crops), compiled during training.
        final_compiled = pool.submit(
            precompile_train_step, train_step, abstract, rng,
            pipeline.train_batch_spec(phase_data_config(switch),
                                      global_batch), mesh)
      t0 = time.perf_counter()
      data_iter = make_iterator(first_index)
      pipeline_s = time.perf_counter() - t0
      done = []
      if fresh is not None:
        state, seconds = fresh.result()
        done.append(f'state initialized in {seconds:.0f} s')
      if compiled is not None:
        done.append(f'train step compiled in {compiled.result()[1]:.0f} s')
      if done:
        writers.echo(f'{", ".join(done)}, alongside the input pipeline start '
                     f'({pipeline_s:.0f} s)')
    finally:
      # On an input-pipeline error, report it now rather than after the
      # compilation (the worker finishes in the background).
      pool.shutdown(wait=False)

  def save(step, force=False):
    with jax.transfer_guard('allow'):  # Checkpoints copy the state to host.
      checkpointing.save(manager, step, state, data_iter.get_state(),
                         checkpoint_metadata(config, domains, step), force)

  def evaluate(step):
    nonlocal eval_compiled
    if eval_compiled is not None:
      # Wait for (and surface any error of) the background compilation
      # rather than compiling a second time.
      eval_compiled.result()
      eval_compiled = None
    variables = steps.parser_variables(state.params, state.model_state)
    extra = None
    # Evaluation places its batches and fetches scores and pictures.
    with jax.transfer_guard('allow'):
      if assoc_fn is not None:
        extra = sst_lib.association_images(
            assoc_fn(state.params['sst'], state.model_state['sst_memory']),
            domains)
      scores = evaluator(variables, step=step, workdir=workdir,
                         writer=writer, extra_images=extra)
    # Process 0 writes the images and events; the others wait here.
    parallel.sync_processes('evaluated', config.multihost.sync_timeout_s)
    return scores

  # Train loop.
  writers.echo(f'training steps {start_step + 1}-{config.total_steps}: '
               f'global batch {global_batch} over {mesh.devices.size} '
               f'devices, domains {", ".join(domain_names)}')
  progress = writers.Progress(config.total_steps, start_step, global_batch)
  pending, last_flush, results = [], start_step, None
  step = start_step
  parallel.sync_processes('training start', config.multihost.sync_timeout_s)
  t_start = time.perf_counter()
  # The steps make no implicit host<->device transfer (a hidden sync stalls
  # an accelerator); checkpoints and evaluations allow theirs.
  with jax.transfer_guard(config.transfer_guard):
    while step < config.total_steps:
      if step == switch and step != start_step:
        if final_compiled is not None:
          final_compiled.result()  # rather than compiling it a second time
        data_iter = make_iterator(step)
        if sequential:
          precompile_train_step(train_step, abstract, rng,
                                pipeline.train_batch_spec(
                                    phase_data_config(switch), global_batch),
                                mesh)
          parallel.sync_processes('final crop phase',
                                  config.multihost.sync_timeout_s)
      batch = next(data_iter)  # placed on the mesh a step ahead
      state, metrics = train_step(state, batch, rng)
      step += 1
      pending.append(metrics)
      is_last = step == config.total_steps
      do_ckpt = step % config.checkpoint_every == 0 or is_last
      do_eval = (config.eval_every and step % config.eval_every == 0
                 ) or is_last
      if step % config.log_every == 0 or do_ckpt or do_eval:
        host = jax.device_get(pending)  # the one fetch per log interval
        bad = [last_flush + 1 + i for i, m in enumerate(host)
               if m['nonfinite'] > 0]
        if bad:
          manager.wait_until_finished()
          raise FloatingPointError(
              f'non-finite loss at step {bad[0]} (between steps '
              f'{last_flush + 1} and {step}); no update was applied from that '
              f'step on. The last good checkpoint is step '
              f'{manager.latest_step()} in {manager.directory}')
        means = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        means['lr'] = float(host[-1].get('lr', 0.0))
        info = progress.update(step)
        writer.write(step, 'train', dict(means, **info))
        writers.echo(progress.line(step, means['loss'], info))
        pending, last_flush = [], step
      if do_ckpt:
        save(step, force=is_last)
      if do_eval:
        results = evaluate(step)
  if results is None:
    results = evaluate(step)
  manager.wait_until_finished()
  writer.write(step, 'summary', {
      'wall_time_sec': time.perf_counter() - t_start,
      'final_miou': {k: v['miou'] for k, v in results.items()}})
  writer.close()
  return results
