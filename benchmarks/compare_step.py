"""Train-step time of config variants, interleaved in one process.

    python benchmarks/compare_step.py --preset=resnet101 --resolution=257 \
        --variant=baseline --rounds=3 --set=plain=concat_conv --set=
    python benchmarks/compare_step.py --preset=synthetic --optimizer=adamw \
        --set=plain=all --set=

On a shared machine the speed drifts by tens of percent between runs, so two
``train_step.py`` invocations cannot settle a 10 % difference. This script
compiles one train step per ``--set`` (comma-separated ``key=value``
overrides of the config, applied after the model/input flags; an empty
``--set=`` is the unchanged config), then times them in turns: each round
runs ``--per_round`` steps of every variant in order. It prints the median
step time of each variant and its ratio to the first one. ``--forward``
times the inference forward pass (``train=False``) instead.

Two keys of ``--set`` choose what the model runs instead of a config field,
as the flags of the same names do in ``train_step.py``: ``plain=`` the speed
paths replaced by their plain forms (fields of
``sst_jax.models.fast_paths.Implementations`` joined by ``+``, or ``all``)
and ``paths_for=`` the backend whose speed paths the model runs.

Same model, state, optimizer and jitted step as ``train_step.py`` (same
presets and model flags).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step as bench  # pylint: disable=g-import-not-at-top

from sst_jax import steps  # pylint: disable=g-import-not-at-top


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config, overrides: str):
  """``'a.b=1,c=x'`` -> ``config.a.b = 1; config.c = 'x'``.

  A comma starts a new item only before ``key=``, so values may be tuples:
  ``"sst.taps=('res2','context','decoder')"``.
  """
  items = re.split(r',(?=\s*[A-Za-z_][\w.]*\s*=)', overrides)
  with config.unlocked():
    for item in filter(None, (s.strip() for s in items)):
      if '=' not in item:
        raise ValueError(f'--set expects key=value items, got {item!r}')
      key, value = item.split('=', 1)
      *path, leaf = key.strip().split('.')
      node = config
      for name in path:
        node = node[name]
      if leaf not in node:
        raise KeyError(f'--set: the config has no field {key!r}')
      node[leaf] = _parse_value(value.strip())
  return config


def split_paths(overrides: str, paths_for: str = '',
                plain=()) -> tuple[str, str, tuple[str, ...]]:
  """Takes the ``paths_for=`` and ``plain=`` items out of ``overrides``.

  Args:
    overrides: one ``--set`` value.
    paths_for, plain: the values of the flags, which these items replace.

  Returns:
    ``(config overrides, paths_for, plain)``: the remaining items and the
    arguments of ``train_step.implementations``.
  """
  items = re.split(r',(?=\s*[A-Za-z_][\w.]*\s*=)', overrides)
  rest = []
  for item in filter(None, (s.strip() for s in items)):
    key, _, value = item.partition('=')
    if key.strip() == 'paths_for':
      paths_for = value.strip()
    elif key.strip() == 'plain':
      plain = tuple(filter(None, value.strip().split('+')))
    else:
      rest.append(item)
  return ','.join(rest), paths_for, tuple(plain)


def compile_step(config, forward: bool = False, implementations=None):
  """The jitted train step of ``config`` and a closure running it.

  With ``forward``, the inference forward pass (``train=False``) instead.
  ``implementations``: what the parser runs (``train_step.implementations``;
  default the backend's speed paths).
  """
  setup = bench.setup_train_step(config, implementations)
  state, batch = setup['state'], setup['batch']
  if forward:
    variables = steps.parser_variables(state.params, state.model_state)
    compiled = bench.jit_forward(setup).lower(variables,
                                              batch['image']).compile()
    return lambda: compiled(variables, batch['image'])
  compiled = setup['step_fn'].lower(state, batch).compile()
  holder = {'state': state}

  def run():
    holder['state'], metrics = compiled(holder['state'], batch)
    return metrics

  return run


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  bench.add_model_flags(parser)
  parser.add_argument('--variant', default='sst', choices=('baseline', 'sst'))
  parser.add_argument('--set', action='append', dest='sets', default=[],
                      help='one variant: comma-separated key=value config '
                      'overrides, or plain=/paths_for= (see above; repeat; '
                      'the first is the reference)')
  parser.add_argument('--iou_weight', type=float, default=None,
                      help='loss.iou_weight (train_step.py sets 0)')
  parser.add_argument('--num_devices', type=int, default=0)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--per_round', type=int, default=1)
  parser.add_argument('--forward', action='store_true',
                      help='time the inference forward pass instead of the '
                      'train step')
  args = bench.apply_preset(parser.parse_args(argv))
  if len(args.sets) < 2:
    parser.error('give at least two --set variants (an empty --set= is the '
                 'unchanged config)')

  runs = []
  for overrides in args.sets:
    config = bench.load_config(args.variant, args)
    if args.iou_weight is not None:
      with config.unlocked():
        config.loss.iou_weight = args.iou_weight
    config_overrides, paths_for, plain = split_paths(
        overrides, args.paths_for, args.plain)
    apply_overrides(config, config_overrides)
    t0 = time.perf_counter()
    run = compile_step(config, args.forward,
                       bench.implementations(paths_for, plain))
    print(f'# compiled [{overrides or "unchanged"}] in '
          f'{time.perf_counter() - t0:.1f} s', flush=True)
    runs.append(run)
  times = bench.interleaved_times(runs, args.warmup, args.rounds,
                                  args.per_round)

  what = 'inference forward' if args.forward else 'train step'
  print(f'# {what}, {args.preset} {args.variant}, '
        f'{bench.crop_text(args)}, '
        f'batch {args.batch}, {args.optimizer}, '
        f'{bench.paths_text(args.paths_for, args.plain)}; median of '
        f'{args.rounds * args.per_round} steps, interleaved in '
        f'{args.rounds} rounds')
  reference = statistics.median(times[0])
  for overrides, record in zip(args.sets, times):
    median = statistics.median(record)
    print(f'{median * 1e3:10.1f} ms  {median / reference:6.3f}x  '
          f'[{overrides or "unchanged"}]')


if __name__ == '__main__':
  from sst_jax import host_memory  # pylint: disable=g-import-not-at-top
  # The allocator setting of training runs (sst_jax/host_memory.py).
  host_memory.reexec_with_huge_pages()
  main()
