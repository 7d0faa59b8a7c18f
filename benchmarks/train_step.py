"""Throughput, compile time and FLOPs of the jitted train step.

Usage::

  python benchmarks/train_step.py --preset=synthetic
  python benchmarks/train_step.py --preset=resnet101 --resolution=257 --torch
  python benchmarks/train_step.py --preset=resnet101 --dtype=bfloat16 \
      --json=/tmp/bench.json

Measures exactly what training runs: the model from ``train.build_models``,
the state from ``train.init_train_state``, the optimizer from
``optim.make_optimizer`` and ``steps.train_step`` jitted with the same
shardings and donation as ``train.py``. Variants: ``baseline`` (plain
multi-head parser) and ``sst`` (with the training-only SST modules), plus
the inference forward pass (``train=False``, all heads at stride 4).

Reported per variant: compile time (lower + compile), images/s from the
median of ``--steps`` timed steps after ``--warmup`` untimed ones, FLOPs per
image from XLA's cost analysis of the compiled step, achieved FLOP/s and,
with a known or given peak (``--peak_flops``; H100/H200 bf16 dense by
default on those GPUs), model FLOPs utilisation.

``--torch`` also times the same parser and SGD step in PyTorch eager
(``benchmarks/torch_reference.py``) from the same initial weights and batch,
checks parameter counts, outputs and first-step losses agree, and prints the
JAX/PyTorch time ratios.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import pathlib
import platform
import statistics
import time

import jax
import numpy as np

from sst_jax import host_memory
from sst_jax import optim
from sst_jax import parallel
from sst_jax import steps
from sst_jax import train
from sst_jax.data import pipeline
from sst_jax.models import layers

REPO = pathlib.Path(__file__).resolve().parents[1]

# Model/input presets; explicit flags override them.
PRESETS = {
    # The model of configs/synthetic.py, at the 80x80 crops it trained on
    # before its 112x64 crops (docs/results.md's step measurements use it;
    # --resolution=112 --crop_width=64 for the current crop). Measurements
    # before the 48-wide decoder used --decoder_features=64.
    'synthetic': dict(backbone='resnet18', width=24, output_stride=16,
                      context_features=96, decoder_features=48,
                      resolution=80, crop_width=0, batch=16),
    # CE2P/SCHP-size parser (standard ResNet-101, 7x7 stem).
    'resnet101': dict(backbone='resnet101', width=64, output_stride=8,
                      context_features=512, decoder_features=256,
                      resolution=473, crop_width=0, batch=2),
}

# Dense peak FLOP/s by device kind (substring match), for MFU.
PEAK_FLOPS = {
    ('H100', 'bfloat16'): 989e12, ('H100', 'float32'): 67e12,
    ('H200', 'bfloat16'): 989e12, ('H200', 'float32'): 67e12,
    ('A100', 'bfloat16'): 312e12, ('A100', 'float32'): 19.5e12,
}


def add_model_flags(parser: argparse.ArgumentParser) -> None:
  """``--preset`` and the model/input flags that override it."""
  parser.add_argument('--preset', choices=sorted(PRESETS),
                      default='synthetic')
  for key in ('backbone', 'width', 'output_stride', 'context_features',
              'decoder_features', 'resolution', 'crop_width', 'batch'):
    parser.add_argument(f'--{key}', type=str if key == 'backbone' else int)
  parser.add_argument('--deep_stem', action='store_true')
  parser.add_argument('--conv_kernel_grad', default='auto',
                      choices=layers.KERNEL_GRAD_MODES,
                      help='config.model.conv_kernel_grad (auto: matmul on '
                      'CPU, xla elsewhere)')
  parser.add_argument('--factored_convs', type=int, default=1, choices=(0, 1),
                      help='config.model.factored_convs (1: the convolutions '
                      'over upsampled inputs mix them before upsampling)')
  parser.add_argument('--residual_relu', default='select',
                      choices=tuple(layers.RESIDUAL_RELUS),
                      help='config.model.residual_relu (max: XLA:CPU '
                      'recomputes the residual stream in later blocks)')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'),
                      default='float32')
  parser.add_argument('--optimizer', choices=('sgd', 'adamw'), default='sgd')


def apply_preset(args: argparse.Namespace) -> argparse.Namespace:
  """Fills the model/input flags left unset from ``args.preset``."""
  for key, value in PRESETS[args.preset].items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  return args


def crop_text(args) -> str:
  """The benchmarked crop, ``HxW``."""
  return f'{args.resolution}x{args.crop_width or args.resolution}'


def load_config(variant: str, args):
  """``configs/synthetic.py:<variant>`` with the benchmark's model/input."""
  spec = importlib.util.spec_from_file_location(
      'synthetic_config', REPO / 'configs' / 'synthetic.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant)
  with config.unlocked():
    for key in ('backbone', 'width', 'output_stride', 'context_features',
                'decoder_features'):
      config.model[key] = getattr(args, key)
    config.model.deep_stem = args.deep_stem
    config.model.conv_kernel_grad = args.conv_kernel_grad
    config.model.factored_convs = bool(args.factored_convs)
    config.model.residual_relu = args.residual_relu
    config.data.crop_size = args.resolution  # crop height
    config.data.crop_width = args.crop_width  # 0: square
    config.batch_size = args.batch
    config.dtype = args.dtype
    config.num_devices = args.num_devices
    config.optim.name = args.optimizer
    config.optim.warmup_steps = 0
    # The PyTorch reference's loss is the own-head CE alone.
    config.loss.iou_weight = 0.0
  return config


def synthetic_batch(config, num_domains: int, seed: int = 0) -> dict:
  """A random batch; labels < 7 are valid in every synthetic domain."""
  rng = np.random.default_rng(seed)
  b, (h, w) = config.batch_size, pipeline.crop_hw(config.data)
  return {
      'image': rng.standard_normal((b, h, w, 3)).astype(np.float32),
      'label': rng.integers(0, 7, (b, h, w)).astype(np.int32),
      'domain': (np.arange(b) % num_domains).astype(np.int32),
  }


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per computation.
    cost = cost[0]
  return float(cost.get('flops', float('nan')))


def _median_time(fn, warmup: int, steps: int) -> tuple[float, list[float]]:
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def setup_train_step(config) -> dict:
  """Model, state, a random batch and the train step jitted as in train.py.

  Returns a dict with ``model``, ``mesh``, ``replicated`` and ``data``
  shardings, ``state``, ``host_batch``, ``batch`` (sharded), ``rng`` and
  ``step_fn`` (jitted, not yet compiled; donates the state).
  """
  domains = train.validate_config(config)
  mesh = parallel.make_mesh(config.num_devices or None)
  model, sst_model = train.build_models(config, domains)
  tx = optim.make_optimizer(config.optim, config.total_steps)
  lr_fn = optim.learning_rate_schedule(config.optim, config.total_steps)
  repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
  init_fn = functools.partial(train.init_train_state, model=model,
                              sst_model=sst_model, tx=tx,
                              image_size=config.data.crop_size)
  state = jax.jit(init_fn, out_shardings=repl)(jax.random.key(config.seed))
  host_batch = synthetic_batch(config, len(domains))
  step_fn = jax.jit(
      functools.partial(steps.train_step, model=model, sst_model=sst_model,
                        tx=tx, domain_names=[d.name for d in domains],
                        cfg=config, lr_fn=lr_fn),
      donate_argnums=0, in_shardings=(repl, data, repl),
      out_shardings=(repl, repl))
  return {
      'model': model, 'mesh': mesh, 'replicated': repl, 'data': data,
      'state': state, 'host_batch': host_batch,
      'batch': parallel.shard_batch(host_batch, mesh),
      'rng': jax.jit(lambda: jax.random.key(1), out_shardings=repl)(),
      'step_fn': step_fn,
  }


def jit_forward(setup: dict):
  """The jitted inference forward pass of a :func:`setup_train_step` dict.

  ``fn(variables, image) -> logits``, ``train=False``, with its shardings.
  """
  model = setup['model']
  return jax.jit(lambda v, x: model.apply(v, x, train=False)[0],
                 in_shardings=(setup['replicated'], setup['data']),
                 out_shardings=setup['data'])


def benchmark_jax(config, *, warmup: int, steps_: int,
                  forward: bool = True, time_now: bool = True) -> dict:
  """Times the jitted train step (and inference forward) of ``config``.

  With ``time_now=False`` nothing is timed: each program runs once (filling
  ``first_loss`` and ``forward_logits``) and the dict gets ``'runners'``,
  ``{'train': fn, 'forward': fn}``, for :func:`interleaved_times`.

  Returns:
    a dict of measurements; ``'initial_variables'`` (host parser variables),
    ``'batch'`` and ``'first_loss'`` are included for the PyTorch check.
  """
  setup = setup_train_step(config)
  state, batch, rng = setup['state'], setup['batch'], setup['rng']
  n_dev = setup['mesh'].devices.size
  repl, host_batch = setup['replicated'], setup['host_batch']
  initial = jax.device_get(steps.parser_variables(state.params,
                                                  state.model_state))
  out = {'devices': n_dev, 'device_kind': jax.devices()[0].device_kind,
         'initial_variables': initial, 'batch': host_batch}
  out['params'] = int(sum(np.size(x) for x in jax.tree.leaves(
      initial['params'])))
  t0 = time.perf_counter()
  compiled = setup['step_fn'].lower(state, batch, rng).compile()
  out['train_compile_s'] = time.perf_counter() - t0
  # Cost analysis is of the per-device SPMD program.
  out['train_flops_per_image'] = _flops(compiled) * n_dev / config.batch_size
  if not steps_:  # Compile time and FLOPs only.
    return out
  holder = {'state': state, 'first_loss': None}

  def run_train():
    holder['state'], metrics = compiled(holder['state'], batch, rng)
    if holder['first_loss'] is None:
      holder['first_loss'] = float(metrics['loss'])
    return holder['state'], metrics

  runners = {'train': run_train}
  if time_now:
    out['train_step_s'], out['train_times'] = _median_time(
        run_train, warmup, steps_)
  else:
    jax.block_until_ready(run_train())
  out['first_loss'] = holder['first_loss']

  if forward:
    variables = jax.device_put(initial, repl)
    t0 = time.perf_counter()
    fwd_compiled = jit_forward(setup).lower(variables, batch['image']).compile()
    out['forward_compile_s'] = time.perf_counter() - t0
    out['forward_flops_per_image'] = (_flops(fwd_compiled) * n_dev /
                                      config.batch_size)
    first = {}

    def run_forward():
      logits = fwd_compiled(variables, batch['image'])
      first.setdefault('logits', logits)
      return logits

    runners['forward'] = run_forward
    if time_now:
      out['forward_s'], out['forward_times'] = _median_time(
          run_forward, warmup, steps_)
    else:
      jax.block_until_ready(run_forward())
    out['forward_logits'] = jax.device_get(first['logits'])
  if not time_now:
    out['runners'] = runners
  return out


def interleaved_times(runners: list, warmup: int, rounds: int,
                      per_round: int = 1) -> list:
  """Times several ``fn()`` in turns: ``rounds`` rounds of ``per_round``
  calls of each.

  Drift on a shared machine then hits every function alike, which two
  back-to-back medians do not guarantee. Returns one list of seconds per
  function.
  """
  for fn in runners:
    for _ in range(warmup):
      jax.block_until_ready(fn())
  times = [[] for _ in runners]
  for _ in range(rounds):
    for fn, record in zip(runners, times):
      for _ in range(per_round):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        record.append(time.perf_counter() - t0)
  return times


def peak_flops(args, device_kind: str) -> float | None:
  if args.peak_flops:
    return args.peak_flops
  for (kind, dtype), value in PEAK_FLOPS.items():
    if kind in device_kind and dtype == args.dtype:
      return value
  return None


def _row(name, images, seconds, compile_s, flops_per_image, peak):
  ips = images / seconds
  achieved = flops_per_image * ips
  mfu = f'{100 * achieved / peak:6.1f}%' if peak else '     -'
  return (f'{name:<18}{seconds * 1e3:>11.1f}{ips:>10.3g}{compile_s:>10.1f}'
          f'{flops_per_image / 1e9:>13.2f}{achieved / 1e9:>12.1f}  {mfu}')


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_model_flags(parser)
  parser.add_argument('--variants', nargs='+', default=('baseline', 'sst'),
                      choices=('baseline', 'sst'))
  parser.add_argument('--num_devices', type=int, default=0,
                      help='0 = all local devices')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--steps', type=int, default=5,
                      help='timed steps (0: compile time and FLOPs only)')
  parser.add_argument('--peak_flops', type=float, default=0.0,
                      help='peak FLOP/s of the whole mesh for MFU (default: '
                      'by device kind, dense)')
  parser.add_argument('--torch', action='store_true',
                      help='also time the PyTorch eager reference (baseline)')
  parser.add_argument('--torch_threads', type=int, default=0,
                      help='torch.set_num_threads (0 = torch default)')
  parser.add_argument('--channels_last', action='store_true',
                      help='PyTorch reference in channels_last layout')
  parser.add_argument('--json', default='', help='also write results here')
  args = apply_preset(parser.parse_args(argv))

  print(f'# {jax.devices()[0].device_kind} x{len(jax.devices())} '
        f'({platform.machine()}, {os.cpu_count()} CPUs), jax '
        f'{jax.__version__}; {args.backbone} width {args.width} OS '
        f'{args.output_stride} ctx {args.context_features} dec '
        f'{args.decoder_features}, {crop_text(args)}, '
        f'batch {args.batch}, {args.dtype}, {args.optimizer}, conv kernel '
        f'grad {args.conv_kernel_grad}, factored convs '
        f'{bool(args.factored_convs)}, residual relu {args.residual_relu}; '
        f'median of '
        f'{args.steps} after {args.warmup} warm-up'
        f'{"; JAX and PyTorch timed in turns" if args.torch else ""}')
  print(f'{"":<18}{"ms/step":>11}{"img/s":>10}{"compile s":>10}'
        f'{"GFLOP/img":>13}{"GFLOP/s":>12}  {"MFU":>6}', flush=True)
  results = {'args': vars(args)}
  for variant in args.variants:
    config = load_config(variant, args)
    pair = bool(args.torch and variant == 'baseline' and args.steps)
    r = benchmark_jax(config, warmup=args.warmup, steps_=args.steps,
                      forward=variant == 'baseline', time_now=not pair)
    if pair:
      # The PyTorch reference is timed in turns with JAX, step by step.
      import torch_reference
      t = torch_reference.benchmark_torch(
          config, r['initial_variables'], r['batch'], warmup=args.warmup,
          steps=args.steps, threads=args.torch_threads,
          channels_last=args.channels_last, time_now=False)
      for kind, key in (('train', 'train_step'), ('forward', 'forward')):
        for out, times in zip((r, t), interleaved_times(
            [r['runners'][kind], t['runners'][kind]], args.warmup,
            args.steps)):
          out[f'{key}_s'] = statistics.median(times)
          out[f'{kind}_times'] = times
      del r['runners'], t['runners']
    peak = peak_flops(args, r['device_kind'])
    if not args.steps:
      print(f'{f"jax {variant} train":<18}{"-":>11}{"-":>10}'
            f'{r["train_compile_s"]:>10.1f}'
            f'{r["train_flops_per_image"] / 1e9:>13.2f}', flush=True)
      results[variant] = {k: v for k, v in r.items() if k not in (
          'initial_variables', 'batch')}
      continue
    print(_row(f'jax {variant} train', args.batch, r['train_step_s'],
               r['train_compile_s'], r['train_flops_per_image'], peak),
          flush=True)
    if 'forward_s' in r:
      print(_row('jax inference', args.batch, r['forward_s'],
                 r['forward_compile_s'], r['forward_flops_per_image'], peak),
            flush=True)
    results[variant] = {k: v for k, v in r.items() if k not in (
        'initial_variables', 'batch', 'forward_logits')}
    if pair:
      print(_row('torch train', args.batch, t['train_step_s'], 0.0,
                 r['train_flops_per_image'], None))
      print(_row('torch inference', args.batch, t['forward_s'], 0.0,
                 r['forward_flops_per_image'], None))
      logits_err = max(
          float(np.max(np.abs(t['forward_logits'][k] - r['forward_logits'][k]))
                / (np.max(np.abs(r['forward_logits'][k])) + 1e-12))
          for k in r['forward_logits'])
      print(f'# parameters: jax {r["params"]:,}  torch {t["params"]:,}  '
            f'({"equal" if r["params"] == t["params"] else "DIFFERENT"})')
      print(f'# same weights and batch: inference logits max rel. diff '
            f'{logits_err:.2e}; first train-step loss jax '
            f'{r["first_loss"]:.6f} torch {t["first_loss"]:.6f}')
      print(f'# time ratio JAX/PyTorch: train step '
            f'{r["train_step_s"] / t["train_step_s"]:.2f}, inference '
            f'{r["forward_s"] / t["forward_s"]:.2f} (<1: JAX faster)')
      results['torch'] = {k: v for k, v in t.items()
                          if k != 'forward_logits'}
      results['torch']['logits_max_rel_diff'] = logits_err
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=1, default=float)


if __name__ == '__main__':
  # The allocator setting of training runs (sst_jax/host_memory.py).
  host_memory.reexec_with_huge_pages()
  main()
