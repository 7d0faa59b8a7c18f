r"""Evaluation over label domains with flip / multi-scale test-time views.

    python -m sst_jax.evaluate --model=<workdir>[@step] | <export dir> \
        | <SCHP file> [--schp_domain=lip|atr|pascal_person_part] \
        [--domains=a,b] [--split=validation] [--flip] [--scales=0.75,1,1.25] \
        [--output=results.json] [--config=<config file> [--config.x=y ...]] \
        [--data_dir=<tfds data_dir>]

scores a model on the labelled images of its domains and prints, per
domain, a Markdown table of per-class IoU and accuracy followed by the
summary (pixel accuracy, mIoU, mean accuracy), as mmsegmentation's
``tools/test.py`` does. ``--output`` writes the same numbers as JSON with
the model source, the checkpoint step, the test-time settings and the
sst_jax version. The model is a training workdir (its latest checkpoint, or
``@step``'s), an export directory (``python -m sst_jax.export``) or an SCHP
checkpoint file (with ``--schp_domain``). Nothing is written into the
workdir: not its ``metrics.jsonl``, not its PNGs.

The images are read with the ``data`` section of ``--config`` when given,
else of the training config recorded in the checkpoint or in
``export.json`` (so a workdir and its export are scored on the same images),
else of the base config (``config_lib.base_config``; real benchmarks then
need ``--data_dir``). Each domain is scored with its own head on the
labels' original resolution. Confusion matrices are accumulated on device
and fetched once per domain.

``Evaluator`` is also what training evaluates with; it returns scores and
pictures, and its callers write them (``train.py`` into the workdir).
``--config.mode=eval`` of ``sst_jax.main`` runs ``score_latest_checkpoint``:
this evaluation of the workdir's latest checkpoint with the config's
test-time settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Sequence

from absl import flags
from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

import sst_jax
from sst_jax import checkpointing
from sst_jax import config_lib
from sst_jax import domains as domains_lib
from sst_jax import export as export_lib
from sst_jax import metrics as metrics_lib
from sst_jax import parallel
from sst_jax import steps
from sst_jax import visualize
from sst_jax import writers
from sst_jax.data import pipeline
from sst_jax.data import transforms
from sst_jax.models import layers


@dataclasses.dataclass
class Evaluation:
  """What one pass of the :class:`Evaluator` found.

  Attributes:
    results: ``{domain: scores}``, ``metrics.scores`` with the per-class
      dicts (``iou_by_class``, ``acc_by_class``) and without the arrays.
    num_images: ``{domain: number of images scored}``.
    seconds: wall time of the pass.
    grid: on process 0 when pictures were asked for, the uint8 picture of
      the first ``config.eval.num_vis`` images per domain (input, ground
      truth, prediction); else None.
  """
  results: dict
  num_images: dict
  seconds: float
  grid: np.ndarray | None = None

  @property
  def images_per_sec(self) -> float:
    return sum(self.num_images.values()) / max(self.seconds, 1e-9)


class Evaluator:
  """Compiles the evaluation step once for all heads and scores parameters.

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

  def __call__(self, variables, *, pictures: bool = False) -> Evaluation:
    """Scores every domain; writes nothing.

    Args:
      variables: the parser's ``{'params', 'batch_stats'}``.
      pictures: also return the prediction grid (``Evaluation.grid``).

    Returns:
      an :class:`Evaluation`.
    """
    results, num_images, vis_rows, titles = {}, {}, [], []
    t0 = time.perf_counter()
    c_max = self.num_classes
    num_vis = self.config.eval.num_vis if pictures else 0
    for k, domain in enumerate(self.domains):
      batches, n = pipeline.eval_batches(
          domain.name, k, self.config.data, self.batch_size,
          jax.process_index(), jax.process_count())
      total = parallel.constant(
          lambda: jnp.zeros((c_max, c_max), jnp.int32), self.mesh)
      for i, batch in enumerate(batches):
        device_batch = parallel.shard_batch(batch, self.mesh)
        total, preds = self._step(variables, device_batch, total)
        if i == 0 and num_vis:
          preds = parallel.local_rows(preds, self.mesh)
          vis_rows += _vis_rows(batch, preds, domain, num_vis)
          titles += [domain.name] * min(num_vis, len(preds))
      num_images[domain.name] = n
      c = domain.num_classes
      scores = metrics_lib.scores(jax.device_get(total)[:c, :c],
                                  domain.classes)
      scores.pop('iou')
      scores.pop('acc')
      results[domain.name] = scores
    grid = None
    if vis_rows and jax.process_index() == 0:
      grid = visualize.image_grid(vis_rows, row_titles=titles,
                                  col_titles=['input', 'ground truth',
                                              'prediction'])
    return Evaluation(results, num_images, time.perf_counter() - t0, grid)


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


