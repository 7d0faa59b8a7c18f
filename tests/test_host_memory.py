"""glibc huge pages for XLA:CPU's per-step buffers (sst_jax.host_memory)."""

import os
import platform
import subprocess
import sys

import pytest

from sst_jax import host_memory

# What XLA:CPU does every step: a worker thread mallocs its temporary buffer,
# writes all of it and frees it.
PROBE = r'''
import ctypes, ctypes.util, resource, threading
libc = ctypes.CDLL(ctypes.util.find_library('c'))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 180 << 20

def run(n):
  for _ in range(n):
    p = libc.malloc(SIZE)
    ctypes.memset(p, 1, SIZE)
    libc.free(p)

before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t = threading.Thread(target=run, args=(4,)); t.start(); t.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def minor_faults(env) -> int:
  out = subprocess.run([sys.executable, '-c', PROBE], env=env,
                       capture_output=True, text=True, check=True)
  return int(out.stdout.split()[-1])


def _glibc_with_hugetlb() -> bool:
  name, version = platform.libc_ver()
  try:
    return name == 'glibc' and tuple(map(int, version.split('.')[:2])) >= (2,
                                                                           35)
  except ValueError:
    return False


@pytest.mark.platform_behaviour
@pytest.mark.skipif(
    not _glibc_with_hugetlb() or host_memory.transparent_huge_pages() not in (
        'always', 'madvise'), reason='needs glibc >= 2.35 and kernel THP')
def test_huge_pages_take_the_page_faults_out_of_each_step():
  """glibc's ``malloc.hugetlb`` tunable takes the faults out of big mallocs.

  This measures glibc and the kernel, not sst_jax: a failure after a glibc
  or kernel change (or on a host short of huge pages) may be an environment
  change rather than a regression here.
  """
  env = host_memory.environment_with_huge_pages(
      {'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': 'cpu'})
  assert env['GLIBC_TUNABLES'] == 'glibc.malloc.hugetlb=1'
  default = minor_faults({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'})
  huge = minor_faults(env)
  # 4 buffers of 46,080 pages of 4 KB, against about 90 pages of 2 MB each
  # (more where the kernel has no huge page at hand).
  assert default > 4 * 40_000, default
  assert huge * 10 < default, (huge, default)


def test_environment_keeps_other_tunables_and_respects_a_choice(monkeypatch):
  monkeypatch.setattr(host_memory, 'transparent_huge_pages', lambda: 'madvise')
  monkeypatch.setattr(host_memory.sys, 'platform', 'linux')
  monkeypatch.setattr(host_memory, 'accelerator_devices', lambda: [])
  env = host_memory.environment_with_huge_pages(
      {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2', 'HOME': '/h'})
  assert env == {'GLIBC_TUNABLES':
                 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1',
                 'HOME': '/h'}
  # Set already (to any value, also by the re-executed process): no change.
  for tunables in ('glibc.malloc.hugetlb=0',
                   'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'):
    assert host_memory.environment_with_huge_pages(
        {'GLIBC_TUNABLES': tunables}) is None
  monkeypatch.setattr(host_memory, 'transparent_huge_pages', lambda: 'never')
  assert host_memory.environment_with_huge_pages({}) is None
  monkeypatch.setattr(host_memory, 'transparent_huge_pages', lambda: None)
  assert host_memory.environment_with_huge_pages({}) is None


def test_only_cpu_only_runs_restart(monkeypatch):
  monkeypatch.setattr(host_memory, 'transparent_huge_pages', lambda: 'madvise')
  monkeypatch.setattr(host_memory.sys, 'platform', 'linux')
  devices = []
  monkeypatch.setattr(host_memory, 'accelerator_devices', lambda: devices)
  huge = lambda environ: host_memory.environment_with_huge_pages(environ)
  assert huge({})['GLIBC_TUNABLES'] == 'glibc.malloc.hugetlb=1'
  assert huge({'JAX_PLATFORMS': 'cpu'}) is not None
  for platforms in ('cuda', 'gpu', 'tpu', 'rocm', 'cuda,cpu', 'cpu,tpu'):
    assert huge({'JAX_PLATFORMS': platforms}) is None, platforms
  # A GPU or TPU host: JAX takes the accelerator unless told otherwise.
  for device in ('/dev/nvidia0', '/dev/accel0', '/dev/vfio/0', '/dev/kfd'):
    devices[:] = [device]
    assert huge({}) is None, device
    assert huge({'JAX_PLATFORMS': 'cpu'}) is not None, device


def test_environment_switch_turns_the_restart_off(monkeypatch):
  monkeypatch.setattr(host_memory, 'transparent_huge_pages', lambda: 'madvise')
  monkeypatch.setattr(host_memory.sys, 'platform', 'linux')
  monkeypatch.setattr(host_memory, 'accelerator_devices', lambda: [])
  for value in ('1', 'true', 'yes'):
    assert host_memory.environment_with_huge_pages(
        {'SST_JAX_NO_HUGEPAGES': value, 'JAX_PLATFORMS': 'cpu'}) is None
  for value in ('', '0'):
    assert host_memory.environment_with_huge_pages(
        {'SST_JAX_NO_HUGEPAGES': value, 'JAX_PLATFORMS': 'cpu'}) is not None


# Prints once per start of the process, then the tunables it runs with.
REEXEC = r'''
import os, sys
print('start', flush=True)
from sst_jax import host_memory
host_memory.reexec_with_huge_pages()
print('tunables', os.environ.get('GLIBC_TUNABLES'))
'''


@pytest.mark.skipif(
    not sys.platform.startswith('linux') or
    host_memory.transparent_huge_pages() not in ('always', 'madvise'),
    reason='the restart needs Linux with kernel THP')
@pytest.mark.parametrize('extra,restarts', [
    ({'JAX_PLATFORMS': 'cpu'}, True),
    ({'JAX_PLATFORMS': 'cuda'}, False),
    ({'JAX_PLATFORMS': 'tpu'}, False),
    ({'JAX_PLATFORMS': 'cpu', 'SST_JAX_NO_HUGEPAGES': '1'}, False),
])
def test_the_process_restarts_only_for_cpu_only_runs(extra, restarts):
  env = {k: v for k, v in os.environ.items()
         if k not in ('GLIBC_TUNABLES', 'SST_JAX_NO_HUGEPAGES')}
  out = subprocess.run([sys.executable, '-c', REEXEC], env={**env, **extra},
                       capture_output=True, text=True, check=True).stdout
  lines = out.splitlines()
  if restarts:
    assert lines == ['start', 'start', 'tunables glibc.malloc.hugetlb=1'], out
  else:
    assert lines == ['start', 'tunables None'], out
