"""Throughput, compile time and FLOPs of the jitted train step.

Usage::

  python benchmarks/train_step.py --preset=synthetic
  python benchmarks/train_step.py --preset=resnet101 --resolution=257 --torch
  python benchmarks/train_step.py --preset=resnet101 --dtype=bfloat16 \
      --json=/tmp/bench.json

Measures exactly what training runs: the model from ``recipe.build_models``,
the state from ``recipe.init_train_state``, the optimizer from
``optim.make_optimizer`` and ``steps.train_step`` jitted with the same
shardings and donation as ``train.py``. Variants: ``baseline`` (plain
multi-head parser) and ``sst`` (with the training-only SST modules), plus
the inference forward pass (``train=False``, all heads at stride 4).

Reported per variant: compile time (lower + compile), images/s from the
median of ``--steps`` timed steps after ``--warmup`` untimed ones, FLOPs per
image from XLA's cost analysis of the compiled step, achieved FLOP/s and
model FLOPs utilisation (MFU): achieved FLOP/s over the dense peak of the
devices in use, from ``--peak_flops`` or the table ``PEAK_FLOPS`` by device
kind and dtype (none for an unknown device: MFU is then reported as null).

``--torch`` also times the same parser and SGD step in PyTorch
(``benchmarks/torch_reference.py``) from the same initial weights and batch,
on the GPU when JAX runs on one (``--torch_device``), in bfloat16 autocast
when ``--dtype=bfloat16``, checks parameter counts, outputs and first-step
losses agree, and prints the JAX/PyTorch time ratios. PyTorch runs on one
device with one device's share of the batch (``--batch`` over the JAX
devices), so the ratio compares the time per step of one device.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import pathlib
import platform
import re
import statistics
import time

import jax
import numpy as np

from sst_jax import config_lib
from sst_jax import host_memory
from sst_jax import optim
from sst_jax import parallel
from sst_jax import recipe
from sst_jax import steps
from sst_jax.data import pipeline
from sst_jax.models import fast_paths

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
    # The smallest parser: a seconds-long compile for smoke checks on a CPU.
    'tiny': dict(backbone='resnet_tiny', width=8, output_stride=16,
                 context_features=16, decoder_features=16, resolution=32,
                 crop_width=0, batch=2),
}

# --plain: the speed paths (fields of fast_paths.Implementations), or all.
PLAIN_CHOICES = tuple(
    f.name for f in dataclasses.fields(fast_paths.Implementations)) + ('all',)

# Dense (no sparsity) peak FLOP/s of one device by compute dtype: the first
# pattern that matches ``device_kind`` wins. TPU kinds are matched whole
# ("TPU v4 lite" is not a v4). The float32 peaks of the GPUs are their
# non-tensor-core rates.
PEAK_FLOPS = {
    'bfloat16': (
        (r'^TPU v4$', 275e12),
        (r'^TPU v5( lite|e)$', 197e12),
        (r'^TPU v5p?$', 459e12),
        (r'^TPU v6( lite|e)$', 918e12),
        (r'H100 PCIe', 756e12),
        (r'H[12]00(?!.*(PCIe|NVL))', 989e12),  # SXM
        (r'A100', 312e12),
    ),
    'float32': (
        (r'H100 PCIe', 51e12),
        (r'H[12]00(?!.*(PCIe|NVL))', 67e12),
        (r'A100', 19.5e12),
    ),
}


def add_model_flags(parser: argparse.ArgumentParser) -> None:
  """``--preset`` and the model/input flags that override it."""
  parser.add_argument('--preset', choices=sorted(PRESETS),
                      default='synthetic')
  for key in ('backbone', 'width', 'output_stride', 'context_features',
              'decoder_features', 'resolution', 'crop_width', 'batch'):
    parser.add_argument(f'--{key}', type=str if key == 'backbone' else int)
  parser.add_argument('--deep_stem', action='store_true')
  parser.add_argument('--paths_for', default='',
                      help='the backend whose speed paths the model runs '
                      '(fast_paths.for_backend: cpu, gpu, tpu; default: the '
                      "one JAX runs on); e.g. 'gpu' on a CPU host counts the "
                      "FLOPs of a GPU's program")
  parser.add_argument('--plain', nargs='*', default=[], choices=PLAIN_CHOICES,
                      help='speed paths replaced by their plain forms, the '
                      'references (fields of fast_paths.Implementations; '
                      'all: every one)')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'),
                      default='float32')
  parser.add_argument('--optimizer', choices=('sgd', 'adamw'), default='sgd')


def implementations(paths_for: str = '',
                    plain=()) -> fast_paths.Implementations:
  """What the benchmarked model runs (``--paths_for``, ``--plain``).

  Args:
    paths_for: ``fast_paths.for_backend``'s backend; '' for JAX's.
    plain: fields of ``fast_paths.Implementations`` to set to the plain
      forms, or ``'all'``.

  Returns:
    a ``fast_paths.Implementations``.
  """
  fields = PLAIN_CHOICES[:-1] if 'all' in plain else tuple(plain)
  unknown = set(fields) - set(PLAIN_CHOICES)
  if unknown:
    raise ValueError(f'unknown speed paths {sorted(unknown)}; known: '
                     f'{PLAIN_CHOICES}')
  reference = fast_paths.Implementations()
  return dataclasses.replace(
      fast_paths.for_backend(paths_for or jax.default_backend()),
      **{f: getattr(reference, f) for f in fields})


def paths_text(paths_for: str = '', plain=()) -> str:
  """How :func:`implementations` was asked for, for a header line."""
  text = f'{paths_for or jax.default_backend()} speed paths'
  return text + (f', plain {"+".join(plain)}' if plain else '')


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


def flops_per_image(lowered, jitted, args, images: int) -> float:
  """XLA's FLOP count of a jitted program, per image of the global batch.

  Counted on the lowered program, before XLA's optimizations: after
  compilation a GPU's convolutions are cuDNN custom calls that the cost
  analysis does not count (ResNet-101 at 473x473 read 36 GFLOP per image
  for the train step on an H200 against 1455 on the CPU), and an SPMD
  program is one device's share. Backends behind a PJRT plugin (GPU) give
  no analysis of a lowered program; there the same function is lowered
  again, unsharded, for the host CPU: the FLOPs of a program do not depend
  on the device, and the model's implementations (e.g. the convolution
  kernel gradient) were picked for the default backend when it was built.

  Args:
    lowered: ``jitted.lower(*args)``.
    jitted: the ``jax.jit`` function.
    args: its arguments (arrays or shape structs).
    images: the global batch size.
  """
  cost = lowered.cost_analysis()
  if cost is None:
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                            args)
    try:
      cpu = jax.devices('cpu')[0]
    except RuntimeError:  # JAX_PLATFORMS leaves the CPU out
      return float('nan')
    with jax.default_device(cpu):
      cost = jax.jit(jitted.__wrapped__).lower(*abstract).cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per computation.
    cost = cost[0]
  return float(cost.get('flops', float('nan'))) / images


def _median_time(fn, warmup: int, steps: int) -> tuple[float, list[float]]:
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def setup_train_step(config, implementations=None) -> dict:
  """Model, state, a random batch and the train step jitted as in train.py.

  ``implementations`` is what the parser runs (:func:`implementations`;
  default: the backend's speed paths, as in training). Returns a dict with
  ``model``, ``mesh``, ``replicated`` and ``data`` shardings, ``state``,
  ``host_batch``, ``batch`` (sharded) and ``step_fn`` (jitted, not
  yet compiled; donates the state).
  """
  domains = config_lib.validate_config(config)
  mesh = parallel.make_mesh(config.num_devices or None)
  if implementations is None:
    implementations = recipe.speed_paths()
  model, sst_model = recipe.build_models(config, domains, implementations)
  tx = optim.make_optimizer(config.optim, config.total_steps)
  lr_fn = optim.learning_rate_schedule(config.optim, config.total_steps)
  repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
  init_fn = functools.partial(recipe.init_train_state, model=model,
                              sst_model=sst_model, tx=tx,
                              image_size=config.data.crop_size)
  state = jax.jit(init_fn, out_shardings=repl)(jax.random.key(config.seed))
  host_batch = synthetic_batch(config, len(domains))
  step_fn = jax.jit(
      functools.partial(steps.train_step, model=model, sst_model=sst_model,
                        tx=tx, domain_names=[d.name for d in domains],
                        cfg=config, lr_fn=lr_fn),
      donate_argnums=0, in_shardings=(repl, data),
      out_shardings=(repl, repl))
  return {
      'model': model, 'mesh': mesh, 'replicated': repl, 'data': data,
      'state': state, 'host_batch': host_batch,
      'batch': parallel.shard_batch(host_batch, mesh),
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
                  forward: bool = True, time_now: bool = True,
                  implementations=None) -> dict:
  """Times the jitted train step (and inference forward) of ``config``.

  With ``time_now=False`` nothing is timed: each program runs once (filling
  ``first_loss`` and ``forward_logits``) and the dict gets ``'runners'``,
  ``{'train': fn, 'forward': fn}``, for :func:`interleaved_times`.
  ``implementations`` as in :func:`setup_train_step`.

  Returns:
    a dict of measurements; ``'initial_variables'`` (host parser variables),
    ``'batch'`` and ``'first_loss'`` are included for the PyTorch check.
  """
  setup = setup_train_step(config, implementations)
  state, batch = setup['state'], setup['batch']
  n_dev = setup['mesh'].devices.size
  repl, host_batch = setup['replicated'], setup['host_batch']
  initial = jax.device_get(steps.parser_variables(state.params,
                                                  state.model_state))
  out = {'devices': n_dev, 'device_kind': jax.devices()[0].device_kind,
         'initial_variables': initial, 'batch': host_batch}
  out['params'] = int(sum(np.size(x) for x in jax.tree.leaves(
      initial['params'])))
  t0 = time.perf_counter()
  lowered = setup['step_fn'].lower(state, batch)
  compiled = lowered.compile()
  out['train_compile_s'] = time.perf_counter() - t0
  out['train_flops_per_image'] = flops_per_image(
      lowered, setup['step_fn'], (state, batch), config.batch_size)
  if not steps_:  # Compile time and FLOPs only.
    return out
  holder = {'state': state, 'first_loss': None}

  def run_train():
    holder['state'], metrics = compiled(holder['state'], batch)
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
    forward_fn = jit_forward(setup)
    fwd_lowered = forward_fn.lower(variables, batch['image'])
    fwd_compiled = fwd_lowered.compile()
    out['forward_compile_s'] = time.perf_counter() - t0
    out['forward_flops_per_image'] = flops_per_image(
        fwd_lowered, forward_fn, (variables, batch['image']),
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


def device_peak_flops(device_kind: str, dtype: str) -> float | None:
  """Dense peak FLOP/s of one device from ``PEAK_FLOPS``.

  Args:
    device_kind: ``jax.Device.device_kind``, e.g. ``'NVIDIA H200'``.
    dtype: the compute dtype, ``'bfloat16'`` or ``'float32'``.

  Returns:
    FLOP/s, or None for a device (or dtype) the table does not know.
  """
  for pattern, value in PEAK_FLOPS.get(dtype, ()):
    if re.search(pattern, device_kind):
      return value
  return None


def rates(images: int, seconds: float, flops_per_image: float,
          peak: float | None) -> dict:
  """Throughput of one timed program.

  Args:
    images: images per call.
    seconds: the median time of a call.
    flops_per_image: XLA's count for the program, per image.
    peak: dense peak FLOP/s of all devices that ran it (None: unknown).

  Returns:
    ``ms_per_step``, ``images_per_s``, ``flops_per_image``,
    ``achieved_flops_per_s`` and ``mfu`` (a fraction; None without a peak).
  """
  ips = images / seconds
  achieved = flops_per_image * ips
  return {'ms_per_step': seconds * 1e3, 'images_per_s': ips,
          'flops_per_image': flops_per_image,
          'achieved_flops_per_s': achieved,
          'mfu': achieved / peak if peak else None}


def _row(name: str, rate: dict, compile_s: float | None) -> str:
  mfu = '     -' if rate['mfu'] is None else f'{100 * rate["mfu"]:6.1f}%'
  compile_text = '-' if compile_s is None else f'{compile_s:.1f}'
  return (f'{name:<18}{rate["ms_per_step"]:>11.1f}'
          f'{rate["images_per_s"]:>10.3g}{compile_text:>10}'
          f'{rate["flops_per_image"] / 1e9:>13.2f}'
          f'{rate["achieved_flops_per_s"] / 1e9:>12.1f}  {mfu}')


def library_versions() -> dict:
  """Python, JAX, jaxlib, flax and numpy versions."""
  import flax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  return {'python': platform.python_version(), 'jax': jax.__version__,
          'jaxlib': jaxlib.__version__, 'flax': flax.__version__,
          'numpy': np.__version__}


def torch_device(requested: str) -> str:
  """``--torch_device``; ``'auto'`` is the GPU when JAX runs on one."""
  if requested != 'auto':
    return requested
  import torch  # pylint: disable=g-import-not-at-top
  on_gpu = jax.default_backend() == 'gpu' and torch.cuda.is_available()
  return 'cuda' if on_gpu else 'cpu'


def setup_torch(config, jax_result: dict, args) -> dict:
  """The PyTorch reference's runners for one JAX device's share of the batch.

  PyTorch runs on one device: it gets the first ``batch / devices`` images
  of the JAX batch (the rows of JAX's first device), in bfloat16 autocast
  when ``args.dtype`` is bfloat16.

  Returns:
    ``torch_reference.benchmark_torch``'s dict (``time_now=False``) plus
    ``batch``, ``device``, ``autocast`` and ``channels_last``; or
    ``{'error': text}`` when PyTorch fails, so that the JAX measurement
    goes on alone.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import torch_reference  # pylint: disable=g-import-not-at-top
    per_device = config.batch_size // jax_result['devices']
    batch = {k: v[:per_device] for k, v in jax_result['batch'].items()}
    device = torch_device(args.torch_device)
    autocast = args.dtype == 'bfloat16'
    out = torch_reference.benchmark_torch(
        config, jax_result['initial_variables'], batch, warmup=args.warmup,
        steps=args.steps, threads=args.torch_threads,
        channels_last=args.channels_last, device=device,
        autocast_dtype=torch.bfloat16 if autocast else None, time_now=False)
  except Exception as e:  # pylint: disable=broad-except
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exc()
    return {'error': f'{type(e).__name__}: {e}'}
  out.update(batch=per_device, device=device,
             autocast='bfloat16' if autocast else None,
             channels_last=args.channels_last, torch=torch.__version__,
             cuda=torch.version.cuda)
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_model_flags(parser)
  parser.add_argument('--variants', nargs='+', default=('baseline', 'sst'),
                      choices=('baseline', 'sst'))
  parser.add_argument('--num_devices', type=int, default=0,
                      help='0 = all local devices')
  parser.add_argument('--batch_per_device', type=int, default=0,
                      help='global batch = this x the devices in use '
                      '(overrides --batch and the preset)')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--steps', type=int, default=5,
                      help='timed steps (0: compile time and FLOPs only)')
  parser.add_argument('--peak_flops', type=float, default=0.0,
                      help='dense peak FLOP/s of one device for MFU '
                      '(default: PEAK_FLOPS by device kind and --dtype)')
  parser.add_argument('--torch', action='store_true',
                      help='also time the PyTorch reference (baseline)')
  parser.add_argument('--torch_device', default='auto',
                      help="PyTorch's device: auto (the GPU when JAX runs on "
                      'one, else the CPU), cpu, cuda, cuda:1, ...')
  parser.add_argument('--torch_threads', type=int, default=0,
                      help='torch.set_num_threads (0 = torch default)')
  parser.add_argument('--channels_last', action='store_true',
                      help='PyTorch reference in channels_last layout')
  parser.add_argument('--json', default='', help='also write results here')
  args = parser.parse_args(argv)
  if args.torch:
    # Before JAX starts its backend: by default it takes 75 % of a GPU's
    # memory up front, and PyTorch's step on the same GPU would not fit.
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  if args.batch_per_device:
    args.batch = args.batch_per_device * (args.num_devices or
                                          jax.device_count())
  args = apply_preset(args)

  kind = jax.devices()[0].device_kind
  n_dev = args.num_devices or jax.device_count()
  peak_per_device = args.peak_flops or device_peak_flops(kind, args.dtype)
  peak = peak_per_device * n_dev if peak_per_device else None
  device_info = {
      'kind': kind, 'count': n_dev, 'platform': jax.default_backend(),
      'peak_flops_per_device': peak_per_device,
      'peak_source': ('--peak_flops' if args.peak_flops else
                      'PEAK_FLOPS' if peak_per_device else None)}
  if peak is None:
    device_info['mfu_note'] = (
        f'no known dense {args.dtype} peak for {kind!r}: MFU not reported '
        '(pass --peak_flops)')
  print(f'# {kind} x{n_dev} ({platform.machine()}, {os.cpu_count()} CPUs), '
        f'jax {jax.__version__}; {args.backbone} width {args.width} OS '
        f'{args.output_stride} ctx {args.context_features} dec '
        f'{args.decoder_features}, {crop_text(args)}, '
        f'batch {args.batch}, {args.dtype}, {args.optimizer}, '
        f'{paths_text(args.paths_for, args.plain)}; median of '
        f'{args.steps} after {args.warmup} warm-up'
        f'{"; JAX and PyTorch timed in turns" if args.torch else ""}')
  if 'mfu_note' in device_info:
    print(f'# {device_info["mfu_note"]}')
  print(f'{"":<18}{"ms/step":>11}{"img/s":>10}{"compile s":>10}'
        f'{"GFLOP/img":>13}{"GFLOP/s":>12}  {"MFU":>6}', flush=True)
  results = {'args': vars(args), 'device': device_info,
             'versions': library_versions()}
  for variant in args.variants:
    config = load_config(variant, args)
    pair = bool(args.torch and variant == 'baseline' and args.steps)
    r = benchmark_jax(config, warmup=args.warmup, steps_=args.steps,
                      forward=variant == 'baseline', time_now=not pair,
                      implementations=implementations(args.paths_for,
                                                      args.plain))
    t = setup_torch(config, r, args) if pair else None
    if pair:
      # PyTorch is timed in turns with JAX, step by step.
      for kind_, key in (('train', 'train_step'), ('forward', 'forward')):
        outs = [r] + ([t] if 'runners' in t else [])
        for out, times in zip(outs, interleaved_times(
            [o['runners'][kind_] for o in outs], args.warmup, args.steps)):
          out[f'{key}_s'] = statistics.median(times)
          out[f'{kind_}_times'] = times
      for out in (r, t):
        out.pop('runners', None)
    if not args.steps:
      print(f'{f"jax {variant} train":<18}{"-":>11}{"-":>10}'
            f'{r["train_compile_s"]:>10.1f}'
            f'{r["train_flops_per_image"] / 1e9:>13.2f}', flush=True)
      results[variant] = {k: v for k, v in r.items() if k not in (
          'initial_variables', 'batch')}
      continue
    r['train'] = rates(args.batch, r['train_step_s'],
                       r['train_flops_per_image'], peak)
    print(_row(f'jax {variant} train', r['train'], r['train_compile_s']),
          flush=True)
    if 'forward_s' in r:
      r['forward'] = rates(args.batch, r['forward_s'],
                           r['forward_flops_per_image'], peak)
      print(_row('jax inference', r['forward'], r['forward_compile_s']),
            flush=True)
    results[variant] = {k: v for k, v in r.items() if k not in (
        'initial_variables', 'batch', 'forward_logits')}
    if t is not None:
      results['torch'] = _torch_report(r, t, peak_per_device)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=1, default=float)


