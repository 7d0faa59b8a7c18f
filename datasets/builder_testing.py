"""Test helpers shared by the builder tests: build, read back, compare.

The reference readers here decode the raw files independently of
``common.read_label`` (plain PIL plus a brute-force VOC colour lookup), so a
test that compares a built dataset with them checks the builder's decoding.
"""

from __future__ import annotations

import pathlib
import shutil
from typing import Mapping, Sequence

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from sst_jax import domains

DATASETS_DIR = pathlib.Path(__file__).resolve().parent


def dummy_dir(name: str, layout: str) -> pathlib.Path:
  return DATASETS_DIR / name / 'dummy_data' / layout


def copy_dummy(name: str, layout: str, tmp_path: pathlib.Path) -> pathlib.Path:
  """A writable copy of a dummy layout, for tests that break it."""
  return pathlib.Path(shutil.copytree(dummy_dir(name, layout),
                                      tmp_path / 'raw' / layout))


def build(builder_cls, manual_dir: pathlib.Path, data_dir: pathlib.Path,
          config: str | None = None):
  """Builds into array_record, as `tfds build --file_format=array_record`."""
  builder = builder_cls(data_dir=str(data_dir), config=config,
                        file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def read_back(data_dir: pathlib.Path, name: str, config: str | None = None
              ) -> dict[str, list[dict[str, object]]]:
  """Reads every split through `tfds.data_source`, as training does."""
  full_name = f'{name}/{config}' if config else name
  sources = tfds.data_source(full_name, data_dir=str(data_dir))
  return {split: [source[i] for i in range(len(source))]
          for split, source in sources.items()}


def reference_image(path: pathlib.Path) -> np.ndarray:
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'))


def reference_label(path: pathlib.Path, colour_coded_ok: bool) -> np.ndarray:
  """Class ids of a raw label file.

  Index maps ('L', or 'P' with a grey palette, or any 'P' when colour-coded
  labels are not accepted) are read as they are; everything else as VOC
  colours, looked up one pixel at a time in the 256-entry VOC palette (whose
  entry 255 is the void colour).
  """
  with Image.open(path) as image:
    palette = image.getpalette('RGB') if image.mode == 'P' else None
    grey = palette is not None and all(
        palette[3 * i:3 * i + 3] == [i] * 3 for i in range(len(palette) // 3))
    if image.mode == 'L' or grey or (image.mode == 'P' and
                                     not colour_coded_ok):
      return np.asarray(image)
    rgb = np.asarray(image.convert('RGB'))
  voc = domains.voc_palette(256)
  ids = np.zeros(rgb.shape[:2], np.uint8)
  for y in range(rgb.shape[0]):
    for x in range(rgb.shape[1]):
      ids[y, x] = np.flatnonzero((voc == rgb[y, x]).all(-1))[0]
  return ids


def check_built(examples: Mapping[str, Sequence[dict[str, object]]],
                expected_ids: Mapping[str, Sequence[str]],
                files: Mapping[str, tuple[pathlib.Path, pathlib.Path]],
                colour_coded_ok: bool = False):
  """Asserts split ids, image/label sizes and values against the raw files.

  Args:
    examples: split -> examples read back.
    expected_ids: split -> ids, in any order.
    files: id -> (raw image path, raw label path).
    colour_coded_ok: whether labels may be colour-coded (PASCAL).
  """
  assert {split: sorted(ids) for split, ids in expected_ids.items()} == {
      split: sorted(ex['id'].decode() for ex in exs)
      for split, exs in examples.items()}
  for exs in examples.values():
    for ex in exs:
      image_path, label_path = files[ex['id'].decode()]
      image, label = ex['image'], ex['label']
      assert image.dtype == np.uint8 and image.ndim == 3
      assert image.shape[2] == 3
      assert label.dtype == np.uint8 and label.shape == image.shape[:2] + (1,)
      np.testing.assert_array_equal(image, reference_image(image_path))
      np.testing.assert_array_equal(
          label[..., 0], reference_label(label_path, colour_coded_ok),
          err_msg=str(label_path))