def eval_line(step: int, evaluation: Evaluation) -> str:
  """The progress line of an evaluation during training."""
  lines = '  '.join(summary_line(n, s) for n, s in evaluation.results.items())
  return (f'eval step {step}: {lines}  ({evaluation.images_per_sec:.1f} '
          'img/s)')


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


# --------------------------------------------------------------------------
# Models to evaluate: a workdir checkpoint, an export, an SCHP checkpoint.
# --------------------------------------------------------------------------


class ModelSpecError(ValueError):
  """``--model`` names nothing that can be evaluated."""


@dataclasses.dataclass
class LoadedModel:
  """An inference parser and what evaluating it needs.

  Attributes:
    module: the Flax module (``apply(variables, x, train, heads)``).
    variables: its ``{'params', 'batch_stats'}`` (host arrays).
    domains: ``{name: domains.Domain}`` of its heads, in model order.
    input_size: the side of its square evaluation input.
    source: ``{'kind': 'workdir' | 'export' | 'schp', 'path', 'step', ...}``.
    training_config: the training config as recorded with the model (a
      dict), or None.
    metadata: a workdir checkpoint's metadata item, or None.
  """
  module: Any
  variables: dict
  domains: dict
  input_size: int
  source: dict
  training_config: dict | None = None
  metadata: dict | None = None


class SchpInput:
  """Runs an SCHP network on sst_jax's normalized evaluation input.

  Evaluation sends ImageNet-normalized RGB (``steps.normalize_images``);
  SCHP's weights expect BGR normalized by ``SCHP_PREPROCESSING``, and SCHP
  upsamples its stride-4 logits with ``align_corners=True`` (as
  ``sst_jax.Parser`` does for SCHP models).
  """

  def __init__(self, module):
    self.module = module

  def apply(self, variables, image, train=False, heads=None):
    from sst_jax.models import pretrained  # pylint: disable=g-import-not-at-top
    prep = pretrained.SCHP_PREPROCESSING
    pixels = image * transforms.IMAGENET_STD + transforms.IMAGENET_MEAN
    if prep.channel_order == 'BGR':
      pixels = pixels[..., ::-1]
    x = (pixels / 255.0 - jnp.asarray(prep.mean, jnp.float32)) / jnp.asarray(
        prep.std, jnp.float32)
    logits, aux = self.module.apply(variables, x, train=train, heads=heads)
    size = image.shape[1:3]
    return {k: layers.resize_bilinear(v, size, align_corners=True)
            for k, v in logits.items()}, aux


def parse_model_spec(spec: str) -> tuple[str, int | None]:
  """``'<path>@<step>'`` -> ``(path, step)``; a plain path -> ``(path, None)``.

  A path that itself ends in ``@<digits>`` and exists is taken as a path.
  """
  path, sep, tail = spec.rpartition('@')
  if sep and path and tail.isdigit() and not epath.Path(spec).exists():
    return path, int(tail)
  return spec, None