def _torch_report(r: dict, t: dict, peak_per_device: float | None) -> dict:
  """Prints the PyTorch rows and checks; returns its JSON record."""
  if 'error' in t:
    print(f'# PyTorch reference failed: {t["error"]}', flush=True)
    return t
  t['train'] = rates(t['batch'], t['train_step_s'],
                     r['train_flops_per_image'], peak_per_device)
  t['forward'] = rates(t['batch'], t['forward_s'],
                       r['forward_flops_per_image'], peak_per_device)
  print(_row('torch train', t['train'], None))
  print(_row('torch inference', t['forward'], None))
  jax_logits = {k: np.asarray(v[:t['batch']], np.float32)
                for k, v in r['forward_logits'].items()}
  t['logits_max_rel_diff'] = max(
      float(np.max(np.abs(t['forward_logits'][k] - jax_logits[k]))
            / (np.max(np.abs(jax_logits[k])) + 1e-12)) for k in jax_logits)
  # Per device: JAX's step runs `batch / devices` images on each device.
  t['jax_over_torch'] = {'train_step': r['train_step_s'] / t['train_step_s'],
                         'forward': r['forward_s'] / t['forward_s']}
  shard = ('' if r['devices'] == 1 else
           f' (PyTorch: the first device\'s {t["batch"]} images)')
  print(f'# PyTorch {t["torch"]} on {t["device"]}, autocast {t["autocast"]}, '
        f'channels_last {t["channels_last"]}')
  print(f'# parameters: jax {r["params"]:,}  torch {t["params"]:,}  '
        f'({"equal" if r["params"] == t["params"] else "DIFFERENT"})')
  print(f'# same weights and batch: inference logits max rel. diff '
        f'{t["logits_max_rel_diff"]:.2e}; first train-step loss jax '
        f'{r["first_loss"]:.6f} torch {t["first_loss"]:.6f}{shard}')
  print(f'# time ratio JAX/PyTorch per device: train step '
        f'{t["jax_over_torch"]["train_step"]:.2f}, inference '
        f'{t["jax_over_torch"]["forward"]:.2f} (<1: JAX faster)', flush=True)
  return {k: v for k, v in t.items() if k != 'forward_logits'}


if __name__ == '__main__':
  # The allocator setting of training runs (sst_jax/host_memory.py).
  host_memory.reexec_with_huge_pages()
  main()
