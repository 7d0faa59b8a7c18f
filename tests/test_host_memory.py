"""glibc huge pages for XLA:CPU's per-step buffers (sst_jax.host_memory)."""

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


@pytest.mark.skipif(
    not _glibc_with_hugetlb() or host_memory.transparent_huge_pages() not in (
        'always', 'madvise'), reason='needs glibc >= 2.35 and kernel THP')
def test_huge_pages_take_the_page_faults_out_of_each_step():
  env = host_memory.environment_with_huge_pages({'PATH': '/usr/bin:/bin'})
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
