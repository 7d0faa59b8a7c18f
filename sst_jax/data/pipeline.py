"""Per-domain streams -> mixing -> batches with domain ids (grain).

Training: each domain's source is shuffled and repeated with its own seed,
the streams are mixed with ``config.data.mix`` weights (or in a fixed batch
composition, ``config_lib.batch_groups``), augmented with a per-example RNG
derived from the seed and the example's position, and batched. The dataset
is random access, so a batch is a pure function of (seed, step): the
iterator state is one integer and resuming continues exactly, with any
number of threads or worker processes (``config.data.num_workers``).

Images stay uint8 (``transforms``); the compiled steps normalize them.

Multi-host: each process reads only its own rows of every global batch.
"""

from __future__ import annotations

import functools
import sys
from typing import Iterator, Mapping, Sequence

from absl import flags
import grain
import numpy as np

from sst_jax import config_lib
from sst_jax import domains as domains_lib
from sst_jax.data import sources as sources_lib
from sst_jax.data import transforms


def crop_hw(data_cfg) -> tuple[int, int]:
  """``(height, width)`` of the training crops: ``data.crop_size`` by
  ``data.crop_width`` (0: square)."""
  h = int(data_cfg.crop_size)
  w = int(data_cfg.crop_width) or h
  return h, w


def _train_example(record, rng, *, domain, domain_index, cfg):
  image, label = transforms.train_transform(
      record, rng, domain, crop_hw(cfg),
      tuple(cfg.scale_range), cfg.rotation, cfg.flip, cfg.color_jitter)
  return {'image': image, 'label': label,
          'domain': np.int32(domain_index)}


def train_batch_spec(data_cfg, batch_size: int) -> dict[str, tuple]:
  """``(shape, dtype)`` of every array of the batches ``train_dataset`` yields.

  Known before any data is read, so the train step can be compiled while the
  input pipeline starts (``train.train_and_evaluate``).
  """
  h, w = crop_hw(data_cfg)
  return {'image': ((batch_size, h, w, 3), np.dtype(np.uint8)),
          'label': ((batch_size, h, w), np.dtype(np.uint8)),
          'domain': ((batch_size,), np.dtype(np.int32))}


def eval_batch_spec(data_cfg, batch_size: int) -> dict[str, tuple]:
  """``(shape, dtype)`` of every array of ``eval_batches``' batches."""
  s, l = data_cfg.eval_input_size, data_cfg.eval_label_size
  f32 = np.dtype(np.float32)
  return {'image': ((batch_size, s, s, 3), np.dtype(np.uint8)),
          'image_hw': ((batch_size, 2), np.dtype(np.int32)),
          'label': ((batch_size, l, l), np.dtype(np.uint8)),
          'resize_h': ((batch_size, l, s), f32),
          'resize_w': ((batch_size, l, s), f32),
          'domain': ((batch_size,), np.dtype(np.int32)),
          'valid': ((batch_size,), np.dtype(np.bool_))}


