"""SST ablation on the synthetic domains: rows x seeds, paired against a reference.

    python benchmarks/ablation.py --workdir=/tmp/sst_ablation --seeds=0,1,2 \
        --overrides="total_steps=400 eval_every=0 checkpoint_every=400 log_every=50"

Each row is a ``configs/synthetic.py:<arg>`` run (plus the row's own config
overrides, if any), trained for every seed in its own workdir (a workdir that
holds a finished run is reused). Groups (``--groups``):

* ``universal``: the plain multi-head baseline, SST as drawn, MSA + MSE
  only (no MST), and SST with each alternative reconstruction of
  ``sst.intra`` and ``sst.mst_stop_gradient``; all four domains.
* ``dedicated``: ``synthetic_pascal`` trained alone; started from a source
  model (universal SST on atr, cihp and lip, trained first for the same
  seed) and fine-tuned on its own images without MST; dedicated SST as
  drawn from that source (frozen source, MST).
* ``scalability``: ``synthetic_pascal``'s mIoU on {pascal}, {pascal, cihp},
  {pascal, cihp, atr} and all four domains, the baseline and universal SST
  on each set; SST is paired with the baseline of its set, each baseline
  with pascal trained alone.
* ``low_data``: baseline and SST with ``synthetic_pascal`` cut to 100
  training images, where transfer should matter most.

Prints, per group, a Markdown table of the final validation mIoU per domain
(own head, no test-time augmentation; ``synthetic_pascal`` only for the
dedicated and scalability groups): mean ± sample standard deviation over
seeds, and the mean over seeds of the per-seed paired difference against
the row's reference (the group's first row unless the row names another;
same seed) with its sample standard deviation.
"""

import argparse
import json
import os
import subprocess
import sys
from typing import NamedTuple

import numpy as np

DOMAINS = ('synthetic_pascal', 'synthetic_atr', 'synthetic_cihp',
           'synthetic_lip')
LOW = ',train_examples=pascal:100'
# The dedicated rows' source: universal SST on the three other domains.
SOURCE = 'sst,domains=atr+cihp+lip'


class Row(NamedTuple):
  """One ablation row.

  ``extra``: config overrides of this row only (``key=value`` strings);
  ``source``: the argument of the run its ``init_from`` points at;
  ``reference``: the key of the row its paired difference is taken against
  (``None``: the group's first row).
  """
  label: str
  arg: str
  source: str | None = None
  extra: tuple[str, ...] = ()
  reference: str | None = None

  @property
  def key(self) -> str:
    return ' '.join((self.arg,) + self.extra)


def _scalability_rows():
  rows = [Row('{pascal} baseline', 'pascal'),
          Row('{pascal} SST', 'sst,domains=pascal', reference='pascal')]
  for names in ('pascal+cihp', 'pascal+cihp+atr', None):
    label = '{' + ', '.join(names.split('+')) + '}' if names else 'all four'
    suffix = f',domains={names}' if names else ''
    rows.append(Row(f'{label} baseline', 'baseline' + suffix))
    rows.append(Row(f'{label} SST', 'sst' + suffix,
                    reference='baseline' + suffix))
  return rows


GROUPS = {
    'universal': [Row('baseline', 'baseline'),
                  Row('SST as drawn', 'sst'),
                  Row('MSA + MSE', 'msa_mse'),
                  Row('SST, M_intra learned by gradient', 'sst',
                      extra=('sst.intra=learned',)),
                  Row('SST, no gradient through the mapped nodes', 'sst',
                      extra=('sst.mst_stop_gradient=mapped',))],
    'dedicated': [Row('trained alone', 'pascal'),
                  Row('from the source, fine-tuned without MST', 'finetune',
                      SOURCE),
                  Row('dedicated SST as drawn', 'dedicated', SOURCE)],
    'scalability': _scalability_rows(),
    'low_data': [Row('baseline', 'baseline' + LOW),
                 Row('SST as drawn', 'sst' + LOW)],
}
# Groups that compare synthetic_pascal only.
PASCAL_ONLY = ('dedicated', 'scalability')


def workdir_of(root, key, seed):
  """``root/<key>_seed<seed>``, the key's punctuation made path-safe."""
  name = f'{key}_seed{seed}'
  for char, sub in ((' ', '__'), (',', '_'), ('=', '-'), (':', '-'),
                    ('+', '-'), ('.', '-')):
    name = name.replace(char, sub)
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


def _mean_std(values, signed=False) -> str:
  """Mean ± sample standard deviation (ddof 1: few seeds)."""
  values = np.asarray(values, np.float64)
  mean = f'{values.mean():+.3f}' if signed else f'{values.mean():.3f}'
  return f'{mean} ± {values.std(ddof=1):.3f}'


def table(rows, results, seeds, domains=DOMAINS) -> list[str]:
  """Markdown rows: mean ± std per domain, paired difference to the reference.

  ``results[(row key, seed)]`` holds the final mIoU per domain.
  """
  if len(seeds) < 2:
    raise ValueError('a spread needs at least two seeds')
  names = [d for d in domains if any(d in results[(row.key, s)]
                                     for row in rows for s in seeds)]
  lines = ['| row | ' + ' | '.join(d.replace('synthetic_', '') for d in names)
           + ' | paired difference to the reference row (per domain) |',
           '|---' * (len(names) + 2) + '|']
  for row in rows:
    reference = row.reference or rows[0].key
    cells, diffs = [], []
    for d in names:
      vals = [results[(row.key, s)].get(d) for s in seeds]
      if None in vals:
        cells.append('')
        continue
      cells.append(_mean_std(vals))
      ref = [results[(reference, s)].get(d) for s in seeds]
      if row.key != reference and None not in ref:
        diffs.append(f'{d.replace("synthetic_", "")} '
                     + _mean_std(np.subtract(vals, ref), signed=True))
    against = f' (against `{reference}`)' if diffs else ''
    arg = row.key.replace(' ', ' --config.')
    lines.append(f'| {row.label} (`{arg}`) | ' + ' | '.join(cells) + ' | '
                 + ', '.join(diffs) + against + ' |')
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--groups', default=','.join(GROUPS))
  parser.add_argument('--overrides', default='',
                      help='space-separated config overrides of every row, '
                      'e.g. "total_steps=600 eval_every=0"')
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(',')]
  if len(seeds) < 3:
    print(f'warning: {len(seeds)} seed(s); the tables in docs/results.md '
          'use 3', file=sys.stderr)
  overrides = args.overrides.split()
  groups = args.groups.split(',')
  unknown = sorted(set(groups) - set(GROUPS))
  if unknown:
    parser.error(f'unknown groups {unknown}; known: {sorted(GROUPS)}')
  results = {}
  for group in groups:
    for row in GROUPS[group]:
      for seed in seeds:
        if (row.key, seed) in results:
          continue
        init_from = None
        if row.source:
          init_from = workdir_of(args.workdir, row.source, seed)
          run(row.source, seed, init_from, overrides)
        workdir = workdir_of(args.workdir, row.key, seed)
        run(row.arg, seed, workdir, overrides + list(row.extra), init_from)
        results[(row.key, seed)] = final_miou(workdir)
  for group in groups:
    print(f'\n### {group} (seeds {args.seeds})\n')
    print('\n'.join(table(GROUPS[group], results, seeds,
                           DOMAINS[:1] if group in PASCAL_ONLY else DOMAINS)))


if __name__ == '__main__':
  main()
