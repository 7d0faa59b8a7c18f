"""Preemption: SIGTERM mid-run saves that step, exits 0 and resumes exactly.

The acceptance test runs ``python -m sst_jax.main`` on ``configs/tiny.py``
in a subprocess whose training batches are paced (``tests/paced_process.py``)
so that SIGTERM, sent once ``metrics.jsonl`` shows step 2, arrives mid-run.
The same command then resumes from the checkpoint of the step the signal
interrupted and must end with the parameters, bit for bit, of an
uninterrupted run of the same config.
"""

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import helpers
from configs import tiny
from sst_jax import checkpointing
from sst_jax import train
from sst_jax import writers
from sst_jax.data import pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]
PACED = REPO / 'tests' / 'paced_process.py'
TOTAL_STEPS = 12
CHECKPOINT_EVERY = 10
PACE_SECONDS = 0.5
FLAGS = [
    '--config=configs/tiny.py:baseline',
    f'--config.total_steps={TOTAL_STEPS}',
    f'--config.checkpoint_every={CHECKPOINT_EVERY}',
    '--config.log_every=1',
    '--config.eval_every=0',
    '--config.eval.num_vis=0',
    '--config.data.max_eval_examples=8',
]


def _start(cmd, log: pathlib.Path) -> subprocess.Popen:
  with open(log, 'w') as f:
    return subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)


def _finish(proc, log: pathlib.Path, timeout=600) -> str:
  proc.wait(timeout=timeout)
  text = log.read_text()
  assert proc.returncode == 0, f'exit status {proc.returncode}:\n{text[-4000:]}'
  return text


def _state(workdir, step):
  manager = checkpointing.make_manager(workdir, async_save=False,
                                       create=False)
  state = checkpointing.restore(manager, step)['state']
  manager.close()
  return state


def test_sigterm_saves_the_current_step_and_the_rerun_resumes_exactly(
    tmp_path):
  full, preempted = tmp_path / 'full', tmp_path / 'preempted'
  command = [sys.executable, str(PACED), str(PACE_SECONDS),
             f'--workdir={preempted}'] + FLAGS
  uninterrupted = _start([sys.executable, '-m', 'sst_jax.main',
                          f'--workdir={full}'] + FLAGS, tmp_path / 'full.log')
  proc = _start(command, tmp_path / 'preempted.log')
  deadline = time.monotonic() + 600
  while max(helpers.train_steps(preempted), default=0) < 2:
    assert proc.poll() is None, (tmp_path / 'preempted.log').read_text()
    assert time.monotonic() < deadline, 'no training step within 600 s'
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  log = _finish(proc, tmp_path / 'preempted.log')

  # A checkpoint of the step the signal interrupted, off the regular ones.
  manager = checkpointing.make_manager(preempted, create=False)
  saved = manager.all_steps()
  manager.close()
  assert len(saved) == 1, saved
  stop = saved[0]
  assert 2 <= stop < TOTAL_STEPS and stop % CHECKPOINT_EVERY, saved
  assert (f'stopped by SIGTERM after step {stop}: checkpoint {stop} saved in '
          f'{preempted}/checkpoints; run the same command to resume') in log
  assert max(helpers.train_steps(preempted)) == stop
  assert [p.name for p in preempted.glob('config*.json')] == ['config.json']

  # The same command resumes there and ends where the uninterrupted run does.
  proc = _start(command, tmp_path / 'resumed.log')
  log = _finish(proc, tmp_path / 'resumed.log')
  assert f'resuming from {preempted}/checkpoints step {stop}' in log
  assert sorted(set(helpers.train_steps(preempted))) == list(
      range(1, TOTAL_STEPS + 1))
  # Same config: config.json is kept and no other config file appears.
  assert [p.name for p in preempted.glob('config*.json')] == ['config.json']
  _finish(uninterrupted, tmp_path / 'full.log')
  want, got = _state(full, TOTAL_STEPS), _state(preempted, TOTAL_STEPS)
  leaves = jax.tree_util.tree_leaves_with_path(want)
  assert len(leaves) == len(jax.tree.leaves(got)) > 10
  assert jax.tree.structure(want) == jax.tree.structure(got)
  for (path, a), b in zip(leaves, jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a),
                                  err_msg=jax.tree_util.keystr(path))


