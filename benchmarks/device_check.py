"""The Python side of ``benchmarks/device_check.sh``.

    python benchmarks/device_check.py versions --json=OUT/versions.json
    python benchmarks/device_check.py summary --outdir=OUT --mode=device \
        --total_s=400 --budget_s=460

``versions`` records the host, the accelerator and the library versions.
``summary`` reads what the check's steps left in ``OUT`` (``steps.tsv``,
``baseline.json`` and ``sst.json`` from ``train_step.py``, the main job's
``main_job_metrics.jsonl``), writes ``main_job.json`` and ``summary.json``,
prints the Markdown summary and exits with 1 if a step did not pass.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import platform
import statistics
import sys

# The step names of device_check.sh, in order; 'torch' is the PyTorch part
# of the 'baseline' step.
STEPS = ('versions', 'baseline', 'torch', 'main_job', 'sst')

# Targets of the ResNet-101 parser and the main job on one GPU (bfloat16).
# Not evaluated in smoke mode.
TARGETS = {
    'baseline_mfu': ('>=', 0.40, '>= 40%'),
    'jax_over_torch_train_step': ('<=', 1.00, '<= 1.00'),
    'sst_over_baseline_train_step': ('<=', 1.10, '<= 1.10'),
    'main_job_wall_s': ('<', 180.0, '< 180 s'),
}

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy',
            'grain', 'ml_collections', 'torch')


def _package_versions() -> dict:
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  for dist in importlib.metadata.distributions():
    name = dist.metadata['Name'] or ''
    if name.startswith(('jax-cuda', 'jax_cuda', 'libtpu')):
      versions[name] = dist.version
  return versions


def _jax_info() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  info = {'platform': jax.default_backend(), 'device_count': len(devices),
          'device_kind': devices[0].device_kind,
          'process_count': jax.process_count()}
  try:
    stats = devices[0].memory_stats() or {}
    info['device_memory_gib'] = stats.get('bytes_limit', 0) / 2**30
  except Exception:  # pylint: disable=broad-except
    pass  # Not every backend reports memory.
  try:  # Versions, nvidia-smi.
    info['environment'] = jax.print_environment_info(return_string=True)
  except Exception as e:  # pylint: disable=broad-except
    info['environment'] = f'{type(e).__name__}: {e}'
  return info


def _torch_info() -> dict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except Exception as e:  # pylint: disable=broad-except
    return {'error': f'{type(e).__name__}: {e}'}
  info = {'version': torch.__version__, 'cuda': torch.version.cuda,
          'cuda_available': torch.cuda.is_available()}
  if info['cuda_available']:
    info.update(cudnn=torch.backends.cudnn.version(),
                device_name=torch.cuda.get_device_name(0),
                device_count=torch.cuda.device_count())
  return info


def versions() -> dict:
  """Host, accelerator (as JAX and PyTorch see it) and library versions."""
  pages = os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  return {'host': {'python': platform.python_version(),
                   'machine': platform.machine(),
                   'cpus': os.cpu_count(), 'memory_gib': pages / 2**30},
          'packages': _package_versions(), 'jax': _jax_info(),
          'torch': _torch_info()}


def read_steps(outdir: pathlib.Path) -> dict:
  """``steps.tsv``: ``{name: {rc, seconds, timeout_s, command}}``.

  ``rc`` is the exit status, or ``'not_run'`` (no time left, no
  accelerator) or ``'skipped'`` (not in ``DEVICE_CHECK_STEPS``) with the
  reason as ``note`` instead of the times and the command.
  """
  steps = {}
  path = outdir / 'steps.tsv'
  if path.exists():
    for line in path.read_text().splitlines():
      name, rc, ms, limit, command = line.split('\t', 4)
      if rc in ('not_run', 'skipped'):
        steps[name] = {'rc': rc, 'note': command}
      else:
        steps[name] = {'rc': int(rc), 'seconds': int(ms) / 1e3,
                       'timeout_s': int(limit), 'command': command}
  return steps


def _load(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def main_job_report(metrics_path: pathlib.Path, wall_s: float) -> dict:
  """The main job's numbers from its ``metrics.jsonl``.

  Args:
    metrics_path: the workdir's ``metrics.jsonl``.
    wall_s: the process's wall time (start-up, input pipeline, compilation,
      training, evaluation).

  Returns:
    ``wall_s``, ``loop_s`` (the training loop with its evaluations),
    ``steps``, ``images_per_s`` (median of the logged intervals' rates),
    ``loop_images_per_s`` (every step over ``loop_s``), ``final_loss``,
    ``final_miou`` (per domain) and ``mean_miou``.

  Raises:
    ValueError: if the file holds no training record or no final summary.
  """
  records = [json.loads(line) for line in
             metrics_path.read_text().splitlines() if line.strip()]
  train = [r for r in records if r['kind'] == 'train']
  summary = [r for r in records if r['kind'] == 'summary']
  if not train or not summary:
    raise ValueError(f'{metrics_path}: no training records or no summary; '
                     'the main job did not finish')
  # The first interval holds the wait for the first batch; later ones are
  # the steady rate (the median also skips the intervals with evaluations).
  steady = [r['images_per_sec'] for r in train[1:]] or [
      train[0]['images_per_sec']]
  batch = train[-1]['images_per_sec'] / train[-1]['steps_per_sec']
  miou = summary[-1]['final_miou']
  return {'wall_s': wall_s, 'loop_s': summary[-1]['wall_time_sec'],
          'steps': summary[-1]['step'],
          'images_per_s': statistics.median(steady),
          'loop_images_per_s': (summary[-1]['step'] * batch /
                                summary[-1]['wall_time_sec']),
          'final_loss': train[-1]['loss'], 'final_miou': miou,
          'mean_miou': statistics.mean(miou.values())}


def _status(step: dict | None, ok: bool) -> str:
  if step is None:
    return 'not_run'
  if step['rc'] in ('not_run', 'skipped'):
    return step['rc']
  if step['rc'] in (124, 137):
    return 'timeout'
  return 'ok' if step['rc'] == 0 and ok else 'failed'


def _measurement(rate: dict | None, compile_s: float | None = None) -> dict:
  if not rate:
    return None
  out = {k: rate[k] for k in ('ms_per_step', 'images_per_s',
                              'flops_per_image', 'mfu')}
  out['compile_s'] = compile_s
  return out


def summarize(outdir: pathlib.Path, mode: str, total_s: float,
              budget_s: float) -> dict:
  """Every step's status and the numbers, as written to ``summary.json``."""
  tsv = read_steps(outdir)
  info = _load(outdir / 'versions.json')
  base = _load(outdir / 'baseline.json')
  sst = _load(outdir / 'sst.json')
  steps = {}
  for name in ('versions', 'baseline', 'sst'):
    data = {'versions': info, 'baseline': base, 'sst': sst}[name]
    ok = data is not None and (name == 'versions' or
                               'train' in data.get(name, {}))
    steps[name] = dict(tsv.get(name, {}), status=_status(tsv.get(name), ok),
                       log=f'{name}.log')
  torch = (base or {}).get('torch')
  if base is not None and not base['args']['torch']:
    steps['torch'] = {'status': 'skipped',
                      'note': f'no PyTorch on {base["device"]["platform"]}'}
  elif torch is not None and 'error' not in torch:
    steps['torch'] = {'status': 'ok'}
  else:
    steps['torch'] = {'status': steps['baseline']['status'] if torch is None
                      else 'failed',
                      'note': (torch or {}).get('error', 'baseline step')}
  main_job, error = None, None
  metrics = outdir / 'main_job_metrics.jsonl'
  if 'main_job' in tsv and metrics.exists():
    try:
      main_job = main_job_report(metrics, tsv['main_job']['seconds'])
    except (ValueError, KeyError) as e:
      error = str(e)
  if main_job is not None:
    (outdir / 'main_job.json').write_text(json.dumps(main_job, indent=1))
  steps['main_job'] = dict(tsv.get('main_job', {}),
                           status=_status(tsv.get('main_job'), bool(main_job)),
                           log='main_job.log')
  if error:
    steps['main_job']['note'] = error

  base_jax, sst_jax = (base or {}).get('baseline', {}), (sst or {}).get(
      'sst', {})
  ok_torch = steps['torch']['status'] == 'ok'
  results = {
      'jax_baseline_train': _measurement(base_jax.get('train'),
                                         base_jax.get('train_compile_s')),
      'jax_sst_train': _measurement(sst_jax.get('train'),
                                    sst_jax.get('train_compile_s')),
      'jax_inference': _measurement(base_jax.get('forward'),
                                    base_jax.get('forward_compile_s')),
      'torch_train': _measurement(torch.get('train')) if ok_torch else None,
      'torch_inference': (_measurement(torch.get('forward')) if ok_torch
                          else None),
      'jax_over_torch': torch.get('jax_over_torch') if ok_torch else None,
      'sst_over_baseline_train_step': (
          sst_jax['train_step_s'] / base_jax['train_step_s']
          if 'train_step_s' in sst_jax and 'train_step_s' in base_jax
          else None),
      'main_job': main_job,
  }
  values = {
      'baseline_mfu': (results['jax_baseline_train'] or {}).get('mfu'),
      'jax_over_torch_train_step': (results['jax_over_torch'] or {}).get(
          'train_step'),
      'sst_over_baseline_train_step': results['sst_over_baseline_train_step'],
      'main_job_wall_s': (main_job or {}).get('wall_s'),
  }
  targets = {}
  for key, (op, bound, text) in TARGETS.items():
    value = values[key]
    met = None if value is None or mode == 'smoke' else {
        '>=': value >= bound, '<=': value <= bound, '<': value < bound}[op]
    targets[key] = {'value': value, 'target': text, 'met': met}
  return {
      'mode': mode,
      'command': ('bash benchmarks/device_check.sh '
                  f'{"--smoke " if mode == "smoke" else ""}{outdir}'),
      'passed': all(s['status'] in ('ok', 'skipped') for s in steps.values()),
      'total_s': total_s, 'budget_s': budget_s,
      'steps': {name: steps[name] for name in STEPS},
      'device': (info or {}).get('jax'),
      'packages': (info or {}).get('packages'),
      'model': (base or sst or {}).get('args'),
      'results': results, 'targets': targets,
  }


def _fmt(value, spec: str, scale: float = 1.0) -> str:
  return '-' if value is None else format(value * scale, spec)


def markdown(summary: dict) -> str:
  """The summary as Markdown tables."""
  device = summary['device'] or {}
  packages = summary['packages'] or {}
  lines = [f'## sst_jax device check ({summary["mode"]}): '
           f'{device.get("device_kind", "?")} x{device.get("device_count", "?")}'
           f', jax {packages.get("jax")}, torch {packages.get("torch")}', '',
           f'{summary["total_s"]:.0f} s of a {summary["budget_s"]:.0f} s '
           f'budget; `{summary["command"]}`', '',
           '| step | status | s | timeout s | note |', '|---|---|---:|---:|---|']
  for name, step in summary['steps'].items():
    lines.append(f'| {name} | {step["status"]} | '
                 f'{_fmt(step.get("seconds"), ".0f")} | '
                 f'{_fmt(step.get("timeout_s"), ".0f")} | '
                 f'{step.get("note", "")[:120]} |')
  model = summary['model'] or {}
  results = summary['results']
  title = 'train steps (no results)'
  if model:
    title = (f'{model["backbone"]} parser {model["resolution"]}x'
             f'{model["resolution"]}, {model["dtype"]}, batch '
             f'{model["batch_per_device"]}/device')
  lines += ['', f'| {title} | ms/step | img/s | compile s | GFLOP/img | MFU |',
            '|---|---:|---:|---:|---:|---:|']
  for key, label in (('jax_baseline_train', 'JAX baseline train step'),
                     ('jax_sst_train', 'JAX SST train step'),
                     ('jax_inference', 'JAX inference'),
                     ('torch_train', 'PyTorch train step'),
                     ('torch_inference', 'PyTorch inference')):
    m = results[key] or {}
    lines.append(f'| {label} | {_fmt(m.get("ms_per_step"), ".1f")} | '
                 f'{_fmt(m.get("images_per_s"), ".4g")} | '
                 f'{_fmt(m.get("compile_s"), ".1f")} | '
                 f'{_fmt(m.get("flops_per_image"), ".2f", 1e-9)} | '
                 f'{_fmt(m.get("mfu"), ".1f", 100)}{"%" if m.get("mfu") else ""} |')
  ratios = results['jax_over_torch'] or {}
  job = results['main_job'] or {}
  miou = ', '.join(f'{k} {v:.3f}' for k, v in (job.get('final_miou') or
                                                {}).items())
  targets = summary['targets']

  def target(key):
    t = targets[key]
    met = {True: 'yes', False: 'NO', None: '-'}[t['met']]
    return f'{t["target"]} | {met}'

  lines += ['', '| | value | target | met |', '|---|---:|---|---|',
            f'| MFU, JAX baseline train step | '
            f'{_fmt(targets["baseline_mfu"]["value"], ".1%")} | '
            f'{target("baseline_mfu")} |',
            f'| time JAX / PyTorch, train step | '
            f'{_fmt(ratios.get("train_step"), ".2f")} | '
            f'{target("jax_over_torch_train_step")} |',
            f'| time JAX / PyTorch, inference | '
            f'{_fmt(ratios.get("forward"), ".2f")} | | |',
            f'| time SST / baseline, train step | '
            f'{_fmt(results["sst_over_baseline_train_step"], ".2f")} | '
            f'{target("sst_over_baseline_train_step")} |',
            f'| main job wall time, s | {_fmt(job.get("wall_s"), ".0f")} | '
            f'{target("main_job_wall_s")} |',
            f'| main job training loop, s | {_fmt(job.get("loop_s"), ".0f")} '
            '| | |',
            f'| main job images/s (median interval) | '
            f'{_fmt(job.get("images_per_s"), ".0f")} | | |',
            f'| main job final mIoU (mean) | {_fmt(job.get("mean_miou"), ".3f")}'
            f' | | |', '']
  if miou:
    lines += [f'Main job final mIoU: {miou}.', '']
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('versions', help='host, device and library versions')
  p.add_argument('--json', required=True)
  p = sub.add_parser('summary', help='summary.json and the Markdown tables')
  p.add_argument('--outdir', required=True)
  p.add_argument('--mode', choices=('device', 'smoke'), required=True)
  p.add_argument('--total_s', type=float, required=True)
  p.add_argument('--budget_s', type=float, required=True)
  args = parser.parse_args(argv)
  if args.command == 'versions':
    info = versions()
    pathlib.Path(args.json).write_text(json.dumps(info, indent=1))
    print(info['jax'].pop('environment'))
    print(json.dumps(info, indent=1))
    return 0
  outdir = pathlib.Path(args.outdir)
  summary = summarize(outdir, args.mode, args.total_s, args.budget_s)
  (outdir / 'summary.json').write_text(json.dumps(summary, indent=1))
  print(markdown(summary))
  print(f'summary: {outdir / "summary.json"}; logs: {outdir}/<step>.log')
  return 0 if summary['passed'] else 1


if __name__ == '__main__':
  sys.exit(main())
