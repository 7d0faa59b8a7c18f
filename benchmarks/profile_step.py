"""Where the time of one jitted train step (or forward) goes, op by op.

    python benchmarks/profile_step.py --preset=resnet101 --resolution=257
    python benchmarks/profile_step.py --preset=synthetic --variant=sst

Builds the same model and jitted step as ``train_step.py`` (same presets and
model flags), runs it under ``jax.profiler`` after a warm-up, and sums the
time of every executed XLA op by kind: convolutions (forward, input
gradient, kernel gradient), matrix products (forward, backward), data
movement (copies, transposes, slices, pads) and the rest (elementwise and
reductions). Then the most expensive ops with their output shape and the
model layer that produced them. XLA:CPU runs independent ops concurrently,
so the op times add up to more than the step's wall time; compare shares.

``--plain`` replaces speed paths by their plain forms
(``sst_jax/models/fast_paths.py``; e.g. ``--plain conv`` for XLA's
convolution kernel gradients), so both forms can be compared.
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step as bench  # pylint: disable=g-import-not-at-top

from sst_jax import config_lib
from sst_jax import optim  # pylint: disable=g-import-not-at-top
from sst_jax import recipe
from sst_jax import steps

_MOVE = ('copy', 'transpose', 'slice', 'pad', 'concatenate', 'bitcast')


def _parse_hlo(text: str):
  """``{instruction: line}`` and ``{computation: body}`` of optimized HLO."""
  computations = {
      m.group(1).lstrip('%'): m.group(2)
      for m in re.finditer(r'\n(%?[\w.\-]+) [^\n]*\{\n(.*?)\n\}', text, re.S)}
  instructions = {
      m.group(1): m.group(2)
      for m in re.finditer(r'\n\s*(?:ROOT )?%?([\w.\-]+) = ([^\n]*)', text)}
  return instructions, computations


def classify(name: str, instructions, computations) -> tuple[str, str, str]:
  """(kind, output shape, layer) of one executed op (thunk) name."""
  line = instructions.get(name, '')
  called = re.search(r'calls=%?([\w.\-]+)', line)
  body = computations.get(called.group(1), '') if called else ''
  roots = [l for l in body.split('\n') if 'ROOT' in l]
  root = roots[0] if roots else line
  shape = root.split('=', 1)[1].split('{')[0].split('(')[0].strip() if (
      '=' in root) else ''
  op = re.search(r'op_name="([^"]+)"', root) or re.search(
      r'op_name="([^"]+)"', line)
  layer = op.group(1) if op else ''
  backward = 'transpose(jvp' in layer
  layer = re.sub(r'^jit\([^)]*\)/', '', layer)
  if 'convolution(' in root:
    window = re.search(r'window=\{size=(\d+)', root)
    if window and int(window.group(1)) > 7:
      kind = 'conv: kernel gradient'
    else:
      kind = 'conv: input gradient' if backward else 'conv: forward'
  elif 'dot(' in root or name.startswith('dot'):
    kind = 'matmul: backward' if backward else 'matmul: forward'
  elif any(name.startswith(m) or f'{m}_' in name for m in _MOVE):
    kind = 'data movement'
  else:
    kind = 'elementwise / reduction / other'
  return kind, shape, layer


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  bench.add_model_flags(parser)
  parser.add_argument('--variant', default='baseline',
                      choices=('baseline', 'sst'),
                      help='configs/synthetic.py variant')
  parser.add_argument('--mode', choices=('train', 'forward'), default='train')
  parser.add_argument('--top', type=int, default=15)
  args = bench.apply_preset(parser.parse_args(argv))
  args.num_devices = 1
  config = bench.load_config(args.variant, args)
  domains = config_lib.validate_config(config)
  model, sst_model = recipe.build_models(
      config, domains, bench.implementations(args.paths_for, args.plain))
  tx = optim.make_optimizer(config.optim, config.total_steps)
  lr_fn = optim.learning_rate_schedule(config.optim, config.total_steps)
  state = jax.jit(functools.partial(
      recipe.init_train_state, model=model, sst_model=sst_model, tx=tx,
      image_size=config.data.crop_size))(jax.random.key(0))
  batch = jax.device_put(bench.synthetic_batch(config, len(domains)))
  if args.mode == 'train':
    compiled = jax.jit(functools.partial(
        steps.train_step, model=model, sst_model=sst_model, tx=tx,
        domain_names=[d.name for d in domains], cfg=config, lr_fn=lr_fn),
                       donate_argnums=0).lower(state, batch).compile()
    holder = [state]

    def run():
      holder[0] = compiled(holder[0], batch)[0]
      return holder[0]
  else:
    variables = steps.parser_variables(state.params, state.model_state)
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)[0]).lower(
        variables, batch['image']).compile()
    run = lambda: compiled(variables, batch['image'])
  instructions, computations = _parse_hlo(compiled.as_text())
  jax.block_until_ready(run())
  t0 = time.perf_counter()
  jax.block_until_ready(run())
  step_s = time.perf_counter() - t0
  with tempfile.TemporaryDirectory() as logdir:
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
      jax.block_until_ready(run())
    trace_file, = glob.glob(f'{logdir}/**/perfetto_trace.json.gz',
                            recursive=True)
    with gzip.open(trace_file) as f:
      trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  op_time = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and e['name'] in instructions:
      op_time[e['name']] += e.get('dur', 0) / 1e3
  by_kind, rows = collections.Counter(), []
  for name, ms in op_time.items():
    kind, shape, layer = classify(name, instructions, computations)
    by_kind[kind] += ms
    rows.append((ms, kind, shape, layer))
  total = sum(by_kind.values())
  print(f'# {args.preset} {args.variant} {args.mode}, {bench.crop_text(args)}'
        f', batch {args.batch}, '
        f'{bench.paths_text(args.paths_for, args.plain)}: step '
        f'{step_s * 1e3:.1f} ms wall, '
        f'{total:.1f} ms summed over {len(op_time)} ops')
  print(f'{"kind":34s} {"ms":>9s} {"share":>6s}')
  for kind, ms in by_kind.most_common():
    print(f'{kind:34s} {ms:9.1f} {ms / total:6.1%}')
  print(f'\ntop {args.top} ops:')
  for ms, kind, shape, layer in sorted(rows, reverse=True)[:args.top]:
    print(f'{ms:9.1f} ms  {kind:26s} {shape:24s} {layer[:70]}')


if __name__ == '__main__':
  from sst_jax import host_memory  # pylint: disable=g-import-not-at-top
  # The allocator setting of training runs (sst_jax/host_memory.py).
  host_memory.reexec_with_huge_pages()
  main()