class _Manager:
  """Stands in for the checkpoint manager's multi-host preemption check."""

  def __init__(self, sync_step=None):
    self.sync_step = sync_step

  def reached_preemption(self, step):
    return step == self.sync_step


def test_watch_handles_sigterm_in_the_main_thread_and_restores_the_handler():
  def previous(signum, frame):
    raise AssertionError('the watch should have replaced this handler')

  original = signal.signal(signal.SIGTERM, previous)
  try:
    watch = train.PreemptionWatch(_Manager())
    watch.install()
    assert watch.reason(1) is None
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)  # the handler runs between bytecodes of this thread
    assert watch.reason(2) == 'SIGTERM'
    watch.restore()
    assert signal.getsignal(signal.SIGTERM) is previous

    # From another thread Python cannot set handlers: nothing is installed.
    other = train.PreemptionWatch(_Manager())
    thread = threading.Thread(target=other.install)
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGTERM) is previous
    other.restore()
    assert signal.getsignal(signal.SIGTERM) is previous
  finally:
    signal.signal(signal.SIGTERM, original)


def test_watch_stops_at_the_multihost_preemption_sync_point():
  watch = train.PreemptionWatch(_Manager(sync_step=5))
  assert [watch.reason(s) for s in (3, 4)] == [None, None]
  assert 'preemption' in watch.reason(5)


class _Failure(Exception):
  pass


def test_an_error_closes_the_writers_and_manager_and_restores_the_handler(
    tmp_path, monkeypatch):
  config = tiny.get_config('baseline')
  with config.unlocked():
    config.update(total_steps=6, checkpoint_every=3, log_every=1,
                  eval_every=0, async_checkpoints=False)
  closed = []
  for cls in (writers.MetricWriter, ocp.CheckpointManager):
    def close(self, original=cls.close, name=cls.__name__):
      closed.append(name)
      return original(self)
    monkeypatch.setattr(cls, 'close', close)
  original = pipeline.train_iterator

  def failing(*args, **kwargs):
    it = original(*args, **kwargs)

    class Failing:
      served = 0

      def __next__(self):
        if self.served == 5:  # the step after the checkpoint at step 3
          raise _Failure()
        self.served += 1
        return next(it)

      def get_state(self):
        return it.get_state()

    return Failing()

  monkeypatch.setattr(pipeline, 'train_iterator', failing)
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(_Failure):
    train.train_and_evaluate(config, str(tmp_path))
  assert signal.getsignal(signal.SIGTERM) is before
  assert sorted(closed) == ['CheckpointManager', 'MetricWriter']
  # Every step trained before the error is in metrics.jsonl.
  assert helpers.train_steps(tmp_path) == [1, 2, 3, 4]


def test_sigterm_during_startup_stops_before_the_first_step(
    tmp_path, monkeypatch, capsys):
  config = tiny.get_config('baseline')
  with config.unlocked():
    config.update(total_steps=4, checkpoint_every=2, log_every=1,
                  eval_every=0, async_checkpoints=False)
  original = pipeline.train_iterator

  def signalled(*args, **kwargs):
    # The input pipeline starts after the watch is installed and before the
    # first step, while the state is initialized and the step compiled.
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)
    return original(*args, **kwargs)

  monkeypatch.setattr(pipeline, 'train_iterator', signalled)
  before = signal.getsignal(signal.SIGTERM)
  assert train.train_and_evaluate(config, str(tmp_path)) is None
  assert signal.getsignal(signal.SIGTERM) is before
  assert 'stopped by SIGTERM before step 1' in capsys.readouterr().out
  assert helpers.train_steps(tmp_path) == []
  # The rerun trains from the start.
  monkeypatch.setattr(pipeline, 'train_iterator', original)
  assert train.train_and_evaluate(config, str(tmp_path)) is not None
  assert helpers.train_steps(tmp_path) == [1, 2, 3, 4]