def _stack(examples: Sequence[dict]) -> dict:
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def train_dataset(domain_names: Sequence[str], data_cfg, global_batch: int,
                  seed: int, process_index: int = 0, process_count: int = 1,
                  groups: Sequence[tuple[Mapping[str, float], int]] | None
                  = None) -> grain.MapDataset:
  """Infinite random-access dataset of this process's local batches.

  Args:
    domain_names: the configured domains; a sample's ``domain`` is its index
      here.
    data_cfg: ``config.data``.
    global_batch: rows of every global batch.
    seed: shuffling and augmentation seed.
    process_index: this process; it reads only its own rows.
    process_count: number of processes the global batch is split over.
    groups: optional fixed batch composition, ``[(mix, rows), ...]``: every
      global batch is the concatenation of ``rows`` samples drawn from each
      group's mixture (``mix`` maps domain -> weight). The rows must add up
      to ``global_batch``. Default: one group, ``data_cfg.mix``
      (``config_lib.mix_weights``) over all ``global_batch`` rows.

  ``data_cfg`` is that of a config ``config_lib.validate_config`` accepts.
  """
  if global_batch % process_count:
    raise ValueError(f'batch size {global_batch} does not split over '
                     f'{process_count} processes')
  local = global_batch // process_count
  if groups is None:
    groups = [(config_lib.mix_weights(data_cfg.mix or {}, domain_names),
               global_batch)]
  if sum(rows for _, rows in groups) != global_batch or any(
      rows < 1 for _, rows in groups):
    raise ValueError(f'batch composition {[r for _, r in groups]} does not '
                     f'add up to the global batch {global_batch}')

  index = {name: k for k, name in enumerate(domain_names)}
  for group_mix, _ in groups:
    unknown = sorted(set(group_mix) - set(index))
    if unknown:
      raise ValueError(f'batch composition names {unknown[0]!r}, not one of '
                       f'config.domains {list(domain_names)}')
  # Every check is done: start rendering the synthetic caches on all cores.
  to_render = [n for n in domain_names
               if any(float(m.get(n, 0.0)) > 0 for m, _ in groups)]
  sources_lib.prefetch(to_render, data_cfg.train_split, data_cfg)
  cache = {}

  def stream(name):
    if name not in cache:
      k = index[name]
      source = sources_lib.make_source(name, data_cfg.train_split, data_cfg)
      if len(source) == 0:
        raise ValueError(f'domain {name!r}: the training split is empty')
      fn = functools.partial(_train_example,
                             domain=domains_lib.get_domain(name),
                             domain_index=k, cfg=data_cfg)
      cache[name] = (grain.MapDataset.source(source).seed(seed * 1000 + k)
                     .shuffle().repeat().random_map(fn))
    return cache[name]

  mixtures = []
  for group_mix, rows in groups:
    # Domains in config order, so the mixture does not depend on how the
    # mapping happened to be built.
    used = sorted(((n, float(w)) for n, w in group_mix.items()
                   if float(w) > 0), key=lambda nw: index[nw[0]])
    mixtures.append(([stream(n) for n, _ in used], [w for _, w in used],
                     rows))

  parts = [(grain.MapDataset.mix(streams, weights), rows)
           for streams, weights, rows in mixtures]
  if len(parts) == 1 and process_count == 1:
    return parts[0][0].batch(local, drop_remainder=True, batch_fn=_stack)
  # Row r of global batch b comes from the group g whose rows hold r: element
  # b * rows_g + (r - first_row_g) of that group's mixture. This process owns
  # rows [process_index * local, (process_index + 1) * local).
  owner, first = [], 0
  for g, (_, rows) in enumerate(parts):
    owner += [(g, first)] * rows
    first += rows
  offset = process_index * local
  streams = [ds for ds, _ in parts]
  sizes = [rows for _, rows in parts]
  length = min([len(ds) // rows for ds, rows in parts] +
               [sys.maxsize // local]) * local

  def row(i):
    b, r = divmod(i, local)
    g, lo = owner[offset + r]
    return streams[g][b * sizes[g] + offset + r - lo]

  return grain.MapDataset.range(length).map(row).batch(
      local, drop_remainder=True, batch_fn=_stack)


class TrainIterator:
  """Batches ``start_step, start_step + 1, ...`` of a training dataset.

  Threads of this process (``data_cfg.num_threads``) decode and augment
  ahead, or, with ``data_cfg.num_workers > 0``, that many worker processes
  (grain's ``mp_prefetch``) each with its own threads: the decode and
  augmentation of a many-core host then escapes the GIL of the training
  process. Worker ``i`` of ``n`` builds batches ``i, i + n, ...`` and they
  come back in order, so the batches are the same whatever ``n``.

  The state is ``{'next_index': i}``, the index of the next batch returned,
  however far ahead the threads or workers have read: a checkpoint taken
  between steps resumes exactly (``set_state`` or ``start_step``).
  """

  def __init__(self, dataset: grain.MapDataset, data_cfg, start_step: int = 0,
               stop_step: int | None = None):
    self._dataset, self._cfg, self._stop = dataset, data_cfg, stop_step
    self._it = None
    self._start(start_step)

  def _start(self, index: int) -> None:
    self.close()
    self._next = int(index)
    # Slicing a random-access dataset is free: the batch at position 0 of
    # the slice is batch ``index`` of the whole, built from its own seed.
    ds = self._dataset[self._next:self._stop].to_iter_dataset(
        grain.ReadOptions(num_threads=self._cfg.num_threads,
                          prefetch_buffer_size=self._cfg.prefetch))
    if self._cfg.num_workers:
      # grain reads its absl flags' defaults when it starts the workers,
      # also in programs that parse no absl flags (tests, benchmarks).
      if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self._cfg.num_workers,
          per_worker_buffer_size=self._cfg.worker_buffer))
    self._it = iter(ds)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self._it)
    self._next += 1
    return batch

  def get_state(self) -> dict:
    return {'next_index': self._next}

  def set_state(self, state: Mapping[str, int]) -> None:
    self._start(state['next_index'])

  def close(self) -> None:
    """Stops the threads or worker processes reading ahead."""
    if self._it is not None and hasattr(self._it, 'close'):
      self._it.close()
    self._it = None


def train_iterator(dataset: grain.MapDataset, data_cfg, start_step: int = 0,
                   stop_step: int | None = None) -> TrainIterator:
  """Prefetching iterator over batches ``[start_step, stop_step)``.

  ``stop_step`` (None: no end) keeps the read-ahead from building batches
  past the last training step (``train.train_and_evaluate``).
  """
  return TrainIterator(dataset, data_cfg, start_step, stop_step)


def _eval_example(index, record, *, domain_index, cfg):
  out = transforms.eval_transform(record, cfg.eval_input_size,
                                  cfg.eval_label_size)
  out['domain'] = np.int32(domain_index)
  out['valid'] = np.bool_(True)
  return out


def eval_batches(domain_name: str, domain_index: int, data_cfg,
                 global_batch: int, process_index: int = 0,
                 process_count: int = 1) -> tuple[Iterator[dict], int]:
  """This process's evaluation batches of one domain, padded to full size.

  Every example is seen exactly once over all processes; padding examples
  have ``valid=False`` and an all-ignore label.

  Returns:
    ``(iterator of local batches, number of examples)``.
  """
  source = sources_lib.make_source(domain_name, data_cfg.eval_split, data_cfg)
  n = len(source)
  if data_cfg.max_eval_examples:
    n = min(n, data_cfg.max_eval_examples)
  local = global_batch // process_count
  num_batches = -(-n // global_batch)
  fn = functools.partial(_eval_example, domain_index=domain_index,
                         cfg=data_cfg)
  padding = None

  def get(i):
    nonlocal padding
    if i < n:
      return fn(i, source[i])
    if padding is None:
      padding = dict(fn(0, source[0]))
      padding['valid'] = np.bool_(False)
      padding['label'] = np.full_like(padding['label'], 255)
    return padding

  order = [b * global_batch + process_index * local + r
           for b in range(num_batches) for r in range(local)]
  ds = (grain.MapDataset.source(order).map(get)
        .batch(local, batch_fn=_stack))
  it = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=data_cfg.num_threads,
      prefetch_buffer_size=data_cfg.prefetch))
  return iter(it), n

