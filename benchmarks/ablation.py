"""SST ablation on the synthetic domains: rows x seeds, paired against a baseline.

    python benchmarks/ablation.py --workdir=/tmp/sst_ablation --seeds=0,1,2 \
        --overrides="total_steps=400 eval_every=0 checkpoint_every=400"

Each row is a ``configs/synthetic.py:<arg>`` run, trained for every seed in
its own workdir (a workdir that holds a finished run is reused). Groups
(``--groups``):

* ``universal``: the plain multi-head baseline, SST as drawn, MSA + MSE
  only (no MST); all four domains.
* ``dedicated``: ``synthetic_pascal`` trained alone; started from a source
  model (universal SST on atr, cihp and lip, trained first for the same
  seed) and fine-tuned on its own images without MST; dedicated SST as
  drawn from that source (frozen source, MST).
* ``scalability``: ``synthetic_pascal``'s mIoU with universal SST on
  {pascal}, {pascal, cihp}, {pascal, cihp, atr} and all four domains (the
  one-domain row is the baseline: SST needs two domains to transfer).
* ``low_data``: baseline and SST with ``synthetic_pascal`` cut to 100
  training images, where transfer should matter most.

Prints, per group, a Markdown table of the final validation mIoU per domain
(own head, no test-time augmentation; ``synthetic_pascal`` only for the
dedicated and scalability groups): mean ± standard deviation over seeds,
and the mean over seeds of the per-seed paired difference against the
group's first row (same seed) with its standard deviation.
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
# The dedicated rows' source: universal SST on the three other domains.
SOURCE = 'sst,domains=atr+cihp+lip'
# Rows: (label, configs/synthetic.py argument, source argument or None).
GROUPS = {
    'universal': [('baseline', 'baseline', None),
                  ('SST as drawn', 'sst', None),
                  ('MSA + MSE', 'msa_mse', None)],
    'dedicated': [('trained alone', 'pascal', None),
                  ('from the source, fine-tuned without MST', 'finetune',
                   SOURCE),
                  ('dedicated SST as drawn', 'dedicated', SOURCE)],
    'scalability': [('{pascal} (baseline)', 'pascal', None),
                    ('{pascal, cihp}', 'sst,domains=pascal+cihp', None),
                    ('{pascal, cihp, atr}', 'sst,domains=pascal+cihp+atr',
                     None),
                    ('all four', 'sst', None)],
    'low_data': [('baseline', 'baseline' + LOW, None),
                 ('SST as drawn', 'sst' + LOW, None)],
}
# Groups that compare synthetic_pascal only.
PASCAL_ONLY = ('dedicated', 'scalability')


def workdir_of(root, arg, seed):
  name = f'{arg}_seed{seed}'
  for char in ',=:+':
    name = name.replace(char, '-' if char != ',' else '_')
  return os.path.join(root, name)


def run(arg, seed, workdir, overrides, init_from=None):
  """Trains one row for one seed, unless its workdir holds a finished run."""
  metrics = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(metrics):
    with open(metrics) as f:
      if any(json.loads(line)['kind'] == 'summary' for line in f):
        return
  cmd = [sys.executable, '-m', 'sst_jax.main',
         f'--config=configs/synthetic.py:{arg}', f'--workdir={workdir}',
         f'--config.seed={seed}']
  if init_from:
    cmd.append(f'--config.init_from={init_from}')
  cmd += [f'--config.{o}' for o in overrides]
  print('+', ' '.join(cmd), flush=True)
  subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def final_miou(workdir) -> dict:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  final = [r for r in records if r['kind'] == 'eval'][-1]
  return {d: final[d]['miou'] for d in DOMAINS if d in final}


def table(rows, results, seeds, domains=DOMAINS) -> list[str]:
  """Markdown rows: mean ± std per domain, paired difference to row 0."""
  names = [d for d in domains if any(d in results[(arg, s)]
                                     for _, arg, _ in rows for s in seeds)]
  lines = ['| row | ' + ' | '.join(d.replace('synthetic_', '') for d in names)
           + ' | paired difference to the first row (per domain) |',
           '|---' * (len(names) + 2) + '|']
  reference = rows[0][1]
  for label, arg, _ in rows:
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
    for _, arg, source in GROUPS[group]:
      for seed in seeds:
        if (arg, seed) in results:
          continue
        init_from = None
        if source:
          init_from = workdir_of(args.workdir, source, seed)
          run(source, seed, init_from, overrides)
        workdir = workdir_of(args.workdir, arg, seed)
        run(arg, seed, workdir, overrides, init_from)
        results[(arg, seed)] = final_miou(workdir)
  for group in args.groups.split(','):
    print(f'\n### {group} (seeds {args.seeds})\n')
    print('\n'.join(table(GROUPS[group], results, seeds,
                           DOMAINS[:1] if group in PASCAL_ONLY else DOMAINS)))

if __name__ == '__main__':
  main()
