"""Checkpoints read on another device count than the one that wrote them.

A model trained on a pod slice (or the main job's ``cpu_devices=2``) is then
exported, parsed, evaluated, extended with ``config.init_from`` or resumed on
a laptop or another slice. Each reader must restore against the current
process, not the saved topology. The processes here really start with
different device counts (``tests/topology_probe.py`` in subprocesses whose
``XLA_FLAGS`` replace pytest's 8 devices) and every reader's output must
equal the same-topology read: predictions, logits and evaluation scores
exactly up to float rounding, and the one step trained after ``init_from``
or a resume within float rounding (same global batch, another reduction
order).
"""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
PROBE = REPO / 'tests' / 'topology_probe.py'

sys.path.insert(0, str(REPO / 'tests'))
import topology_probe  # pylint: disable=g-import-not-at-top,wrong-import-position


def _probe(devices: int, *args) -> None:
  """Runs the probe in a fresh process with ``devices`` CPU devices."""
  flags = re.sub(r'--xla_force_host_platform_device_count=\d+', '',
                 os.environ.get('XLA_FLAGS', ''))
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=(
      f'{flags} --xla_force_host_platform_device_count={devices}').strip())
  proc = subprocess.run([sys.executable, str(PROBE), *map(str, args)],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, (
      f'{devices} devices, {args}: exit {proc.returncode}\n'
      f'{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}')


def _load(path) -> dict:
  with np.load(path) as f:
    return dict(f)


def _assert_same_reads(read, reference, saved_with, read_with):
  assert int(read.pop('device_count')) == read_with
  assert int(reference.pop('device_count')) == saved_with
  assert sorted(read) == sorted(reference)
  kinds = {key.split('/')[0] for key in read}
  assert kinds == {'predict', 'parser', 'export', 'eval', 'init_from',
                   'resume'}, kinds
  for key, want in reference.items():
    got = read[key]
    where = f'{key}: saved with {saved_with} devices, read with {read_with}'
    if key.startswith('predict/'):
      np.testing.assert_array_equal(got, want, err_msg=where)
    elif key.startswith(('init_from/', 'resume/')):
      # One training step: the same global batch on another device count
      # sums the gradient in another order.
      np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6,
                                 err_msg=where)
    else:
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6,
                                 err_msg=where)


def test_saved_with_2_devices_read_with_1(tmp_path):
  workdir = tmp_path / 'saved2'
  _probe(2, 'train', workdir)
  _probe(2, 'read', workdir, tmp_path / 'same', tmp_path / 'same.npz')
  _probe(1, 'read', workdir, tmp_path / 'one', tmp_path / 'one.npz')
  _assert_same_reads(_load(tmp_path / 'one.npz'),
                     _load(tmp_path / 'same.npz'), 2, 1)


def test_saved_with_8_devices_read_with_1_and_4(tmp_path):
  import jax
  assert jax.device_count() == 8
  workdir = tmp_path / 'saved8'
  topology_probe.train(str(workdir))
  topology_probe.read(str(workdir), str(tmp_path / 'same'),
                      str(tmp_path / 'same.npz'))
  reference = _load(tmp_path / 'same.npz')
  for devices in (1, 4):
    out = tmp_path / f'read{devices}.npz'
    _probe(devices, 'read', workdir, tmp_path / f'read{devices}', out)
    _assert_same_reads(_load(out), dict(reference), 8, devices)