def load_model(spec: str, schp_domain: str | None = None) -> LoadedModel:
  """Loads ``--model``: a workdir (``@step`` optional), export or SCHP file.

  Raises:
    ModelSpecError: naming ``spec`` when it is none of these, when ``@step``
      follows something other than a workdir, when the workdir has no
      checkpoint at that step, or when an SCHP file comes without its
      domain.
  """
  path, step = parse_model_spec(spec)
  root = epath.Path(path)
  if (root / export_lib.META_FILE).is_file():
    if step is not None:
      raise ModelSpecError(f'--model {spec}: @step selects a checkpoint of a '
                           f'training workdir, but {path} is an export '
                           'directory')
    module, variables, info = export_lib.load_exported(path)
    src = info.get('source') or {}
    return LoadedModel(
        module, variables,
        {d.name: d for d in export_lib.domains_of(info)},
        int(info['preprocessing']['input_size']),
        {'kind': 'export', 'path': path, 'step': src.get('step'),
         'workdir': src.get('workdir')}, info.get('config'))
  if (root / 'checkpoints').is_dir():
    try:
      meta, params, model_state, step = export_lib.load_checkpoint(path, step)
    except FileNotFoundError as e:
      raise ModelSpecError(f'--model {spec}: {e}') from None
    heads = [d['name'] for d in meta['domains']]
    return LoadedModel(
        export_lib.build_parser(meta, heads),
        export_lib.inference_variables(params, model_state, heads),
        {d.name: d for d in export_lib.domains_of(meta)},
        export_lib.input_size_of(meta),
        {'kind': 'workdir', 'path': path, 'step': int(step)},
        meta.get('config'), meta)
  if root.is_file():
    if step is not None:
      raise ModelSpecError(f'--model {spec}: @step selects a checkpoint of a '
                           f'training workdir, but {path} is a file')
    if not schp_domain:
      raise ModelSpecError(
          f'--model {spec}: an SCHP checkpoint needs its domain '
          '(--schp_domain=lip, atr or pascal_person_part)')
    from sst_jax import api  # pylint: disable=g-import-not-at-top
    parser = api.Parser.load(path, domain=schp_domain)
    return LoadedModel(SchpInput(parser.module),
                       jax.device_get(parser.variables),
                       dict(parser.label_domains), parser.input_size,
                       {'kind': 'schp', 'path': path, 'step': None,
                        'domain': schp_domain})
  if not root.exists():
    raise ModelSpecError(f'--model {spec}: no such file or directory')
  raise ModelSpecError(
      f'--model {spec}: not a training workdir (no checkpoints/), an export '
      f'directory (no {export_lib.META_FILE}) or an SCHP checkpoint file')


def _merge(base: dict, saved: dict) -> dict:
  out = dict(base)
  for k, v in saved.items():
    out[k] = (_merge(base[k], v) if isinstance(v, dict)
              and isinstance(base.get(k), dict) else v)
  return out


def evaluation_config(model: LoadedModel,
                      config: ml_collections.ConfigDict | None = None,
                      *, split: str | None = None,
                      data_dir: str | None = None
                      ) -> ml_collections.ConfigDict:
  """The config whose ``data`` and ``eval`` sections the evaluation reads.

  ``config`` when given (its ``data.eval_input_size`` included); else the
  model's recorded training config over the base config, with the model's
  input size. ``split`` and ``data_dir`` override the data section.
  """
  if config is not None:
    cfg = config.copy_and_resolve_references()
  else:
    base = config_lib.base_config().to_dict()
    saved = model.training_config or {}
    cfg = ml_collections.ConfigDict(_merge(base, {
        k: saved[k] for k in ('data', 'eval') if isinstance(saved.get(k),
                                                            dict)}))
    cfg.data.eval_input_size = model.input_size
  with cfg.unlocked():
    if split:
      cfg.data.eval_split = split
    if data_dir:
      cfg.data.data_dir = data_dir
  return cfg


