r"""Input-pipeline throughput: decode + augment + batch at 473x473.

Usage (from the repository root)::

  PYTHONPATH=. python benchmarks/input_pipeline.py [--num_images=100] \
      [--threads 1 2] [--workers 1 2] [--batches=12] [--profile]

Writes a synthetic raw dataset in CIHP's graphonomy layout (JPEG images of
realistic size, about 600x400, and index-map PNG labels), builds it with the
CIHP tfds builder to array_record in a temporary directory, then times
``pipeline.train_dataset`` batches (batch 16) with the augmentation of
``configs/universal_r101.py`` (random scale 0.5-1.5, rotation, crop 473, flip,
colour jitter): for each ``--threads`` value with threads of this process,
then for each ``--workers`` value with that many worker processes
(``config.data.num_workers``, one thread each). Prints images/s (wall clock),
images/s per thread or worker (= per core when the machine has cores to
spare), and images per CPU-second used by this process and its workers
(decode + augment + batch), the per-core rate that stays meaningful on a
shared, loaded machine; and the bytes of one batch as it crosses to the
device. ``--profile`` also times each stage of one example's transform.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import tempfile
import time

import numpy as np
from PIL import Image


def write_raw_cihp(root: pathlib.Path, num_images: int, seed: int = 0):
  """Writes ``num_images`` train (and 4 validation) examples, graphonomy layout."""
  rng = np.random.default_rng(seed)
  for d in ('Images', 'Category_ids', 'lists'):
    (root / d).mkdir(parents=True, exist_ok=True)
  ids = [f'{i:07d}' for i in range(num_images + 4)]
  for i in ids:
    h, w = int(rng.integers(360, 480)), int(rng.integers(540, 680))
    if rng.random() < 0.5:
      h, w = w, h
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    image = np.stack([(xx / w) * 200 + 30, (yy / h) * 180 + 40,
                      np.full((h, w), 120.0)], -1)
    label = np.zeros((h, w), np.uint8)
    for _ in range(12):  # Ellipses: body-part-like regions with edges.
      cy, cx = rng.uniform(0, h), rng.uniform(0, w)
      ry, rx = rng.uniform(20, h / 3), rng.uniform(15, w / 4)
      inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
      label[inside] = rng.integers(1, 20)
      image[inside] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 8, image.shape)  # Texture, so JPEGs are not tiny.
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
        root / 'Images' / f'{i}.jpg', quality=90)
    Image.fromarray(label, 'L').save(root / 'Category_ids' / f'{i}.png')
  (root / 'lists' / 'train_id.txt').write_text('\n'.join(ids[:num_images]))
  (root / 'lists' / 'val_id.txt').write_text('\n'.join(ids[num_images:]))


def build_cihp(raw: pathlib.Path, data_dir: pathlib.Path):
  import tensorflow_datasets as tfds
  from datasets.cihp import cihp_dataset_builder
  builder = cihp_dataset_builder.Builder(data_dir=str(data_dir),
                                         file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(raw)))


AUGMENT = {}  # config.data overrides from the command line.


def data_config(data_dir: pathlib.Path, num_threads: int,
                num_workers: int = 0):
  from configs import universal_r101
  config = universal_r101.get_config(f'data_dir={data_dir}')
  data_cfg = config.data.copy_and_resolve_references()
  data_cfg.num_threads = num_threads
  data_cfg.num_workers = num_workers
  for key, value in AUGMENT.items():
    if value is not None:
      data_cfg[key] = value
  return config, data_cfg


def cpu_seconds_of_process_tree() -> float:
  """User + system CPU seconds of this process and its live descendants.

  Worker processes are children of the training process; their CPU time is
  part of the input pipeline's cost per image. Reads ``/proc`` (Linux).
  """
  tick = os.sysconf('SC_CLK_TCK')
  stats = {}
  for entry in pathlib.Path('/proc').iterdir():
    if entry.name.isdigit():
      try:
        # Fields after the command name: state, ppid, ... utime (14th field
        # of the line), stime (15th).
        fields = (entry / 'stat').read_text().rsplit(')', 1)[1].split()
      except OSError:  # The process ended meanwhile.
        continue
      stats[int(entry.name)] = (int(fields[1]),
                                (int(fields[11]) + int(fields[12])) / tick)
  tree = {os.getpid()}
  grew = True
  while grew:
    grew = False
    for pid, (ppid, _) in stats.items():
      if ppid in tree and pid not in tree:
        tree.add(pid)
        grew = True
  return sum(stats[pid][1] for pid in tree if pid in stats)


def images_per_second(data_dir, num_threads: int, num_batches: int,
                      num_workers: int = 0) -> tuple[float, float, int]:
  """(images per wall second, images per CPU second, bytes per batch).

  CPU seconds are this process's and its worker processes'.
  """
  from sst_jax.data import pipeline
  config, data_cfg = data_config(data_dir, num_threads, num_workers)
  dataset = pipeline.train_dataset(['cihp'], data_cfg, config.batch_size,
                                   seed=0)
  it = pipeline.train_iterator(dataset, data_cfg)
  try:
    # Warm-up: thread or worker start, first decodes; every worker's first
    # batch, so that none starts inside the timed part.
    for _ in range(max(num_workers, 1)):
      batch = next(it)
    assert batch['image'].shape == (config.batch_size, 473, 473, 3)
    wall, cpu = time.perf_counter(), cpu_seconds_of_process_tree()
    for _ in range(num_batches):
      next(it)
    wall = time.perf_counter() - wall
    cpu = cpu_seconds_of_process_tree() - cpu
  finally:
    it.close()
  images = num_batches * config.batch_size
  return images / wall, images / cpu, sum(v.nbytes for v in batch.values())


def profile(data_dir, num_examples: int = 40):
  """CPU milliseconds per example of each stage of the training transform."""
  from sst_jax import domains
  from sst_jax.data import pipeline
  from sst_jax.data import sources
  from sst_jax.data import transforms
  config, data_cfg = data_config(data_dir, 1)
  source = sources.make_source('cihp', 'train', data_cfg)
  domain = domains.get_domain('cihp')
  crop = pipeline.crop_hw(data_cfg)
  times = dict.fromkeys(['decode', 'scale+rotate+crop', 'flip', 'jitter',
                         'train_transform'], 0.0)
  clock = time.thread_time  # CPU time of this thread: robust to other load.
  rng = np.random.default_rng(0)
  for i in range(num_examples):
    t = clock()
    rec = source[i % len(source)]
    times['decode'] += clock() - t
    image, label = rec['image'], rec['label']
    h, w = label.shape
    s = rng.uniform(*data_cfg.scale_range)
    t = clock()
    image, label = transforms.scale_rotate_crop(
        image, label, (int(h * s), int(w * s)), rng.uniform(-data_cfg.rotation, data_cfg.rotation), (0, 0),
        crop)
    times['scale+rotate+crop'] += clock() - t
    t = clock()
    image, label = transforms.hflip(image, label, domain)
    times['flip'] += clock() - t
    t = clock()
    if data_cfg.color_jitter:
      image = transforms.color_jitter(image, rng, data_cfg.color_jitter)
    times['jitter'] += clock() - t
    t = clock()
    transforms.train_transform(
        rec, rng, domain, crop, tuple(data_cfg.scale_range),
        data_cfg.rotation, data_cfg.flip, data_cfg.color_jitter)
    times['train_transform'] += clock() - t
  for k, v in times.items():
    print(f'  {k:<18}{1e3 * v / num_examples:8.2f} CPU-ms/example')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_images', type=int, default=100)
  parser.add_argument('--threads', type=int, nargs='+', default=(1, 2))
  parser.add_argument('--workers', type=int, nargs='*', default=(),
                      help='worker process counts to time (one thread each)')
  parser.add_argument('--batches', type=int, default=12)
  parser.add_argument('--profile', action='store_true')
  parser.add_argument('--rotation', type=float, default=None,
                      help='override config.data.rotation (max degrees)')
  parser.add_argument('--color_jitter', type=float, default=None,
                      help='override config.data.color_jitter')
  parser.add_argument('--workdir', default='',
                      help='reuse/keep the raw and built data here')
  args = parser.parse_args()
  AUGMENT.update(rotation=args.rotation, color_jitter=args.color_jitter)
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(args.workdir or tmp)
    data_dir = root / 'tfds'
    if not (data_dir / 'cihp').exists():
      t = time.perf_counter()
      write_raw_cihp(root / 'raw', args.num_images)
      build_cihp(root / 'raw', data_dir)
      print(f'# built {args.num_images} CIHP-layout examples in '
            f'{time.perf_counter() - t:.1f}s')
    _, data_cfg = data_config(data_dir, 1)
    print(f'# {platform.processor() or platform.machine()}, '
          f'{os.cpu_count()} CPUs visible; batch 16 at 473x473, '
          f'scale {tuple(data_cfg.scale_range)}, rotation '
          f'{data_cfg.rotation}, colour jitter {data_cfg.color_jitter}; '
          f'{args.batches} batches per cell')
    if args.profile:
      profile(data_dir)
    cells = [(0, n) for n in args.threads] + [(w, 1) for w in args.workers]
    for workers, threads in cells:
      wall_rate, cpu_rate, nbytes = images_per_second(
          data_dir, threads, args.batches, workers)
      name, n, unit = ((f'num_workers={workers}', workers, 'worker')
                       if workers else
                       (f'num_threads={threads}', threads, 'thread'))
      print(f'{name}: {wall_rate:7.1f} images/s (wall), '
            f'{wall_rate / n:7.1f} images/s per {unit}, '
            f'{cpu_rate:7.1f} images per CPU-second; '
            f'{nbytes / 2**20:.1f} MiB per batch', flush=True)

if __name__ == '__main__':
  main()
