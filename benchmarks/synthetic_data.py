"""Rendering throughput of the embedded synthetic dataset (single process).

Usage::

  python benchmarks/synthetic_data.py [--num_images=200] [--sizes 128 256]

Prints images/s per domain and image size, rendering through
``SyntheticSource.__getitem__`` (image + label) in this one process.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from sst_jax.data import synthetic


def images_per_second(domain: str, size: int, num_images: int) -> float:
  source = synthetic.SyntheticSource(domain, 'train', image_size=(size, size),
                                     num_examples=num_images + 1)
  source[num_images]  # warm-up (imports, caches)
  start = time.perf_counter()
  for i in range(num_images):
    source[i]
  return num_images / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_images', type=int, default=200)
  parser.add_argument('--sizes', type=int, nargs='+', default=(128, 256))
  args = parser.parse_args()
  print(f'# {platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} CPUs visible, single process, '
        f'{args.num_images} images per cell')
  print(f'{"domain":<18}' + ''.join(f'{f"{s}x{s} img/s":>16}'
                                    for s in args.sizes))
  for domain in synthetic.SYNTHETIC_DOMAINS:
    rates = [images_per_second(domain, s, args.num_images) for s in args.sizes]
    print(f'{domain:<18}' + ''.join(f'{r:>16.1f}' for r in rates), flush=True)


if __name__ == '__main__':
  main()
