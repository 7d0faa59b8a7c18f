r"""Writes the builders' dummy_data/ folders in every accepted raw layout.

Deterministic (fixed seeds); rerun after changing it and commit the output::

  python datasets/make_dummy_data.py

Images are tiny JPEGs (one greyscale, as LIP has some); labels are blobs of
random class ids with a few 255 (ignore) pixels. PASCAL-Person-Part mixes
every label encoding the builder accepts: 'L' and 'P' index maps (VOC and
grey palettes) and colour-coded 'P' (shuffled palette), 'RGB' and 'RGBA'.
"""

import hashlib
import os
import pathlib
import shutil
import sys

import numpy as np
from PIL import Image

_ROOT = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(_ROOT.parent))
from sst_jax import domains  # pylint: disable=g-import-not-at-top,wrong-import-position


def _ids_map(rng: np.random.RandomState, height: int, width: int,
             num_classes: int) -> np.ndarray:
  """A label map: rectangles of random classes on background, some 255."""
  ids = np.zeros((height, width), np.uint8)
  for _ in range(4):
    y, x = rng.randint(0, height - 4), rng.randint(0, width - 4)
    h, w = rng.randint(3, height // 2), rng.randint(3, width // 2)
    ids[y:y + h, x:x + w] = rng.randint(1, num_classes)
  ids[0, :3] = domains.IGNORE_ID
  ids[-1, -1] = num_classes - 1  # every class range reaches its last id
  return ids


def _image(rng: np.random.RandomState, ids: np.ndarray, path: pathlib.Path,
           grey: bool = False):
  """A JPEG whose colours follow the label map, plus noise."""
  colours = domains.voc_palette(256)[ids].astype(np.int32)
  pixels = np.clip(colours + rng.randint(-30, 30, colours.shape), 0, 255)
  image = Image.fromarray(pixels.astype(np.uint8))
  if grey:
    image = image.convert('L')
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path, format='JPEG', quality=70)


def _save_label(ids: np.ndarray, path: pathlib.Path, encoding: str = 'L'):
  """Saves ``ids`` with one of the encodings real releases use."""
  path.parent.mkdir(parents=True, exist_ok=True)
  voc = domains.voc_palette(256)
  if encoding == 'L':
    Image.fromarray(ids, mode='L').save(path)
  elif encoding == 'P-voc':  # index map, VOC palette (PASCAL, ATR style)
    image = Image.fromarray(ids, mode='P')
    image.putpalette(voc.reshape(-1).tolist())
    image.save(path)
  elif encoding == 'P-grey':  # index map, grey palette
    image = Image.fromarray(ids, mode='P')
    image.putpalette(np.repeat(np.arange(256, dtype=np.uint8), 3).tolist())
    image.save(path)
  elif encoding == 'P-colour':  # colour-coded: palette order is not VOC order
    used = np.unique(ids)
    order = used[::-1]  # entry i holds the colour of class order[i]
    index_of = np.zeros(256, np.uint8)
    index_of[order] = np.arange(len(order))
    image = Image.fromarray(index_of[ids], mode='P')
    image.putpalette(voc[order].reshape(-1).tolist())
    image.save(path)
  elif encoding in ('RGB', 'RGBA'):
    pixels = voc[ids]
    if encoding == 'RGBA':
      pixels = np.concatenate([pixels, np.full(ids.shape + (1,), 255,
                                               np.uint8)], -1)
    Image.fromarray(pixels, mode=encoding).save(path)
  else:
    raise ValueError(encoding)


def _write_split(rng, root: pathlib.Path, image_dir: str, label_dir: str,
                 ids: list[str], num_classes: int, id_list: str | None,
                 encodings=('L',), grey_first=False):
  for i, stem in enumerate(ids):
    height, width = 20 + 4 * (i % 3), 24 + 4 * (i % 4)
    label = _ids_map(rng, height, width, num_classes)
    _image(rng, label, root / image_dir / f'{stem}.jpg',
           grey=grey_first and i == 0)
    _save_label(label, root / label_dir / f'{stem}.png',
                encodings[i % len(encodings)])
  if id_list:
    (root / id_list).parent.mkdir(parents=True, exist_ok=True)
    (root / id_list).write_text(''.join(f'{stem}\n' for stem in ids))


def _fresh(path: pathlib.Path) -> pathlib.Path:
  shutil.rmtree(path, ignore_errors=True)
  path.mkdir(parents=True)
  return path


