"""SST ablation on the synthetic domains: rows x seeds, paired against a baseline.

    python benchmarks/ablation.py --workdir=/tmp/sst_ablation --seeds=0,1,2 \
        --overrides="total_steps=600 eval_every=0 checkpoint_every=600"

Each row is a ``configs/synthetic.py:<arg>`` run, trained for every seed in
its own workdir (finished runs are reused). Groups (``--groups``):

* ``universal``: the plain multi-head baseline, SST as drawn, MSA + MSE
  only, the first reconstruction; all four domains.
* ``scalability``: ``synthetic_pascal``'s mIoU with universal SST on
  {pascal}, {pascal, cihp}, {pascal, cihp, atr} and all four domains (the
  one-domain row is the baseline: SST needs two domains to transfer).
* ``low_data``: the universal rows with ``synthetic_pascal`` cut to 100
  training images, where transfer should matter most.

Prints, per group, a Markdown table of the final validation mIoU per domain
(own head, no test-time augmentation): mean ± standard deviation over seeds,
and the mean over seeds of the per-seed paired difference against the
group's reference row (same seed) with its standard deviation.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

DOMAINS = ('synthetic_pascal', 'synthetic_atr', 'synthetic_cihp',
           'synthetic_lip')
LOW = ',train_examples=pascal:100'
GROUPS = {
    'universal': [('baseline', 'baseline'), ('SST as drawn', 'drawn'),
                  ('MSA + MSE', 'msa_mse,sst=drawn'),
                  ('first reconstruction', 'first')],
    'scalability': [('{pascal} (baseline)', 'pascal'),
                    ('{pascal, cihp}', 'drawn,domains=pascal+cihp'),
                    ('{pascal, cihp, atr}', 'drawn,domains=pascal+cihp+atr'),
                    ('all four', 'drawn')],
    'low_data': [('baseline', 'baseline' + LOW),
                 ('SST as drawn', 'drawn' + LOW),
                 ('MSA + MSE', 'msa_mse,sst=drawn' + LOW),
                 ('first reconstruction', 'first' + LOW)],
}


def run(arg, seed, workdir, overrides):
  cmd = [sys.executable, '-m', 'sst_jax.main',
         f'--config=configs/synthetic.py:{arg}', f'--workdir={workdir}',
         f'--config.seed={seed}']
  cmd += [f'--config.{o}' for o in overrides]
  print('+', ' '.join(cmd), flush=True)
  subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def final_miou(workdir) -> dict:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  final = [r for r in records if r['kind'] == 'eval'][-1]
  return {d: final[d]['miou'] for d in DOMAINS if d in final}


def table(rows, results, seeds) -> list[str]:
  """Markdown rows: mean ± std per domain, paired difference to row 0."""
  names = [d for d in DOMAINS if any(d in results[(arg, s)] for _, arg in rows
                                     for s in seeds)]
  lines = ['| row | ' + ' | '.join(d.replace('synthetic_', '') for d in names)
           + ' | paired difference to the first row (per domain) |',
           '|---' * (len(names) + 2) + '|']
  reference = rows[0][1]
  for label, arg in rows:
    cells, diffs = [], []
    for d in names:
      vals = [results[(arg, s)].get(d) for s in seeds]
      if None in vals:
        cells.append('')
        continue
      cells.append(f'{np.mean(vals):.3f} ± {np.std(vals):.3f}')
      ref = [results[(reference, s)].get(d) for s in seeds]
      if arg != reference and None not in ref:
        delta = np.asarray(vals) - np.asarray(ref)
        diffs.append(f'{d.replace("synthetic_", "")} '
                     f'{np.mean(delta):+.3f} ± {np.std(delta):.3f}')
    lines.append(f'| {label} (`{arg}`) | ' + ' | '.join(cells) + ' | '
                 + ', '.join(diffs) + ' |')
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--groups', default=','.join(GROUPS))
  parser.add_argument('--overrides', default='',
                      help='space-separated config overrides, e.g. '
                      '"total_steps=600 eval_every=0"')
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(',')]
  overrides = args.overrides.split()
  results = {}
  for group in args.groups.split(','):
    for _, arg in GROUPS[group]:
      for seed in seeds:
        if (arg, seed) in results:
          continue
        workdir = os.path.join(args.workdir, f'{arg}_seed{seed}'.replace(
            ',', '_').replace('=', '-').replace(':', '-').replace('+', '-'))
        run(arg, seed, workdir, overrides)
        results[(arg, seed)] = final_miou(workdir)
  for group in args.groups.split(','):
    print(f'\n### {group} (seeds {args.seeds})\n')
    print('\n'.join(table(GROUPS[group], results, seeds)))


if __name__ == '__main__':
  main()