def score_model(model: LoadedModel, config: ml_collections.ConfigDict, *,
                domains: Sequence[str] | None = None, flip: bool = False,
                scales: Sequence[float] = (1.0,), mesh=None) -> dict:
  """Scores ``model`` on ``config``'s evaluation data.

  Args:
    model: from :func:`load_model`.
    config: from :func:`evaluation_config` (its ``data`` and ``eval``
      sections are read; ``eval.flip``/``eval.scales`` are replaced by
      ``flip`` and ``scales``).
    domains: the heads to score (default: every head of the model).
    flip: flip test-time augmentation.
    scales: multi-scale test-time augmentation.
    mesh: device mesh (default: every device).

  Returns:
    the report that ``--output`` holds: ``{'model', 'step', 'split',
    'test_time', 'domains': {name: {'num_images', 'miou', 'miou_all',
    'pixel_acc', 'mean_acc', 'mean_acc_all', 'classes': [{'name', 'iou',
    'acc'}]}}, 'sst_jax_version'}``.

  Raises:
    ValueError: for a domain the model has no head for, or whose classes
      differ from the registry's (the labels the data source reads). A
      domain the registry lacks (a user's dataset, scored without the
      config that registers it) is registered as the model records it.
  """
  names = list(domains or model.domains)
  unknown = [n for n in names if n not in model.domains]
  if unknown:
    raise ValueError(f'unknown domain {", ".join(map(repr, unknown))}; '
                     f'{model.source["path"]} has: '
                     f'{", ".join(model.domains)}')
  for name in names:
    registered = domains_lib.DOMAINS.get(name)
    if registered is None:
      # A domain this process has not registered (a user's own dataset,
      # scored without its config): the model records its classes.
      registered = domains_lib.register(model.domains[name])
    if list(registered.classes) != list(model.domains[name].classes):
      raise ValueError(
          f'{model.source["path"]}: domain {name!r} has classes '
          f'{list(model.domains[name].classes)} but the data source labels '
          f'with {list(registered.classes)}')
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.eval.flip = bool(flip)
    cfg.eval.scales = tuple(float(s) for s in scales)
  mesh = mesh or parallel.make_mesh(None)
  doms = [model.domains[n] for n in names]
  evaluator = Evaluator(cfg, model.module, mesh, doms)
  variables = parallel.replicate(model.variables, mesh)
  evaluation = evaluator(variables)
  per_domain = {}
  for d in doms:
    s = evaluation.results[d.name]
    per_domain[d.name] = {
        'num_images': int(evaluation.num_images[d.name]),
        **{k: s[k] for k in ('miou', 'miou_all', 'pixel_acc', 'mean_acc',
                             'mean_acc_all')},
        'classes': [{'name': c, 'iou': s['iou_by_class'][c],
                     'acc': s['acc_by_class'][c]} for c in d.classes]}
  return {
      'sst_jax_version': sst_jax.__version__,
      'model': model.source,
      'step': model.source.get('step'),
      'split': cfg.data.eval_split,
      'test_time': {
          'flip': bool(flip), 'scales': [float(s) for s in scales],
          'average': 'probs' if flip or tuple(scales) != (1.0,) else None,
          'input_size': int(cfg.data.eval_input_size),
          'label_size': int(cfg.data.eval_label_size),
          'preprocessing': ('schp' if isinstance(model.module, SchpInput)
                            else 'imagenet'),
      },
      'domains': per_domain,
  }


# --------------------------------------------------------------------------
# Tables.
# --------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                   right: Sequence[bool]) -> str:
  """A Markdown table with padded columns (``right``: right-aligned)."""
  widths = [max(len(str(r[i])) for r in [header, *rows])
            for i in range(len(header))]

  def line(cells):
    return '| ' + ' | '.join(
        str(c).rjust(w) if r else str(c).ljust(w)
        for c, w, r in zip(cells, widths, right)) + ' |'

  rule = '|' + '|'.join(('-' * (w + 1) + ':') if r else (':' + '-' * (w + 1))
                        for w, r in zip(widths, right)) + '|'
  return '\n'.join([line(header), rule] + [line(r) for r in rows])


def _percent(value) -> str:
  return 'nan' if value is None or np.isnan(value) else f'{100 * value:.2f}'


def format_report(report: dict) -> str:
  """Per domain: per-class IoU / accuracy table, then the summary table.

  Numbers are percentages. ``mIoU`` and ``mAcc`` average the classes
  present in the ground truth; the ``(all)`` columns average every class,
  an absent one scoring 0 (SCHP's "Mean IU" and "Mean accuracy"). ``nan``
  marks a class that is neither in the ground truth nor predicted (IoU) or
  not in the ground truth (accuracy).
  """
  model = report['model']
  where = model['path'] + (f' step {model["step"]}'
                           if model.get('step') is not None else '')
  tt = report['test_time']
  out = []
  for name, d in report['domains'].items():
    out.append(f'{name} ({report["split"]}, {d["num_images"]} images), '
               f'{where}, flip {tt["flip"]}, scales '
               f'{",".join(f"{s:g}" for s in tt["scales"])}:')
    out.append('')
    out.append(markdown_table(
        ['class', 'IoU', 'Acc'],
        [[c['name'], _percent(c['iou']), _percent(c['acc'])]
         for c in d['classes']], [False, True, True]))
    out.append('')
    out.append(markdown_table(
        ['aAcc', 'mIoU', 'mAcc', 'mIoU (all)', 'mAcc (all)'],
        [[_percent(d[k]) for k in ('pixel_acc', 'miou', 'mean_acc',
                                   'miou_all', 'mean_acc_all')]],
        [True] * 5))
    out.append('')
  return '\n'.join(out)


