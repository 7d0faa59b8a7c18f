"""Metric writers: ``metrics.jsonl`` + TensorBoard events, and progress lines.

Only process 0 writes. TensorBoard event files are written with tensorboardX
(protobuf only), so TensorFlow is not needed. The workdir is an
``etils.epath`` path: local, or ``gs://`` with the ``[gcs]`` extra, where an
object cannot be appended to: there ``metrics.jsonl`` is kept in memory and
the object rewritten at every ``flush`` (tensorboardX uploads its event
files the same way).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from etils import epath
import jax
import numpy as np


def _plain(value):
  if isinstance(value, (np.floating, np.integer)):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


class MetricWriter:
  """Scalars to ``<workdir>/metrics.jsonl`` and TensorBoard; no-op off proc 0.

  ``flush`` makes everything written so far visible in the workdir (training
  calls it at every log step); ``close`` flushes and releases the files.
  """

  def __init__(self, workdir: str | os.PathLike):
    self.enabled = jax.process_index() == 0
    self._tb = self._jsonl = self._lines = None
    if not self.enabled:
      return
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self._path = workdir / 'metrics.jsonl'
    if '://' in os.fspath(workdir):
      # Object storage: the whole object is rewritten at each flush.
      self._lines = (self._path.read_text().splitlines(keepends=True)
                     if self._path.exists() else [])
    else:
      self._jsonl = self._path.open('a')
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.fspath(workdir / 'tensorboard'))
    except ImportError:  # Events are optional; metrics.jsonl is always there.
      self._tb = None

  def write(self, step: int, kind: str, values: dict) -> None:
    """Writes one record ``{'step', 'kind', **values}``.

    Nested dicts (e.g. per-domain results) are kept nested in the JSON line
    and flattened with '/' for TensorBoard scalars.
    """
    if not self.enabled:
      return
    record = {'step': int(step), 'kind': kind, 'time': time.time()}
    record.update(jax.tree.map(_plain, values))
    if self._jsonl is not None:
      self._jsonl.write(json.dumps(record) + '\n')
      self._jsonl.flush()
    else:
      self._lines.append(json.dumps(record) + '\n')
    if self._tb is not None:
      for key, v in _flatten(values, kind):
        self._tb.add_scalar(key, v, int(step))

  def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
    if self.enabled and self._tb is not None:
      self._tb.add_image(tag, image, int(step), dataformats='HWC')

  def flush(self):
    if not self.enabled:
      return
    if self._jsonl is not None:
      self._jsonl.flush()
    elif self._lines is not None:
      self._path.write_text(''.join(self._lines))
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    """Flushes and closes the files; later calls do nothing."""
    if not self.enabled:
      return
    self.flush()
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
    self.enabled = False


def _flatten(values: dict, prefix: str):
  for k, v in values.items():
    key = f'{prefix}/{k}'
    if isinstance(v, dict):
      yield from _flatten(v, key)
    elif isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(
        v, bool) and math.isfinite(float(v)):
      yield key, float(v)


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}:{m:02d}:{s:02d}' if h else f'{m:02d}:{s:02d}'


class Progress:
  """Rate and ETA of a job of ``total_steps`` steps (training steps, images).

  ``update(step)`` measures the rate over the steps done since the previous
  update (the first time: since ``start_step`` and the construction); each
  step is ``batch_size`` images.
  """

  def __init__(self, total_steps: int, start_step: int = 0,
               batch_size: int = 1):
    self.total, self.batch = total_steps, batch_size
    self.last_step, self.last_time = start_step, time.perf_counter()

  def update(self, step: int) -> dict:
    now = time.perf_counter()
    steps = max(step - self.last_step, 1)
    dt = max(now - self.last_time, 1e-9)
    self.last_step, self.last_time = step, now
    rate = steps / dt
    return {'steps_per_sec': rate, 'images_per_sec': rate * self.batch,
            'eta_sec': (self.total - step) / rate}

  def line(self, step: int, loss: float, info: dict) -> str:
    """``step 12/40 (30%)  loss 0.4321  3.4 img/s  0.85 steps/s  ETA 00:33``."""
    return (f'step {step}/{self.total} ({100 * step / self.total:.0f}%)  '
            f'loss {loss:.4f}  {info["images_per_sec"]:.1f} img/s  '
            f'{info["steps_per_sec"]:.2f} steps/s  '
            f'ETA {format_duration(info["eta_sec"])}')

  def count_line(self, verb: str, done: int, info: dict) -> str:
    """``parsed 12/40  3.4 img/s  ETA 00:08`` (``verb``: what was done)."""
    return (f'{verb} {done}/{self.total}  {info["images_per_sec"]:.1f} img/s'
            f'  ETA {format_duration(info["eta_sec"])}')


def echo(line: str) -> None:
  """Progress line on stdout (process 0)."""
  if jax.process_index() == 0:
    print(line, file=sys.stdout, flush=True)
