"""Multi-process training (2 processes x 4 CPU devices) matches 1 x 8 devices.

Runs ``launch/local_multiprocess.sh`` (``jax.distributed`` over localhost,
gloo CPU collectives) for a few steps of ``configs/tiny.py:baseline``, trains
the same config in this process on its 8 fake devices, and checks that the
two runs see the same global batches and compute the same update: losses and
parameters agree to 1e-5 (relative). Then the multi-process run is resumed
from its checkpoint and must continue to the new final step.

The resumed run holds one process back by 45 s (``tests/slow_process.py``):
the others must wait for it, not fail in a collective.

Preemption with several processes: a 12-step run with paced batches
(``tests/paced_process.py``) gets SIGTERM in process 1 only, once step 2 is
logged. jax.distributed's preemption service must stop both processes at
the step they agree on (orbax's ``reached_preemption``), save it (off the
regular checkpoints), and exit 0; the same command then resumes from that
step to the final one.

The slowest tests of the suite (five short training runs, 4.5-7.5 minutes
on a 2-core CPU depending on its load, 1-3.5 of them the preemption test):
most of it is XLA compilation in each process, the 45 s wait and the paced
batches.
"""

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import helpers

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch' / 'local_multiprocess.sh'
SLOW = REPO / 'tests' / 'slow_process.py'
PACED = REPO / 'tests' / 'paced_process.py'
# Longer than the CPU collectives' own wait (gloo gives up after ~30 s).
SLOW_SECONDS = 45
STEPS = 2
RESUME_STEPS = 4
# The preempted run: SIGTERM to process 1 once step 2 is logged, with the
# batches paced so that it arrives mid-run; the stop step (the sync point
# the processes agree on) falls between the regular checkpoints.
PREEMPT_STEPS = 12
PREEMPT_CHECKPOINT_EVERY = 10
PACE_SECONDS = 0.5
# Eval stays on (train.py always evaluates the final step) but is tiny.
OVERRIDES = {
    'total_steps': STEPS,
    'checkpoint_every': STEPS,
    'log_every': 1,
    'eval_every': 0,
    'async_checkpoints': False,
    'eval.num_vis': 0,
    'eval.batch_size': 8,
    'data.max_eval_examples': 8,
}


def _flags(overrides):
  return [f'--config.{k}={v}' for k, v in overrides.items()]


def _interpreter(path, main_command):
  """A ``$PYTHON`` for the launcher that runs ``main_command`` for the job.

  The launcher calls ``$PYTHON -m sst_jax.main FLAGS...`` for each process
  (and ``$PYTHON -c ...`` for a free port, left unchanged); ``main_command``
  is a bash line run instead of the former, with those arguments in ``$@``.
  """
  pathlib.Path(path).write_text(
      '#!/usr/bin/env bash\n'
      'if [[ "$1" == -m ]]; then\n'
      f'  {main_command}\n'
      'fi\n'
      f'exec {sys.executable} "$@"\n')
  os.chmod(path, 0o755)
  return str(path)


def _launch(workdir, overrides, python=sys.executable):
  """The launcher's command line and environment, for ``subprocess``."""
  env = dict(os.environ, PYTHON=python)
  cmd = ['bash', str(LAUNCH), '2', '4', str(workdir),
         '--config=configs/tiny.py:baseline'] + _flags(overrides)
  return cmd, env


def _run_multiprocess(workdir, overrides, slow_process=None, python=None):
  """Runs the launcher; ``slow_process=(i, seconds)`` holds process i back."""
  if slow_process is not None:
    python = _interpreter(
        pathlib.Path(workdir) / 'python_with_slow_process',
        f'exec {sys.executable} {SLOW} {slow_process[0]} {slow_process[1]} '
        '"$@"')
  cmd, env = _launch(workdir, overrides, python or sys.executable)
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, (
      f'{" ".join(cmd)} failed ({proc.returncode}):\n'
      f'{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}')


def _run_single_process(workdir, overrides):
  from configs import tiny
  from sst_jax import train
  config = tiny.get_config('baseline')
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  train.train_and_evaluate(config, str(workdir))


def _train_losses(workdir) -> dict[int, float]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return {r['step']: r['loss'] for r in records if r['kind'] == 'train'}


def _restore_state(workdir, step):
  """Restores ``state`` as host arrays, whatever topology wrote it."""
  from sst_jax import checkpointing
  manager = checkpointing.make_manager(str(workdir), async_save=False)
  assert step in manager.all_steps(), (workdir, manager.all_steps())
  state = checkpointing.restore(manager, step)['state']
  manager.close()
  return state


