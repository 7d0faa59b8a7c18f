"""Runs ``python -m sst_jax.main ...`` with its training batches paced.

    paced_process.py SECONDS [sst_jax.main flags...]

Used by ``tests/test_preemption.py`` as the training command: every training
batch is served SECONDS after the previous one was asked for, so that a
signal sent while a tiny config trains arrives between two of its steps
rather than after the run has finished. The batches themselves, and so the
trained parameters, are those of ``python -m sst_jax.main`` with the same
flags.
"""

import runpy
import sys
import time


def main():
  seconds, *flags = sys.argv[1:]
  from sst_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  train_iterator = pipeline.train_iterator

  def paced_train_iterator(*args, **kwargs):
    it = train_iterator(*args, **kwargs)

    class Paced:

      def __iter__(self):
        return self

      def __next__(self):
        time.sleep(float(seconds))
        return next(it)

      def get_state(self):
        return it.get_state()

    return Paced()

  pipeline.train_iterator = paced_train_iterator
  sys.argv = ['sst_jax.main'] + flags
  runpy.run_module('sst_jax.main', run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
