"""``train_and_evaluate(config, workdir)``: the training orchestrator."""

from __future__ import annotations

from concurrent import futures
import contextlib
import functools
import json
import signal
import threading
import time

from absl import logging
import jax
import ml_collections
import numpy as np

from sst_jax import checkpointing
from sst_jax import config_lib
from sst_jax import evaluate as evaluate_lib
from sst_jax import optim
from sst_jax import parallel
from sst_jax import recipe
from sst_jax import steps
from sst_jax import visualize
from sst_jax import writers
from sst_jax.data import pipeline
from sst_jax.models import sst as sst_lib


def run_init(init_fn, sharding, rng):
  """``jax.jit(init_fn, out_shardings=sharding)(rng)``, compiled cheaply.

  With ``recipe.init_compiler_options()``: on the CPU a cheaper LLVM
  optimization level giving the same values, elsewhere jit's defaults.
  """
  lowered = jax.jit(init_fn, out_shardings=sharding).lower(rng)
  return lowered.compile(
      compiler_options=recipe.init_compiler_options())(rng)


def checkpoint_metadata(config, domains, step: int) -> dict:
  return {
      'step': int(step),
      **checkpointing.format_fields(),
      'domains': [d.to_json() for d in domains],
      'parsing': config.parsing,
      'target': config.target,
      'dtype': config.dtype,
      'model': json.loads(config.model.to_json_best_effort()),
      'config': json.loads(config.to_json_best_effort()),
  }