def score_latest_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                            domains: Sequence[domains_lib.Domain]) -> dict:
  """``--config.mode=eval``: scores the latest checkpoint of ``workdir``.

  The evaluation of ``python -m sst_jax.evaluate --model=<workdir>`` with
  ``config``'s data and its ``eval.flip`` / ``eval.scales``; prints the
  tables and writes nothing.

  Returns:
    ``{domain: scores}`` (the report's ``domains``).

  Raises:
    checkpointing.CheckpointMismatchError: when the checkpoint's label
      domains differ from ``domains``.
  """
  model = load_model(os.fspath(workdir))
  checkpointing.check_domains(model.metadata, domains,
                              f'{os.fspath(workdir)}/checkpoints')
  logging.info('evaluating %s step %d', workdir, model.source['step'])
  report = score_model(
      model, evaluation_config(model, config),
      domains=[d.name for d in domains], flip=config.eval.flip,
      scales=config.eval.scales,
      mesh=parallel.make_mesh(config.num_devices or None))
  writers.echo(format_report(report))
  return report['domains']


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------


def _flag_values(argv: Sequence[str]) -> flags.FlagValues:
  """The command line's flags, parsed (a fresh set per call)."""
  fv = flags.FlagValues()
  flags.DEFINE_string('model', None, 'training workdir (optionally '
                      '<workdir>@<step>), export directory or SCHP '
                      'checkpoint file', flag_values=fv)
  flags.DEFINE_string('schp_domain', None, "an SCHP checkpoint's domain "
                      '(lip, atr, pascal_person_part)', flag_values=fv)
  flags.DEFINE_list('domains', [], 'heads to score (default: all)',
                    flag_values=fv)
  flags.DEFINE_string('split', None, 'split to score (default: the '
                      "config's data.eval_split)", flag_values=fv)
  flags.DEFINE_bool('flip', False, 'flip test-time augmentation',
                    flag_values=fv)
  flags.DEFINE_list('scales', ['1'], 'multi-scale test-time augmentation, '
                    'e.g. 0.75,1,1.25', flag_values=fv)
  flags.DEFINE_string('output', None, 'JSON file for the results',
                      flag_values=fv)
  flags.DEFINE_string('data_dir', None, 'tfds data_dir of the built '
                      'benchmarks (overrides data.data_dir)', flag_values=fv)
  config_flags.DEFINE_config_file(
      'config', None, 'config file whose data/eval sections describe the '
      "evaluation data (default: the model's training config)",
      flag_values=fv, sys_argv=list(argv))
  fv(list(argv))
  if not fv.model:
    raise flags.IllegalFlagValueError('--model is required')
  return fv


def _check_output(output: str, model: LoadedModel) -> None:
  """Refuses an ``--output`` that is an existing file of the workdir."""
  if model.source['kind'] != 'workdir':
    return
  root = checkpointing.workdir_path(model.source['path'])
  out = checkpointing.workdir_path(output)
  if out.exists() and os.fspath(out).startswith(os.fspath(root) + '/'):
    raise ModelSpecError(f'--output {output} is a file of the workdir '
                         f'{model.source["path"]}; choose a new file')


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status (0 ok, 2 bad input)."""
  argv = ['python -m sst_jax.evaluate'] + list(
      sys.argv[1:] if argv is None else argv)
  logging.set_verbosity(logging.WARNING)
  try:
    fv = _flag_values(argv)
    try:
      scales = tuple(float(s) for s in fv.scales)
    except ValueError:
      raise ValueError('--scales: expected comma-separated numbers, got '
                       f'{",".join(fv.scales)!r}') from None
    model = load_model(fv.model, fv.schp_domain)
    if fv.output:
      _check_output(fv.output, model)
    config = evaluation_config(model, fv.config, split=fv.split,
                               data_dir=fv.data_dir)
    report = score_model(model, config, domains=fv.domains or None,
                            flip=fv.flip, scales=scales)
  except (flags.Error, ValueError, FileNotFoundError, KeyError) as e:
    print(f'error: {e.args[0] if isinstance(e, KeyError) else e}',
          file=sys.stderr)
    return 2
  print(format_report(report))
  if fv.output:
    out = epath.Path(fv.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + '\n')
    print(f'wrote {fv.output}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
