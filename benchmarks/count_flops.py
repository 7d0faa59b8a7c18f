"""Model FLOPs per image of the train step and the inference forward.

    python benchmarks/count_flops.py --preset=resnet101 --dtype=bfloat16 \
        --paths_for=gpu --batch=16

XLA's count on the lowered programs (``train_step.flops_per_image``), traced
with abstract shapes: nothing is initialized or compiled, so it takes
seconds for ResNet-101 at 473x473 on any machine. It is the numerator of a
model FLOPs utilisation measured elsewhere (e.g. on a GPU, whose compiled
programs' own count misses the cuDNN convolutions). ``--paths_for`` must
name the measured device's backend: the model is built with that backend's
speed paths (``fast_paths.for_backend``), and the CPU's kernel gradients
count other FLOPs than the GPU's.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step as bench  # pylint: disable=g-import-not-at-top

from sst_jax import config_lib
from sst_jax import optim  # pylint: disable=g-import-not-at-top
from sst_jax import recipe
from sst_jax import steps


def count(config, implementations=None) -> dict:
  """``{'train': FLOPs per image, 'forward': FLOPs per image}``.

  ``implementations``: what the parser runs (``train_step.implementations``;
  default: the speed paths of the backend JAX runs on).
  """
  domains = config_lib.validate_config(config)
  if implementations is None:
    implementations = recipe.speed_paths()
  model, sst_model = recipe.build_models(config, domains, implementations)
  tx = optim.make_optimizer(config.optim, config.total_steps)
  init_fn = functools.partial(
      recipe.init_train_state, model=model, sst_model=sst_model, tx=tx,
      image_size=config.data.crop_size)
  state = jax.eval_shape(init_fn, jax.random.key(0))
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in
           bench.synthetic_batch(config, len(domains)).items()}
  step_fn = jax.jit(functools.partial(
      steps.train_step, model=model, sst_model=sst_model, tx=tx,
      domain_names=[d.name for d in domains], cfg=config,
      lr_fn=optim.learning_rate_schedule(config.optim, config.total_steps)))
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
  variables = steps.parser_variables(state.params, state.model_state)
  n = config.batch_size
  step_args, fwd_args = (state, batch), (variables, batch['image'])
  return {
      'train': bench.flops_per_image(step_fn.lower(*step_args), step_fn,
                                     step_args, n),
      'forward': bench.flops_per_image(forward.lower(*fwd_args), forward,
                                       fwd_args, n)}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  bench.add_model_flags(parser)
  parser.add_argument('--variants', nargs='+', default=('baseline', 'sst'),
                      choices=('baseline', 'sst'))
  args = bench.apply_preset(parser.parse_args(argv))
  args.num_devices = 0
  print(f'# {args.preset}: {args.backbone} OS {args.output_stride}, '
        f'{bench.crop_text(args)}, batch {args.batch}, {args.dtype}, '
        f'{bench.paths_text(args.paths_for, args.plain)}')
  print(f'{"":10s} {"train GFLOP/img":>16s} {"forward GFLOP/img":>18s}')
  for variant in args.variants:
    flops = count(bench.load_config(variant, args),
                  bench.implementations(args.paths_for, args.plain))
    print(f'{variant:10s} {flops["train"] / 1e9:16.1f} '
          f'{flops["forward"] / 1e9:18.1f}', flush=True)


if __name__ == '__main__':
  main()