def merge_into(fresh, loaded, path=()):
  """Copies every leaf of ``loaded`` that ``fresh`` has, keeping new leaves.

  Used when continuing from a trained model with extra label domains: the
  shared network, the existing domains' heads and SST leaves (embeddings,
  adjacency statistics) are kept bit-for-bit; the new domains' keep their
  fresh initialization.

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
  raw = checkpointing.restore(manager, step,
                             sharding=state.step.sharding)['state']
  manager.close()
  params = merge_into(jax.device_get(state.params), raw['params'])
  model_state = merge_into(jax.device_get(state.model_state),
                           raw['model_state'])
  if 'frozen' in model_state:
    # Dedicated parsing: the target starts as the source, and the frozen
    # copy is the same merged tree: the source's parameters and state, and
    # the fresh initialization of any new domain's leaves (the source has
    # none of its own for them; the frozen source reads only the batch's
    # source-domain rows).
    model_state['frozen'] = jax.tree.map(np.copy, {
        'params': params,
        'model_state': {k: v for k, v in model_state.items()
                        if k != 'frozen'}})
  writers.echo(f'initialized from {config.init_from} step {step}'
               + (f'; new domains: {", ".join(new)}' if new else ''))
  return params, model_state, new


def resume(manager, domains, abstract_state):
  """The latest checkpoint: ``(step, state, data_state)``.

  The state is restored onto ``abstract_state``'s shapes and shardings,
  after its label domains are checked against ``domains``. Without a
  checkpoint: ``(0, None, None)``.

  Raises:
    checkpointing.CheckpointMismatchError: naming the domain that differs.
  """
  step = manager.latest_step()
  if step is None:
    return 0, None, None
  meta = checkpointing.restore(manager, step, ('metadata',))['metadata']
  checkpointing.check_domains(meta, domains, manager.directory)
  restored = checkpointing.restore(manager, step, ('state', 'data'),
                                   target=abstract_state)
  state, data_state = restored['state'], restored['data']
  writers.echo(f'resuming from {manager.directory} step {step}')
  return int(step), state, data_state


def initialize_state(config, domains, init_fn, tx, mesh):
  """The state a run without a checkpoint starts from, replicated on ``mesh``.

  A fresh initialization (``init_fn`` under ``run_init``), then the
  parameters of ``config.init_from`` (a trained model) or
  ``config.init.backbone`` (pretrained backbone weights) when set.
  """
  state = run_init(init_fn, parallel.replicated(mesh),
                   jax.random.key(config.seed))
  if config.init_from:
    params, model_state, _ = load_init_from(config, domains, state)
    state = state.replace(params=params, model_state=model_state,
                          opt_state=tx.init(params))
    return parallel.replicate(state, mesh)
  if config.init.backbone:
    from sst_jax.models import pretrained  # pylint: disable=g-import-not-at-top
    variables = steps.parser_variables(*jax.device_get(
        (state.params, state.model_state)))
    variables, report = pretrained.load_backbone_into(variables,
                                                      config.init.backbone)
    params = dict(state.params, parser=variables['params'])
    model_state = dict(state.model_state, batch_stats=variables['batch_stats'])
    state = parallel.replicate(state.replace(params=params,
                                             model_state=model_state), mesh)
    writers.echo(f'backbone weights from {config.init.backbone}: '
                 f'{report.summary()}')
  return state


def jit_train_step(config, model, sst_model, tx, domain_names, lr_fn, mesh):
  """The jitted update step: state replicated, batch sharded, state donated."""
  repl = parallel.replicated(mesh)
  return jax.jit(
      functools.partial(steps.train_step, model=model, sst_model=sst_model,
                        tx=tx, domain_names=domain_names, cfg=config,
                        lr_fn=lr_fn),
      donate_argnums=0,
      in_shardings=(repl, parallel.data_sharding(mesh)),
      out_shardings=(repl, repl))


def precompile_train_step(train_step, state, batch_spec: dict, mesh):
  """Compiles ``train_step`` for batches of ``batch_spec`` before any exist.

  ``batch_spec`` is ``pipeline.train_batch_spec``'s ``{key: (shape, dtype)}``
  of the global batch. jit reuses the executable when the real batches come
  (same shapes, dtypes and shardings), so the first step does not compile.
  """
  data = parallel.data_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=data)
           for k, (shape, dtype) in batch_spec.items()}
  abstract = parallel.shapes_like(state, parallel.replicated(mesh))
  return train_step.lower(abstract, batch).compile()


def write_config_json(config, workdir, start_step: int):
  """Records the resolved config in ``<workdir>/config.json`` (process 0).

  A new workdir gets ``config.json``. A run resumed with a config that
  differs from it (e.g. more steps) leaves ``config.json`` as it is, writes
  its own config to ``config.<start_step>.json`` (the step it resumes from;
  a second run from that step replaces it) and says so. A resumed run with
  the same config writes nothing.

  Returns:
    the file written, or None.
  """
  if jax.process_index() != 0:
    return None
  resolved = json.loads(
      config.copy_and_resolve_references().to_json_best_effort())
  root = checkpointing.workdir_path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  path = root / 'config.json'
  if path.exists():
    try:
      earlier = json.loads(path.read_text())
    except json.JSONDecodeError:
      earlier = None
    if earlier == resolved:
      return None
    path = root / f'config.{start_step}.json'
    writers.echo(f'the config differs from {root / "config.json"} (an '
                 f'earlier run\'s, kept as is): this run\'s is in {path}')
  path.write_text(json.dumps(resolved, indent=1, sort_keys=True) + '\n')
  return path


class PreemptionWatch:
  """Stop requests: SIGTERM in one process, orbax's sync point in several.

  One process: ``install`` sets a SIGTERM handler (from the main thread
  only; ``restore`` puts the previous one back) that records the signal,
  and the loop saves and stops after the step it interrupted. Several
  processes: ``jax.distributed``'s preemption service catches SIGTERM on
  any host and picks a step that every process reaches
  (``CheckpointManager.reached_preemption``, asked after every step by
  every process); no Python handler is set then, as it would replace the
  service's. As a context manager it installs on entry and restores on
  exit.
  """

  def __init__(self, manager):
    self._manager = manager
    self._signal = None
    self._previous = None
    self._installed = False

  def install(self) -> None:
    if jax.process_count() > 1:
      return
    if threading.current_thread() is not threading.main_thread():
      logging.warning('training runs outside the main thread: SIGTERM is '
                      'not handled (Python sets handlers there only)')
      return
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    self._installed = True

  def _handle(self, signum, frame):
    del frame
    self._signal = signal.Signals(signum).name

  def restore(self) -> None:
    if self._installed:
      # None: the previous handler was not set from Python.
      signal.signal(signal.SIGTERM, self._previous if self._previous
                    is not None else signal.SIG_DFL)
      self._installed = False

  def __enter__(self) -> PreemptionWatch:
    self.install()
    return self

  def __exit__(self, *exc_info) -> None:
    self.restore()

  def reason(self, step: int) -> str | None:
    """Why training must stop after ``step`` (None: it need not)."""
    if self._signal:
      return self._signal
    if self._manager.reached_preemption(step):
      return 'a preemption notice (jax.distributed sync point)'
    return None


def check_finite(host_metrics, first_step: int, manager) -> None:
  """Fails fast on a non-finite loss, naming the step and the last checkpoint.

  Args:
    host_metrics: the fetched metrics of steps ``first_step, first_step + 1,
      ...`` (``train_step`` skips the update of a non-finite step).
    first_step: the step of ``host_metrics[0]``.
    manager: the run's checkpoint manager.

  Raises:
    FloatingPointError: when a step had a non-finite loss.
  """
  bad = [first_step + i for i, m in enumerate(host_metrics)
         if m['nonfinite'] > 0]
  if bad:
    manager.wait_until_finished()
    raise FloatingPointError(
        f'non-finite loss at step {bad[0]} (between steps {first_step} and '
        f'{first_step + len(host_metrics) - 1}); no update was applied from '
        f'that step on. The last good checkpoint is step '
        f'{manager.latest_step()} in {manager.directory}')


class CompileAhead:
  """Runs startup work (initialization, compilations) ahead of its use.

  ``submit(fn, *args)`` returns a future of ``(fn(*args), seconds)``.

  One process: the calls run one after another in one background thread
  (``compile_0``) while the caller starts the input pipeline (renders or
  reads its cache); XLA compiles in C++, without the GIL, and the first
  step finds the work done. (Two compiling threads beside the pipeline's
  rendering made the startup slower on two cores, not faster.)

  Several processes must launch their computations in the same order,
  which a background thread would not guarantee: with ``inline=True``
  each call runs at once in the caller's thread, in the order of the
  calls, and raises there; its future is done on return. Everything is
  then compiled before the first step, and the processes meet at a
  barrier (``parallel.sync_processes``) rather than in a collective.
  """

  def __init__(self, inline: bool = False):
    self.inline = inline
    self._pool = None if inline else futures.ThreadPoolExecutor(
        1, thread_name_prefix='compile')

  def submit(self, fn, *args) -> futures.Future:
    if self._pool is not None:
      return self._pool.submit(_timed, fn, *args)
    future = futures.Future()
    future.set_result(_timed(fn, *args))
    return future

  def close(self) -> None:
    """Returns at once: work already submitted finishes in the background."""
    if self._pool is not None:
      self._pool.shutdown(wait=False)

  def __enter__(self) -> CompileAhead:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def _timed(fn, *args):
  t0 = time.perf_counter()
  out = fn(*args)
  return out, time.perf_counter() - t0


class TrainingData:
  """The training batches, with ``config.data``'s crops.

  Dedicated parsing reads the target's rows, then the sources'
  (``config_lib.batch_groups``).
  """

  def __init__(self, config, domain_names, mesh):
    self.config, self.domain_names, self.mesh = config, domain_names, mesh
    self.mix = dict(config.data.mix)
    if config.parsing == 'dedicated':
      aux = bool(config_lib.dedicated_aux_batch(config))
      self.mix = {n: float(n == config.target or aux) for n in domain_names}
    self.batch_size = config_lib.global_batch_size(config)
    parallel.local_batch_size(self.batch_size, mesh)  # checks the split

  def data_config(self) -> ml_collections.ConfigDict:
    """``config.data`` with the mix training reads."""
    data_cfg = self.config.data.copy_and_resolve_references()
    with data_cfg.unlocked():
      data_cfg.mix = self.mix
    return data_cfg

  def batch_spec(self) -> dict:
    """``{key: (shape, dtype)}`` of the global batches."""
    return pipeline.train_batch_spec(self.data_config(), self.batch_size)

  def iterator(self, first_index: int) -> parallel.DevicePrefetcher:
    """Device batches from ``first_index`` to the last step.

    Placed on the mesh one step ahead (``config.data.device_prefetch``).
    """
    config, data_cfg = self.config, self.data_config()
    dataset = pipeline.train_dataset(
        self.domain_names, data_cfg, self.batch_size, config.seed,
        jax.process_index(), jax.process_count(),
        groups=config_lib.batch_groups(config, self.mix))
    return parallel.DevicePrefetcher(
        pipeline.train_iterator(dataset, data_cfg, start_step=first_index,
                                stop_step=config.total_steps),
        self.mesh, data_cfg.device_prefetch)


class TrainingEvaluation:
  """The evaluations during training, and what they leave in the workdir.

  ``evaluate.Evaluator`` scores the parser and draws its predictions; this
  adds the SST associations and writes it all: scores to the metric
  writer, pictures to ``<workdir>/predictions`` (process 0).
  """

  def __init__(self, config, model, sst_model, mesh, domains, writer,
               workdir):
    self.config, self.domains, self.writer = config, domains, writer
    self.evaluator = evaluate_lib.Evaluator(config, model, mesh, domains)
    self.assoc_fn = sst_lib.associations_fn(sst_model) if sst_model else None
    self.out_dir = checkpointing.workdir_path(workdir) / 'predictions'
    self.compiled = None

  def compile_ahead(self, ahead: CompileAhead, abstract_state) -> None:
    """Compiles the evaluation for states of ``abstract_state``'s shapes."""
    self.compiled = ahead.submit(self._compile, abstract_state)

  def _compile(self, abstract):
    self.evaluator.precompile(steps.parser_variables(abstract.params,
                                                     abstract.model_state))
    if self.assoc_fn is not None:
      self.assoc_fn.lower(abstract.params['sst'],
                          abstract.model_state['sst_memory']).compile()

  def score_and_write(self, step: int, state) -> dict:
    """Scores ``state`` and writes the results; returns ``{domain: scores}``."""
    if self.compiled is not None:
      # Wait for (and surface any error of) the compilation ahead rather
      # than compiling a second time.
      self.compiled.result()
    extra = {}
    # Evaluation places its batches and fetches scores and pictures.
    with jax.transfer_guard('allow'):
      if self.assoc_fn is not None:
        extra = sst_lib.association_images(
            self.assoc_fn(state.params['sst'],
                          state.model_state['sst_memory']), self.domains)
      evaluation = self.evaluator(
          steps.parser_variables(state.params, state.model_state),
          pictures=True)
    writers.echo(evaluate_lib.eval_line(step, evaluation))
    self.writer.write(step, 'eval', dict(
        evaluation.results, images_per_sec=evaluation.images_per_sec))
    if evaluation.grid is not None:  # process 0
      visualize.save_png(self.out_dir / f'step_{step:07d}.png',
                         evaluation.grid)
      self.writer.write_image(step, 'eval/predictions', evaluation.grid)
      for name, image in extra.items():
        visualize.save_png(self.out_dir / f'{name}_{step:07d}.png', image)
    self.writer.flush()
    # Process 0 writes the images and events; the others wait here.
    parallel.sync_processes('evaluated', self.config.multihost.sync_timeout_s)
    return evaluation.results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains (resuming from the latest checkpoint in ``workdir``) and evaluates.

  On SIGTERM (multi-host: at the preemption sync point) it saves a
  checkpoint after the current step, waits for it, closes the writers and
  returns None; running it again resumes from there exactly. The metric
  writers and the checkpoint manager are closed on every exit path.
  ``config.mode='eval'`` scores the latest checkpoint instead
  (``evaluate.score_latest_checkpoint``) and writes nothing.

  Returns:
    the final evaluation results ``{domain: scores}``, or None when stopped
    by a preemption.
  """
  domains = config_lib.validate_config(config)
  if config.mode == 'eval':
    return evaluate_lib.score_latest_checkpoint(config, workdir, domains)
  domain_names = [d.name for d in domains]
  total_steps = config.total_steps
  sync_timeout_s = config.multihost.sync_timeout_s
  with contextlib.ExitStack() as closing:
    # Mesh ---------------------------------------------------------------------
    mesh = parallel.make_mesh(config.num_devices or None)
    logging.info('process %d/%d, %d local / %d global devices',
                 jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())
    writer = writers.MetricWriter(workdir)
    closing.callback(writer.close)

    # Data ---------------------------------------------------------------------
    data = TrainingData(config, domain_names, mesh)

    # Model and state ----------------------------------------------------------
    model, sst_model = recipe.build_models(config, domains,
                                           recipe.speed_paths())
    tx = optim.make_optimizer(config.optim, total_steps)
    lr_fn = optim.learning_rate_schedule(config.optim, total_steps)
    # The state's shapes; the state itself comes from a checkpoint or from
    # initialize_state, run ahead below.
    init_fn = functools.partial(
        recipe.init_train_state, model=model, sst_model=sst_model, tx=tx,
        image_size=min(pipeline.crop_hw(config.data)),
        frozen_source=config_lib.dedicated_source(config))
    abstract = parallel.shapes_like(
        jax.eval_shape(init_fn, jax.random.key(config.seed)),
        parallel.replicated(mesh))

    # Checkpoint ---------------------------------------------------------------
    manager = checkpointing.make_manager(
        workdir, config.keep_checkpoints, async_save=config.async_checkpoints)
    closing.callback(manager.close)
    # From here on SIGTERM is recorded, not fatal: it stops the run at the
    # next point where nothing is lost (before the first step, or after one).
    preemption = closing.enter_context(PreemptionWatch(manager))
    start_step, state, data_state = resume(manager, domains, abstract)
    if start_step >= total_steps:
      writers.echo(f'{workdir} already holds the final checkpoint (step '
                   f'{start_step}); evaluating it')
    write_config_json(config, workdir, start_step)

    # Compiled steps -----------------------------------------------------------
    # The state is initialized and the steps compiled while the input
    # pipeline starts (CompileAhead); on a CPU each takes tens of seconds.
    train_step = jit_train_step(config, model, sst_model, tx, domain_names,
                                lr_fn, mesh)
    ahead = closing.enter_context(
        CompileAhead(inline=jax.process_count() > 1))
    fresh = None if state is not None else ahead.submit(
        initialize_state, config, domains, init_fn, tx, mesh)
    first_index = (data_state or {}).get('next_index', start_step)
    compiled = None
    if start_step < total_steps:
      compiled = ahead.submit(precompile_train_step, train_step, abstract,
                              data.batch_spec(), mesh)
    # After the step's: it may finish during the first training steps.
    evaluation = TrainingEvaluation(config, model, sst_model, mesh, domains,
                                    writer, workdir)
    evaluation.compile_ahead(ahead, abstract)
    t0 = time.perf_counter()
    data_iter = data.iterator(first_index)
    pipeline_s = time.perf_counter() - t0
    done = []
    if fresh is not None:
      state, seconds = fresh.result()
      done.append(f'state initialized in {seconds:.0f} s')
    if compiled is not None:  # the first step reuses it
      done.append(f'train step compiled in {compiled.result()[1]:.0f} s')
    if done and not ahead.inline:
      writers.echo(f'{", ".join(done)}, alongside the input pipeline start '
                   f'({pipeline_s:.0f} s)')

    # Train loop ---------------------------------------------------------------
    writers.echo(f'training steps {start_step + 1}-{total_steps}: global '
                 f'batch {data.batch_size} over {mesh.devices.size} devices, '
                 f'domains {", ".join(domain_names)}')
    progress = writers.Progress(total_steps, start_step, data.batch_size)
    pending, last_flush, results, step = [], start_step, None, start_step
    parallel.sync_processes('training start', sync_timeout_s)
    stop = preemption.reason(start_step)
    if stop:  # during startup: nothing trained since the last checkpoint
      writers.echo(f'stopped by {stop} before step {start_step + 1}; nothing '
                   'to save since ' + (f'checkpoint {start_step}' if start_step
                                       else 'the start') +
                   '; run the same command to resume')
      return None
    t_start = time.perf_counter()
    # The steps make no implicit host<->device transfer (a hidden sync stalls
    # an accelerator); checkpoints and evaluations allow theirs.
    with jax.transfer_guard(config.transfer_guard):
      while step < total_steps:
        batch = next(data_iter)  # placed on the mesh a step ahead
        state, metrics = train_step(state, batch)
        step += 1
        pending.append(metrics)
        is_last = step == total_steps
        do_ckpt = step % config.checkpoint_every == 0 or is_last
        do_eval = (config.eval_every and step % config.eval_every == 0
                   ) or is_last
        stop = preemption.reason(step)
        if step % config.log_every == 0 or do_ckpt or do_eval or stop:
          host = jax.device_get(pending)  # the one fetch per log interval
          check_finite(host, last_flush + 1, manager)
          means = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
          means['lr'] = float(host[-1].get('lr', 0.0))
          info = progress.update(step)
          writer.write(step, 'train', dict(means, **info))
          writer.flush()
          writers.echo(progress.line(step, means['loss'], info))
          pending, last_flush = [], step
        if do_ckpt or stop:
          with jax.transfer_guard('allow'):  # Checkpoints copy to host.
            checkpointing.save(manager, step, state, data_iter.get_state(),
                               checkpoint_metadata(config, domains, step),
                               force=is_last or bool(stop))
        if stop:
          manager.wait_until_finished()
          writers.echo(f'stopped by {stop} after step {step}: checkpoint '
                       f'{step} saved in {manager.directory}; run the same '
                       'command to resume')
          return None
        if do_eval:
          results = evaluation.score_and_write(step, state)

    # Final evaluation ---------------------------------------------------------
    if results is None:  # resumed from the final checkpoint
      results = evaluation.score_and_write(step, state)
    manager.wait_until_finished()
    writer.write(step, 'summary', {
        'wall_time_sec': time.perf_counter() - t_start,
        'final_miou': {k: v['miou'] for k, v in results.items()}})
    return results
