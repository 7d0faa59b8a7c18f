"""Runs ``python -m sst_jax.main ...`` with one process of a job held back.

    slow_process.py SLOW_ID SECONDS -m sst_jax.main --process_id=I [flags...]

Used by ``tests/test_multiprocess.py`` as the launcher's interpreter: the
process whose ``--process_id`` is ``SLOW_ID`` starts its input pipeline
``SECONDS`` later than the others, as a host that reads its data or compiles
more slowly would. Every other process runs unchanged.
"""

import runpy
import sys
import time


def main():
  slow_id, seconds, flag, module, *flags = sys.argv[1:]
  assert (flag, module) == ('-m', 'sst_jax.main'), sys.argv
  if f'--process_id={slow_id}' in flags:
    from sst_jax.data import pipeline
    train_iterator = pipeline.train_iterator

    def late_train_iterator(*args, **kwargs):
      time.sleep(float(seconds))
      return train_iterator(*args, **kwargs)

    pipeline.train_iterator = late_train_iterator
  sys.argv = [module] + flags
  runpy.run_module(module, run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
