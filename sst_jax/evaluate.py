"""Evaluation over label domains with flip / multi-scale test-time augmentation.

Each domain is scored with its own head on its validation split at the
label's original resolution. Confusion matrices are accumulated on device and
fetched once per domain.
"""

from __future__ import annotations

import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from sst_jax import checkpointing
from sst_jax import metrics as metrics_lib
from sst_jax import parallel
from sst_jax import steps
from sst_jax import visualize
from sst_jax import writers
from sst_jax.data import pipeline


class Evaluator:
  """Compiles the evaluation step once for all heads and scores checkpoints.

  The evaluation batch is ``config.eval.batch_size`` rounded up to a multiple
  of the device count (the last batch of a domain is padded anyway).
  """

  def __init__(self, config, model, mesh, domains):
    self.config, self.model, self.mesh, self.domains = (config, model, mesh,
                                                        domains)
    n = mesh.devices.size
    self.batch_size = -(-config.eval.batch_size // n) * n
    self.num_classes = max(d.num_classes for d in domains)
    cfg = config.eval
    names = tuple(d.name for d in domains)
    flip_perms = ({d.name: d.flip_permutation for d in domains}
                  if cfg.flip else None)
    kwargs = dict(model=model, domain_names=names, flip_perms=flip_perms,
                  scales=tuple(cfg.scales))
    c_max = self.num_classes

    def eval_batch_step(variables, batch, total):
      confusion, pred = steps.eval_step(variables, batch, num_classes=c_max,
                                        **kwargs)
      return total + confusion, pred

    repl = parallel.replicated(mesh)
    data = parallel.data_sharding(mesh)
    # One function per batch: the confusion matrix accumulates on device and
    # the predictions of a domain's first batch feed the picture.
    self._step = jax.jit(eval_batch_step, in_shardings=(repl, data, repl),
                         out_shardings=(repl, data), donate_argnums=2)

  def precompile(self, variables) -> None:
    """Compiles the step for ``variables`` (arrays or their shapes).

    Called ahead of the first evaluation (``train.train_and_evaluate`` does it
    while the input pipeline starts); the first evaluation then reuses it.
    """
    repl = parallel.replicated(self.mesh)
    data = parallel.data_sharding(self.mesh)
    abstract = parallel.shapes_like(variables, repl)
    spec = pipeline.eval_batch_spec(self.config.data, self.batch_size)
    batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=data)
             for k, (shape, dtype) in spec.items()}
    total = jax.ShapeDtypeStruct((self.num_classes,) * 2, jnp.int32,
                                 sharding=repl)
    self._step.lower(abstract, batch, total).compile()

  def __call__(self, variables, *, step: int, workdir: str | None = None,
               writer: writers.MetricWriter | None = None,
               extra_images: dict | None = None) -> dict:
    """Scores every domain; writes metrics and a prediction grid.

    Returns:
      ``{domain: scores}`` (see ``metrics.scores``) without the raw arrays.
    """
    results, vis_rows, titles = {}, [], []
    t0 = time.perf_counter()
    total_images = 0
    c_max = self.num_classes
    for k, domain in enumerate(self.domains):
      batches, n = pipeline.eval_batches(
          domain.name, k, self.config.data, self.batch_size,
          jax.process_index(), jax.process_count())
      total = parallel.constant(
          lambda: jnp.zeros((c_max, c_max), jnp.int32), self.mesh)
      for i, batch in enumerate(batches):
        device_batch = parallel.shard_batch(batch, self.mesh)
        total, preds = self._step(variables, device_batch, total)
        if i == 0 and self.config.eval.num_vis and workdir:
          preds = parallel.local_rows(preds, self.mesh)
          vis_rows += _vis_rows(batch, preds, domain,
                                self.config.eval.num_vis)
          titles += [domain.name] * min(self.config.eval.num_vis,
                                        len(preds))
      total_images += n
      c = domain.num_classes
      scores = metrics_lib.scores(jax.device_get(total)[:c, :c],
                                  domain.classes)
      scores.pop('iou')
      results[domain.name] = scores
    elapsed = time.perf_counter() - t0
    summary = {name: {k: v for k, v in s.items() if k != 'iou_by_class'}
               for name, s in results.items()}
    lines = '  '.join(summary_line(n, s) for n, s in summary.items())
    writers.echo(f'eval step {step}: {lines}  ({total_images / elapsed:.1f} '
                 f'img/s)')
    if writer is not None:
      writer.write(step, 'eval', dict(results, images_per_sec=total_images /
                                      elapsed))
    if workdir and vis_rows and jax.process_index() == 0:
      grid = visualize.image_grid(vis_rows, row_titles=titles,
                                  col_titles=['input', 'ground truth',
                                              'prediction'])
      out_dir = os.path.join(workdir, 'predictions')
      os.makedirs(out_dir, exist_ok=True)
      visualize.save_png(os.path.join(out_dir, f'step_{step:07d}.png'), grid)
      if writer is not None:
        writer.write_image(step, 'eval/predictions', grid)
      for name, image in (extra_images or {}).items():
        visualize.save_png(os.path.join(out_dir, f'{name}_{step:07d}.png'),
                           image)
    return results


def summary_line(name: str, scores: dict) -> str:
  """``lip: mIoU 0.5123 present / 0.5100 all (SCHP's Mean IU)``.

  Both means of ``metrics.scores``: ``miou`` over the classes present in the
  ground truth, ``miou_all`` over all classes (an absent class scores 0),
  which is the "Mean IU" that SCHP's ``evaluate.py`` prints
  (``utils/miou.py``). They differ only when a class never occurs in the
  evaluated ground truth.
  """
  return (f'{name}: mIoU {scores["miou"]:.4f} present / '
          f'{scores["miou_all"]:.4f} all (SCHP\'s Mean IU)')


def _vis_rows(batch, preds, domain, num):
  rows = []
  palette = domain.palette
  for i in range(min(num, len(preds))):
    if not batch['valid'][i]:
      continue
    label = batch['label'][i]
    valid_rows = np.flatnonzero(batch['resize_h'][i].sum(axis=1))
    valid_cols = np.flatnonzero(batch['resize_w'][i].sum(axis=1))
    h, w = valid_rows.size, valid_cols.size
    rows.append([batch['image'][i], visualize.colorize(label[:h, :w], palette),
                 visualize.colorize(preds[i][:h, :w], palette)])
  return rows


def evaluate(config, variables, model, mesh, domains, *, step, workdir=None,
             writer=None, evaluator: Evaluator | None = None,
             extra_images=None):
  """One-shot evaluation helper (builds an :class:`Evaluator`)."""
  evaluator = evaluator or Evaluator(config, model, mesh, domains)
  return evaluator(variables, step=step, workdir=workdir, writer=writer,
                   extra_images=extra_images)


def evaluate_checkpoint(config, workdir: str) -> dict:
  """``--config.mode=eval``: scores the latest checkpoint in ``workdir``."""
  from sst_jax import train
  domains = train.validate_config(config)
  mesh = parallel.make_mesh(config.num_devices or None)
  model, _ = train.build_models(config, domains)
  manager, step, meta = checkpointing.open_latest(workdir)
  checkpointing.check_domains(meta, domains, manager.directory)
  raw = checkpointing.restore_state(manager, step,
                                    sharding=parallel.replicated(mesh))
  manager.close()
  variables = steps.parser_variables(raw['params'], raw['model_state'])
  writer = writers.MetricWriter(workdir)
  logging.info('evaluating %s step %d', workdir, step)
  results = evaluate(config, variables, model, mesh, domains, step=step,
                     workdir=workdir, writer=writer)
  writer.close()
  return results
