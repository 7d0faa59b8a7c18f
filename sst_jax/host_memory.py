"""Huge pages for XLA:CPU's per-step buffers (glibc ``malloc.hugetlb``).

XLA:CPU allocates each execution's temporary buffer (172 MB for the synthetic
train step) with ``malloc`` on a worker thread and frees it when the step
ends. glibc serves an allocation that large from a fresh ``mmap`` and returns
it with ``munmap``, so every step faults in 44,000 new 4 KB pages: a fifth of
the training process's CPU time on the 2-core development machine, all of it
in the kernel (``docs/results.md``). With the glibc tunable
``glibc.malloc.hugetlb=1`` (glibc 2.35+), ``malloc`` asks for transparent huge
pages on such mappings (``madvise``), and the same buffer takes about 90
faults of 2 MB pages.

Tunables are read when the process starts, so the training entry point
(``python -m sst_jax.main``) re-executes itself once with the tunable added
(:func:`reexec_with_huge_pages`). Importing the library changes nothing.
"""

from __future__ import annotations

import os
import sys

TUNABLE = 'glibc.malloc.hugetlb'
_THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'


def transparent_huge_pages() -> str | None:
  """The kernel's THP mode (``always``, ``madvise``, ``never``) or None."""
  try:
    with open(_THP_SETTING) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


def environment_with_huge_pages(environ) -> dict | None:
  """``environ`` with ``GLIBC_TUNABLES`` asking for huge pages, or None.

  None when nothing is to change: not Linux, the kernel has transparent huge
  pages off, or ``GLIBC_TUNABLES`` already sets ``glibc.malloc.hugetlb`` (to
  any value: ``GLIBC_TUNABLES=glibc.malloc.hugetlb=0`` keeps glibc's
  default).
  """
  if not sys.platform.startswith('linux'):
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
  re-execution). glibc versions without the tunable ignore it.
  """
  env = environment_with_huge_pages(os.environ)
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)
