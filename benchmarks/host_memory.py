"""The main job's training loop with and without glibc huge pages.

    python benchmarks/host_memory.py --rounds=2 --steps=300

Runs ``python -m sst_jax.main --config=configs/synthetic.py`` for ``--steps``
steps (no periodic evaluation, one at the end) in turns with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=0`` (glibc's default) and as users run
it (the entry point adds ``glibc.malloc.hugetlb=1``, see
``sst_jax/host_memory.py``), each in a fresh workdir and without the
persistent compilation cache, as on a fresh machine; in turns, so that drift
on a shared machine hits both alike. Per run it prints the training loop's
wall time (``wall_time_sec`` of ``metrics.jsonl``, startup excluded), the
median of the logged images/s, and the process's user and system CPU seconds
and minor page faults; then the median loop time of each setting and their
ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_once(workdir: str, huge_pages: bool, steps: int) -> dict:
  env = dict(os.environ)
  env.pop('GLIBC_TUNABLES', None)
  if not huge_pages:
    env['GLIBC_TUNABLES'] = 'glibc.malloc.hugetlb=0'
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  subprocess.run(
      [sys.executable, '-m', 'sst_jax.main', '--config=configs/synthetic.py',
       f'--workdir={workdir}', '--compilation_cache=',
       f'--config.total_steps={steps}', '--config.eval_every=0',
       f'--config.checkpoint_every={steps}'],
      cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  records = [json.loads(line)
             for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  rates = [r['images_per_sec'] for r in records if r['kind'] == 'train']
  return {
      'loop_s': records[-1]['wall_time_sec'],
      'images_per_sec': statistics.median(rates),
      'user_s': after.ru_utime - before.ru_utime,
      'sys_s': after.ru_stime - before.ru_stime,
      'minor_faults': after.ru_minflt - before.ru_minflt,
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--steps', type=int, default=300)
  args = parser.parse_args(argv)
  results = {True: [], False: []}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.rounds):
      for huge in (False, True):
        out = run_once(os.path.join(tmp, f'{r}_{huge}'), huge, args.steps)
        results[huge].append(out)
        print(f'round {r + 1} huge pages {"on " if huge else "off"}  loop '
              f'{out["loop_s"]:6.1f} s  {out["images_per_sec"]:5.1f} img/s  '
              f'user {out["user_s"]:6.1f} s  sys {out["sys_s"]:5.1f} s  '
              f'minor faults {out["minor_faults"]:,}', flush=True)
  off = statistics.median(r['loop_s'] for r in results[False])
  on = statistics.median(r['loop_s'] for r in results[True])
  print(f'# configs/synthetic.py, {args.steps} steps, median of '
        f'{args.rounds} runs each, interleaved: loop {off:.1f} s without, '
        f'{on:.1f} s with huge pages: {off / on:.2f}x faster')


if __name__ == '__main__':
  main()
