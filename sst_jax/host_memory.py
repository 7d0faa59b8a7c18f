"""Huge pages for XLA:CPU's per-step buffers (glibc ``malloc.hugetlb``).

XLA:CPU allocates each execution's temporary buffer (a large one for the
train step) with ``malloc`` on a worker thread and frees it when the step
ends. glibc serves an allocation that large from a fresh ``mmap`` and returns
it with ``munmap``, so every step faults in and zeroes the whole buffer anew
in 4 KB pages, time spent in the kernel rather than on the step. With the
glibc tunable ``glibc.malloc.hugetlb=1`` (glibc 2.35+), ``malloc`` asks for
transparent huge pages on such mappings (``madvise``), and the same buffer
takes 512 times fewer faults, of 2 MB pages (the synthetic step's buffer
size, faults and times: ``docs/results.md``, "Host memory: huge pages for
XLA:CPU's per-step buffer").

Tunables are read when the process starts, so the training entry point
(``python -m sst_jax.main``) re-executes itself once with the tunable added
(:func:`reexec_with_huge_pages`). Only runs on the CPU alone do: on a GPU or
TPU the per-step buffers are device memory, and a restart would only get in
the way of launchers. ``SST_JAX_NO_HUGEPAGES=1`` turns the restart off.
Importing the library changes nothing.
"""

from __future__ import annotations

import glob
import os
import sys

TUNABLE = 'glibc.malloc.hugetlb'
# Set (to anything but '' or '0'), no restart.
DISABLE = 'SST_JAX_NO_HUGEPAGES'
_THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'
# Device files of accelerators JAX runs on: NVIDIA GPUs, AMD GPUs (ROCm),
# Cloud TPUs (accel for v2-v4, vfio for later generations).
_ACCELERATOR_DEVICES = ('/dev/nvidia[0-9]*', '/dev/kfd', '/dev/accel[0-9]*',
                        '/dev/vfio/[0-9]*')


def transparent_huge_pages() -> str | None:
  """The kernel's THP mode (``always``, ``madvise``, ``never``) or None."""
  try:
    with open(_THP_SETTING) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


def accelerator_devices() -> list[str]:
  """The GPU and TPU device files of this host (empty on a CPU-only host)."""
  return sorted(p for pattern in _ACCELERATOR_DEVICES
                for p in glob.glob(pattern))


def cpu_only_run(environ) -> bool:
  """Whether JAX will run on the CPU alone, decided before it starts.

  ``JAX_PLATFORMS`` decides when it is set (``cpu`` and nothing else);
  otherwise JAX takes a GPU or TPU when the host has one
  (:func:`accelerator_devices`).
  """
  platforms = {p.strip() for p in environ.get('JAX_PLATFORMS', '').split(',')
               if p.strip()}
  if platforms:
    return platforms == {'cpu'}
  return not accelerator_devices()


def environment_with_huge_pages(environ) -> dict | None:
  """``environ`` with ``GLIBC_TUNABLES`` asking for huge pages, or None.

  None when nothing is to change: ``SST_JAX_NO_HUGEPAGES`` is set (to
  anything but ``''`` or ``'0'``), JAX will not run on the CPU alone
  (:func:`cpu_only_run`), not Linux, the kernel has transparent huge pages
  off, or ``GLIBC_TUNABLES`` already sets ``glibc.malloc.hugetlb`` (to any
  value: ``GLIBC_TUNABLES=glibc.malloc.hugetlb=0`` keeps glibc's default).
  """
  if environ.get(DISABLE, '') not in ('', '0'):
    return None
  if not sys.platform.startswith('linux') or not cpu_only_run(environ):
    return None
  if transparent_huge_pages() not in ('always', 'madvise'):
    return None
  tunables = environ.get('GLIBC_TUNABLES', '')
  if any(t.split('=', 1)[0] == TUNABLE for t in tunables.split(':') if t):
    return None
  env = dict(environ)
  env['GLIBC_TUNABLES'] = (f'{tunables}:' if tunables else '') + f'{TUNABLE}=1'
  return env


def reexec_with_huge_pages() -> None:
  """Re-executes this process with :func:`environment_with_huge_pages`.

  Called first thing by ``python -m sst_jax.main``; returns without doing
  anything when the environment needs no change (including after the
  re-execution, on GPU and TPU runs, and with ``SST_JAX_NO_HUGEPAGES=1``).
  glibc versions without the tunable ignore it.
  """
  env = environment_with_huge_pages(os.environ)
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)
