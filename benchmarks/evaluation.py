"""Evaluation speed: the label-grid step against its reference, and full passes.

    python benchmarks/evaluation.py
    python benchmarks/evaluation.py --set=eval.batch_size=32 --rounds=10

Uses ``configs/synthetic.py`` (``--set`` overrides, as in ``compare_step.py``)
with its embedded validation data and freshly initialized weights (the cost
does not depend on the weights). Prints:

- the compile time of ``evaluate.Evaluator``'s step (what training compiles
  in the background while its input pipeline starts);
- one batch of the last domain, ``steps.label_grid_logits`` (the stride-4
  logits mapped onto the label grid by one composed matrix per axis) against
  the reference formulation (every head resized to the input, then mapped to
  the label grid with the ``resize_h``/``resize_w`` matrices), timed in turns
  in one process, with their median times, ratio and prediction agreement;
- two full evaluation passes over every domain (validation cache built
  before), images/s.

One view (no flip, scale 1): the test-time-augmentation path is the
reference formulation.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare_step  # pylint: disable=g-import-not-at-top
import train_step as bench  # pylint: disable=g-import-not-at-top

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from sst_jax import config_lib  # pylint: disable=g-import-not-at-top
from sst_jax import evaluate  # pylint: disable=g-import-not-at-top
from sst_jax import host_memory  # pylint: disable=g-import-not-at-top
from sst_jax import optim  # pylint: disable=g-import-not-at-top
from sst_jax import parallel  # pylint: disable=g-import-not-at-top
from sst_jax import recipe  # pylint: disable=g-import-not-at-top
from sst_jax import steps  # pylint: disable=g-import-not-at-top
from sst_jax.data import pipeline  # pylint: disable=g-import-not-at-top


def reference_grid_logits(variables, batch, *, model, domain_names):
  """Every head resized to the input, own head kept, mapped to the labels."""
  logits = steps.predict_logits(variables, batch['image'], model=model,
                                heads=tuple(domain_names),
                                image_hw=batch['image_hw'])
  lg = steps.own_domain_logits(logits, batch['domain'], domain_names)
  lg = jnp.einsum('blh,bhwc->blwc', batch['resize_h'], lg)
  return jnp.einsum('bmw,blwc->blmc', batch['resize_w'], lg)


def load_config(overrides: str):
  spec = importlib.util.spec_from_file_location(
      'synthetic_config', bench.REPO / 'configs' / 'synthetic.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  with config.unlocked():
    config.eval.flip = False
    config.eval.scales = (1.0,)
  return compare_step.apply_overrides(config, overrides)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--set', dest='overrides', default='',
                      help='comma-separated key=value config overrides')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--per_round', type=int, default=2)
  args = parser.parse_args(argv)

  config = load_config(args.overrides)
  domains = config_lib.validate_config(config)
  names = tuple(d.name for d in domains)
  mesh = parallel.make_mesh(config.num_devices or None)
  model, sst_model = recipe.build_models(config, domains,
                                         recipe.speed_paths())
  tx = optim.make_optimizer(config.optim, config.total_steps)
  repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
  state = jax.jit(functools.partial(
      recipe.init_train_state, model=model, sst_model=sst_model, tx=tx,
      image_size=config.data.crop_size), out_shardings=repl)(
          jax.random.key(config.seed))
  variables = steps.parser_variables(state.params, state.model_state)

  evaluator = evaluate.Evaluator(config, model, mesh, domains)
  t0 = time.perf_counter()
  evaluator.precompile(variables)
  compile_s = time.perf_counter() - t0

  batches, _ = pipeline.eval_batches(names[-1], len(names) - 1, config.data,
                                     evaluator.batch_size)
  batch = parallel.shard_batch(next(iter(batches)), mesh)
  kwargs = dict(model=model, domain_names=names)
  fns = {
      'label grid (composed resize)': functools.partial(
          steps.label_grid_logits, **kwargs),
      'reference (resize every head, then map)': functools.partial(
          reference_grid_logits, **kwargs),
  }
  jitted = {k: jax.jit(lambda v, b, f=f: jnp.argmax(f(v, b), -1),
                       in_shardings=(repl, data))
            for k, f in fns.items()}
  preds = [np.asarray(f(variables, batch)) for f in jitted.values()]
  valid = np.asarray(batch['label']) != 255
  agree = float(np.mean(preds[0][valid] == preds[1][valid]))
  times = bench.interleaved_times(
      [functools.partial(f, variables, batch) for f in jitted.values()],
      args.warmup, args.rounds, args.per_round)

  print(f'# cpu x{jax.device_count()} ({jax.devices()[0].device_kind}), '
        f'jax {jax.__version__}; {config.model.backbone} width '
        f'{config.model.width}, {len(names)} heads, input '
        f'{config.data.eval_input_size}, labels {config.data.eval_label_size},'
        f' eval batch {evaluator.batch_size}'
        + (f'; --set={args.overrides}' if args.overrides else ''))
  print(f'evaluation step compiled in {compile_s:.1f} s')
  print(f'# one batch of {names[-1]}, median of '
        f'{args.rounds * args.per_round} calls in {args.rounds} rounds; '
        f'predictions agree on {100 * agree:.4f} % of labelled pixels')
  reference = statistics.median(times[1])
  for name, record in zip(jitted, times):
    median = statistics.median(record)
    print(f'{median * 1e3:10.1f} ms  {median / reference:6.3f}x  '
          f'{evaluator.batch_size / median:7.1f} img/s  {name}')
  # Counting the examples also builds every domain's validation cache.
  n = sum(pipeline.eval_batches(d, k, config.data, evaluator.batch_size)[1]
          for k, d in enumerate(names))
  for i in range(2):
    t0 = time.perf_counter()
    evaluator(variables)
    seconds = time.perf_counter() - t0
    print(f'full evaluation pass {i + 1}: {n} images in {seconds:.1f} s, '
          f'{n / seconds:.1f} img/s')

if __name__ == '__main__':
  # The allocator setting of training runs (sst_jax/host_memory.py).
  host_memory.reexec_with_huge_pages()
  main()
