"""Random-access data sources behind one interface.

A source has ``len(source)``, ``source[i] -> {'image': uint8 [H, W, 3],
'label': uint8 [H, W], 'id': str}`` and a ``domain`` attribute. Synthetic
domains (``synthetic_*``) render on the fly; every other domain reads a
built tfds dataset (array_record) through ``tfds.data_source``: TensorFlow is
not needed.
"""

from __future__ import annotations

import time

import numpy as np

from sst_jax import domains as domains_lib
from sst_jax import writers


class TfdsSource:
  """A built tfds human-parsing dataset (features image/label/id).

  Reads ``<data_dir>/<name>/<config>/<version>/`` (the default config,
  ``strict``, when ``name`` names none) through ``tfds.data_source`` with
  ``download=False``: the builder need not be importable, and a missing build
  is an error, never a build attempt.
  """

  def __init__(self, domain: str, split: str, *, name: str | None = None,
               data_dir: str | None = None):
    import tensorflow_datasets as tfds  # Heavy import, only when used.
    self.domain = domains_lib.get_domain(domain)
    self.name = name or domain
    try:
      self._source = tfds.data_source(self.name, split=split,
                                      data_dir=data_dir or None,
                                      download=False)
    except Exception as e:  # tfds raises several types for a missing build.
      # tfds's own message goes on to list every dataset it knows: keep the
      # first line.
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
      builder, _, builder_config = self.name.partition('/')
      config_flag = f' --config={builder_config}' if builder_config else ''
      where = data_dir or '$TFDS_DATA_DIR or ~/tensorflow_datasets'
      raise FileNotFoundError(
          f'cannot open the built tfds dataset {self.name!r} (domain '
          f'{domain!r}) split {split!r} in data_dir={where}: {reason} Build it '
          f'first with `python -m datasets.build datasets/{builder} '
          f'--manual_dir=RAW_ROOT/{builder} --data_dir={data_dir or "DATA_DIR"}'
          f' --file_format=array_record{config_flag}` (docs/datasets.md), or '
          'set config.data.data_dir to where it was built.') from e

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index) -> dict:
    rec = self._source[int(index)]
    image, label = np.asarray(rec['image']), np.asarray(rec['label'])
    if label.ndim == 3:
      label = label[..., 0]
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    ident = rec['id']
    ident = ident.decode() if isinstance(ident, bytes) else str(ident)
    if image.shape[:2] != label.shape:
      raise ValueError(f'{self.name} example {ident!r}: image '
                       f'{image.shape[:2]} and label {label.shape} differ')
    return {'image': image[..., :3], 'label': label, 'id': ident}


class CachedSource:
  """Materializes a source in memory once (small or procedural datasets).

  The embedded synthetic data renders each example from scratch; caching a
  split makes every later epoch cost only the augmentation.
  """

  _cache: dict = {}
  # Renders started ahead by ``prefetch``: key -> subprocess.
  _pending: dict = {}
  # Synthetic splits at least this long render in a separate process
  # (``synthetic.render_split``): shorter ones render faster than a process
  # starts.
  subprocess_min_examples = 256

  def __init__(self, source, key):
    self.domain = source.domain
    if key not in CachedSource._cache:
      start = time.perf_counter()
      from sst_jax.data import synthetic  # pylint: disable=g-import-not-at-top
      if key in CachedSource._pending:
        records = synthetic.finish_render(source,
                                          CachedSource._pending.pop(key))
      elif isinstance(source, synthetic.SyntheticSource):
        records = synthetic.render_split(source, in_subprocess=len(
            source) >= CachedSource.subprocess_min_examples)
      else:
        records = [source[i] for i in range(len(source))]
      CachedSource._cache[key] = records
      writers.echo(f'cached {len(source)} examples of {key[0]}/{key[1]} in '
                   f'{time.perf_counter() - start:.1f} s')
    self._records = CachedSource._cache[key]

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index) -> dict:
    return self._records[int(index)]


def _synthetic(domain: str, split: str, data_config):
  """The uncached synthetic source and its cache key."""
  from sst_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  size = data_config.synthetic_size
  num = data_config.synthetic_examples.get(f'{domain}:{split}', None)
  source = synthetic.SyntheticSource(domain, split, image_size=(size, size),
                                     num_examples=num,
                                     seed=data_config.synthetic_seed)
  return source, (domain, split, size, len(source),
                  data_config.synthetic_seed)


def prefetch(domain_names, split: str, data_config) -> None:
  """Starts rendering, all at once, the synthetic caches ``make_source``
  will build for these domains (so they render on every core, each in its
  own process; a no-op without ``data_config.cache``)."""
  if not data_config.cache:
    return
  from sst_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  for domain in domain_names:
    if not domain.startswith('synthetic_'):
      continue
    source, key = _synthetic(domain, split, data_config)
    if (key not in CachedSource._cache and key not in CachedSource._pending
        and len(source) >= CachedSource.subprocess_min_examples):
      CachedSource._pending[key] = synthetic.start_render(source)


def make_source(domain: str, split: str, data_config) -> object:
  """The source for ``domain``/``split`` as configured in ``config.data``."""
  domains_lib.get_domain(domain)
  if domain.startswith('synthetic_'):
    source, key = _synthetic(domain, split, data_config)
    if data_config.cache:
      source = CachedSource(source, key)
    return source
  names = data_config.tfds_names or {}
  return TfdsSource(domain, split, name=names.get(domain, domain),
                    data_dir=data_config.data_dir)