def _relative_error(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  multi = tmp_path_factory.mktemp('multiprocess')
  single = tmp_path_factory.mktemp('single')
  _run_multiprocess(multi, OVERRIDES)
  _run_single_process(single, OVERRIDES)
  return multi, single


def test_multiprocess_matches_single_process(runs):
  import jax
  multi, single = runs
  losses_multi, losses_single = _train_losses(multi), _train_losses(single)
  assert sorted(losses_multi) == list(range(1, STEPS + 1))
  assert sorted(losses_single) == list(range(1, STEPS + 1))
  for step in losses_single:
    assert _relative_error(losses_multi[step], losses_single[step]) < 1e-5, (
        step, losses_multi[step], losses_single[step])

  state_single = _restore_state(single, STEPS)
  state_multi = _restore_state(multi, STEPS)
  assert int(state_multi['step']) == int(state_single['step']) == STEPS
  for part in ('params', 'model_state'):
    flat_multi = jax.tree_util.tree_flatten_with_path(state_multi[part])[0]
    flat_single = dict(
        jax.tree_util.tree_flatten_with_path(state_single[part])[0])
    assert len(flat_multi) == len(flat_single) > 0
    for path, leaf in flat_multi:
      err = _relative_error(leaf, flat_single[path])
      assert err < 1e-5, (part, jax.tree_util.keystr(path), err)


def test_multiprocess_resumes_from_checkpoint_with_a_slow_process(runs):
  """Resumes, with process 1 reaching the first step 45 s after process 0.

  A host that starts its input pipeline (or compiles) later must not make
  the others fail in the first collective or at shutdown: every process
  waits at ``parallel.sync_processes`` and exits 0.
  """
  multi, _ = runs
  _run_multiprocess(multi, dict(OVERRIDES, total_steps=RESUME_STEPS),
                    slow_process=(1, SLOW_SECONDS))
  log = (multi / 'logs' / 'process_0.log').read_text()
  assert f'resuming from {multi}' in log, log[-2000:]
  losses = _train_losses(multi)
  # Steps 1..STEPS from the first run, then only the new steps: the resumed
  # run starts after the checkpoint instead of from scratch.
  assert sorted(losses) == list(range(1, RESUME_STEPS + 1))
  assert all(np.isfinite(v) for v in losses.values())
  state = _restore_state(multi, RESUME_STEPS)
  assert int(state['step']) == RESUME_STEPS


def _job_pids(workdir, process_id=None) -> list[int]:
  """PIDs of this job's sst_jax processes (``process_id``: only that one)."""
  pids = []
  for proc in pathlib.Path('/proc').iterdir():
    if not proc.name.isdigit():
      continue
    try:
      args = (proc / 'cmdline').read_bytes().decode().split('\0')
    except OSError:  # it has exited
      continue
    if f'--workdir={workdir}' in args and (
        process_id is None or f'--process_id={process_id}' in args):
      pids.append(int(proc.name))
  return pids


def test_sigterm_to_one_process_stops_the_job_at_a_common_step(tmp_path):
  """SIGTERM to process 1 only: every process saves one step and exits 0.

  jax.distributed's preemption service catches the signal in process 1,
  tells process 0, and both stop at the sync point they agree on
  (``CheckpointManager.reached_preemption``), off the regular checkpoints.
  The same command then resumes from that step and finishes.
  """
  workdir = tmp_path / 'preempted'
  overrides = dict(OVERRIDES, total_steps=PREEMPT_STEPS,
                   checkpoint_every=PREEMPT_CHECKPOINT_EVERY,
                   async_checkpoints=True)
  python = _interpreter(
      tmp_path / 'python_with_paced_batches',
      f'shift 2; exec {sys.executable} {PACED} {PACE_SECONDS} "$@"')
  cmd, env = _launch(workdir, overrides, python)
  launcher_log = tmp_path / 'launcher.log'
  with open(launcher_log, 'w') as f:
    launcher = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f,
                                stderr=subprocess.STDOUT)
  try:
    deadline = time.monotonic() + 900
    while max(helpers.train_steps(workdir), default=0) < 2:
      assert launcher.poll() is None, launcher_log.read_text()[-4000:]
      assert time.monotonic() < deadline, 'no training step within 900 s'
      time.sleep(0.05)
    pids = _job_pids(workdir, process_id=1)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGTERM)
    launcher.wait(timeout=900)
  finally:
    if launcher.poll() is None:  # a failure above: leave nothing running
      # SIGKILL: the processes catch SIGTERM (the preemption service).
      for pid in _job_pids(workdir):
        with contextlib.suppress(ProcessLookupError):
          os.kill(pid, signal.SIGKILL)
      launcher.terminate()  # its trap stops its `tail -f` too
      launcher.wait(timeout=60)
  assert launcher.returncode == 0, (
      f'exit status {launcher.returncode}:\n'
      f'{launcher_log.read_text()[-4000:]}')
  log = (workdir / 'logs' / 'process_0.log').read_text()

  # Both processes saved one checkpoint, of a step between the regular ones.
  from sst_jax import checkpointing
  manager = checkpointing.make_manager(str(workdir), async_save=False,
                                       create=False)
  saved = manager.all_steps()
  manager.close()
  assert len(saved) == 1, saved
  stop = saved[0]
  assert 2 <= stop < PREEMPT_STEPS and stop % PREEMPT_CHECKPOINT_EVERY, saved
  assert (f'stopped by a preemption notice (jax.distributed sync point) '
          f'after step {stop}: checkpoint {stop} saved in {workdir}/'
          'checkpoints; run the same command to resume') in log, log[-2000:]
  assert max(helpers.train_steps(workdir)) == stop

  # The same command resumes there and finishes.
  _run_multiprocess(workdir, overrides, python=python)
  log = (workdir / 'logs' / 'process_0.log').read_text()
  assert f'resuming from {workdir}/checkpoints step {stop}' in log, log[-2000:]
  assert sorted(set(helpers.train_steps(workdir))) == list(
      range(1, PREEMPT_STEPS + 1))
  assert int(_restore_state(workdir, PREEMPT_STEPS)['step']) == PREEMPT_STEPS