def make_lip(rng):
  n = domains.get_domain('lip').num_classes
  train, val = ['77_471474', '100034_483681', '10005_205677'], ['36_454991',
                                                               '1000_1234574']
  root = _fresh(_ROOT / 'lip/dummy_data/official')
  _write_split(rng, root, 'TrainVal_images/train_images',
               'TrainVal_parsing_annotations/train_segmentations', train, n,
               'TrainVal_images/train_id.txt', grey_first=True)
  # The val list sits next to the annotations here: both places are accepted.
  _write_split(rng, root, 'TrainVal_images/val_images',
               'TrainVal_parsing_annotations/val_segmentations', val, n,
               'TrainVal_parsing_annotations/val_id.txt')
  root = _fresh(_ROOT / 'lip/dummy_data/flat')
  _write_split(rng, root, 'train_images', 'train_segmentations', train, n,
               'train_id.txt')
  _write_split(rng, root, 'val_images', 'val_segmentations', val, n,
               'val_id.txt')


def make_cihp(rng):
  n = domains.get_domain('cihp').num_classes
  train, val = ['0000006', '0000007', '0000009'], ['0000001', '0000004']
  root = _fresh(_ROOT / 'cihp/dummy_data/official')
  base = 'instance-level_human_parsing'
  _write_split(rng, root, f'{base}/Training/Images',
               f'{base}/Training/Category_ids', train, n,
               f'{base}/Training/train_id.txt')
  _write_split(rng, root, f'{base}/Validation/Images',
               f'{base}/Validation/Category_ids', val, n,
               f'{base}/Validation/val_id.txt')
  root = _fresh(_ROOT / 'cihp/dummy_data/graphonomy')
  _write_split(rng, root, 'Images', 'Category_ids', train, n,
               'lists/train_id.txt')
  _write_split(rng, root, 'Images', 'Category_ids', val, n, 'lists/val_id.txt')


def _atr_is_validation(stem: str) -> bool:
  # Mirrors atr_dataset_builder.is_validation (kept separate so that this
  # script does not import tensorflow_datasets).
  return int(hashlib.md5(stem.encode()).hexdigest()[:8], 16) / 2**32 < 0.1


def make_atr(rng):
  n = domains.get_domain('atr').num_classes
  train, val = ['997_1', '998_2', '999_3'], ['1000_4', '1001_5']
  root = _fresh(_ROOT / 'atr/dummy_data/graphonomy')
  _write_split(rng, root, 'JPEGImages', 'SegmentationClassAug', train, n,
               'list/train_id.txt', encodings=('P-voc', 'L'))
  _write_split(rng, root, 'JPEGImages', 'SegmentationClassAug', val, n,
               'list/val_id.txt', encodings=('P-voc', 'L'))
  # No lists: pick stems so that the md5 split puts two in validation.
  stems = [f'{i}' for i in range(1, 200)]
  val = [s for s in stems if _atr_is_validation(s)][:2]
  train = [s for s in stems if not _atr_is_validation(s)][:3]
  root = _fresh(_ROOT / 'atr/dummy_data/official')
  _write_split(rng, root, 'humanparsing/JPEGImages',
               'humanparsing/SegmentationClassAug', sorted(train + val), n,
               None, encodings=('P-voc',))


def make_pascal_person_part(rng):
  n = domains.get_domain('pascal_person_part').num_classes
  train = ['2008_000003', '2008_000008', '2008_000023', '2008_000026',
           '2008_000041', '2008_000045']
  val = ['2008_000002', '2008_000034']
  root = _fresh(_ROOT / 'pascal_person_part/dummy_data/graphonomy')
  _write_split(rng, root, 'JPEGImages', 'SegmentationPart', train, n,
               'list/train_id.txt',
               encodings=('L', 'P-voc', 'P-grey', 'P-colour', 'RGB', 'RGBA'))
  _write_split(rng, root, 'JPEGImages', 'SegmentationPart', val, n,
               'list/val_id.txt', encodings=('P-colour', 'RGB'))


def main():
  for seed, make in enumerate(
      (make_lip, make_cihp, make_atr, make_pascal_person_part)):
    make(np.random.RandomState(seed))
  total = sum(os.path.getsize(os.path.join(d, f))
              for name in ('lip', 'cihp', 'atr', 'pascal_person_part')
              for d, _, files in os.walk(_ROOT / name / 'dummy_data')
              for f in files)
  print(f'dummy data written: {total / 1024:.1f} KiB')


if __name__ == '__main__':
  main()
