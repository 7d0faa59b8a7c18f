"""``config.cpu_devices``: splitting a CPU-only host into several devices."""

import os
import subprocess
import sys

import jax

from sst_jax import parallel

PROBE = '''
import jax
from sst_jax import parallel
{before}
parallel.split_cpu({n})
print(len(jax.devices('cpu')), parallel.make_mesh().devices.size)
'''


def _probe(n, before=''):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['JAX_PLATFORMS'] = 'cpu'
  return subprocess.run(
      [sys.executable, '-c', PROBE.format(n=n, before=before)], env=env,
      capture_output=True, text=True, timeout=120)


def test_split_cpu_sets_the_device_count_and_the_mesh():
  proc = _probe(2)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ['2', '2']
  proc = _probe(0)  # JAX's default: one CPU device.
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ['1', '1']


def test_split_cpu_after_jax_started_is_refused_unless_it_matches():
  proc = _probe(3, before='jax.numpy.zeros(1).block_until_ready()')
  assert proc.returncode != 0
  assert ('config.cpu_devices=3: JAX already started with 1 CPU devices'
          in proc.stderr)
  proc = _probe(1, before='jax.numpy.zeros(1).block_until_ready()')
  assert proc.returncode == 0, proc.stderr


def test_split_cpu_keeps_an_explicit_xla_flags_device_count():
  # The suite runs on 8 devices forced by XLA_FLAGS (conftest).
  parallel.split_cpu(2)
  assert len(jax.devices('cpu')) == 8
