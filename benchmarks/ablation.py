"""SST ablation on the synthetic domains: variants x seeds, same steps.

    python benchmarks/ablation.py --workdir=/tmp/sst_ablation --seeds=0,1 \
        --overrides="total_steps=300"

Runs each variant of ``configs/synthetic.py`` (baseline, sst, pascal alone,
dedicated SST for synthetic_pascal, msa_mse, msa_mst) for every seed in its
own workdir (existing finished runs are reused), then prints a markdown table
of final validation mIoU per domain (own head, no test-time augmentation),
mean and spread over seeds, and the median train-step time of each variant
relative to the baseline measured in the same invocation.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

VARIANTS = ('pascal', 'baseline', 'sst', 'dedicated', 'msa_mse', 'msa_mst')
DOMAINS = ('synthetic_pascal', 'synthetic_atr', 'synthetic_cihp',
           'synthetic_lip')


def run(variant, seed, workdir, overrides):
  cmd = [sys.executable, '-m', 'sst_jax.main',
         f'--config=configs/synthetic.py:{variant}', f'--workdir={workdir}',
         f'--config.seed={seed}']
  cmd += [f'--config.{o}' for o in overrides]
  print('+', ' '.join(cmd), flush=True)
  subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def read(workdir):
  records = [json.loads(l) for l in open(os.path.join(workdir,
                                                       'metrics.jsonl'))]
  final = [r for r in records if r['kind'] == 'eval'][-1]
  train = [r for r in records if r['kind'] == 'train']
  # Skip the first interval (compilation) for the step time.
  rates = [r['steps_per_sec'] for r in train[1:]] or [train[-1]['steps_per_sec']]
  return {d: final[d]['miou'] for d in DOMAINS if d in final}, 1 / np.median(
      rates)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--variants', default=','.join(VARIANTS))
  parser.add_argument('--overrides', default='',
                      help='space-separated config overrides, e.g. '
                      '"total_steps=300 eval_every=0"')
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(',')]
  overrides = args.overrides.split()
  results = {}
  for variant in args.variants.split(','):
    for seed in seeds:
      workdir = os.path.join(args.workdir, f'{variant}_seed{seed}')
      run(variant, seed, workdir, overrides)
      results[(variant, seed)] = read(workdir)
  base_time = np.median([results[('baseline', s)][1] for s in seeds]) if (
      'baseline', seeds[0]) in results else None
  print('\n| variant | ' + ' | '.join(d.replace('synthetic_', '')
                                      for d in DOMAINS) +
        ' | mean | step time vs baseline |')
  print('|---' * (len(DOMAINS) + 3) + '|')
  for variant in args.variants.split(','):
    per_seed = [results[(variant, s)][0] for s in seeds]
    cells = []
    for d in DOMAINS:
      vals = [r[d] for r in per_seed if d in r]
      cells.append(f'{np.mean(vals):.3f} ± {np.std(vals):.3f}' if vals else '')
    means = [np.mean([r[d] for d in DOMAINS if d in r]) for r in per_seed]
    t = np.median([results[(variant, s)][1] for s in seeds])
    ratio = f'{t / base_time:.2f}x' if base_time else ''
    print(f'| {variant} | ' + ' | '.join(cells) +
          f' | {np.mean(means):.3f} ± {np.std(means):.3f} | {ratio} |')


if __name__ == '__main__':
  main()
