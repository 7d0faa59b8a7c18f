"""Multi-process training (2 processes x 4 CPU devices) matches 1 x 8 devices.

Runs ``launch/local_multiprocess.sh`` (``jax.distributed`` over localhost,
gloo CPU collectives) for a few steps of ``configs/tiny.py:baseline``, trains
the same config in this process on its 8 fake devices, and checks that the
two runs see the same global batches and compute the same update: losses and
parameters agree to 1e-5 (relative). Then the multi-process run is resumed
from its checkpoint and must continue to the new final step.

The resumed run holds one process back by 45 s (``tests/slow_process.py``):
the others must wait for it, not fail in a collective. The slowest test of
the suite (three short training runs, ~4-5 minutes on a 2-core CPU): most of
it is XLA compilation in each process and the 45 s wait.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch' / 'local_multiprocess.sh'
SLOW = REPO / 'tests' / 'slow_process.py'
# Longer than the CPU collectives' own wait (gloo gives up after ~30 s).
SLOW_SECONDS = 45
STEPS = 2
RESUME_STEPS = 4
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


def _run_multiprocess(workdir, overrides, slow_process=None):
  """Runs the launcher; ``slow_process=(i, seconds)`` holds process i back."""
  python = sys.executable
  if slow_process is not None:
    # The launcher calls $PYTHON for sst_jax.main (and for a free port).
    python = str(pathlib.Path(workdir) / 'python_with_slow_process')
    pathlib.Path(python).write_text(
        '#!/usr/bin/env bash\n'
        'if [[ "$1" == -m ]]; then\n'
        f'  exec {sys.executable} {SLOW} {slow_process[0]} {slow_process[1]} '
        '"$@"\nfi\n'
        f'exec {sys.executable} "$@"\n')
    os.chmod(python, 0o755)
  env = dict(os.environ, PYTHON=python)
  cmd = ['bash', str(LAUNCH), '2', '4', str(workdir),
         '--config=configs/tiny.py:baseline'] + _flags(overrides)
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
