"""Label decoding rules of datasets/common.py, and the no-TensorFlow build."""

import io
import os
import pathlib
import subprocess
import sys

from etils import epath
import numpy as np
from PIL import Image
import pytest

from datasets import builder_testing
from datasets import common
from sst_jax import domains

VOC = domains.voc_palette(256)
IDS = np.array([[0, 1, 2, 255], [3, 4, 5, 6]], np.uint8)


def _write(tmp_path, image, name='label.png'):
  path = tmp_path / name
  image.save(path)
  return epath.Path(path)


def _palette_image(indices, palette):
  image = Image.fromarray(indices.astype(np.uint8), mode='P')
  image.putpalette(np.asarray(palette, np.uint8).reshape(-1).tolist())
  return image


@pytest.mark.parametrize('colour_coded_ok', [False, True])
def test_index_maps_read_as_they_are(tmp_path, colour_coded_ok):
  for name, image in [
      ('l.png', Image.fromarray(IDS, mode='L')),
      ('p_voc.png', _palette_image(IDS, VOC)),
      ('p_grey.png', _palette_image(IDS, np.repeat(np.arange(256), 3))),
  ]:
    ids = common.read_label(_write(tmp_path, image, name), 7, colour_coded_ok)
    np.testing.assert_array_equal(ids, IDS, err_msg=name)


def test_colour_coded_labels_are_mapped_through_the_voc_palette(tmp_path):
  rgb = VOC[IDS]  # id 255 becomes the VOC void colour (224, 224, 192)
  rgba = np.concatenate([rgb, np.full(IDS.shape + (1,), 255, np.uint8)], -1)
  # 'P' whose palette lists the used colours in another order than VOC's.
  order = np.array([6, 5, 4, 3, 2, 1, 0, 255])
  index_of = np.zeros(256, np.uint8)
  index_of[order] = np.arange(len(order))
  shuffled = _palette_image(index_of[IDS], VOC[order])
  for name, image in [('rgb.png', Image.fromarray(rgb)),
                      ('rgba.png', Image.fromarray(rgba, mode='RGBA')),
                      ('p_colour.png', shuffled)]:
    ids = common.read_label(_write(tmp_path, image, name), 7, True)
    np.testing.assert_array_equal(ids, IDS, err_msg=name)
  # Read as an index map, the shuffled 'P' label would be different.
  assert not np.array_equal(np.asarray(shuffled), IDS)


def test_colour_of_a_class_outside_the_domain_is_unknown(tmp_path):
  # VOC colour of class 7 is not one of PASCAL-Person-Part's 7 colours.
  path = _write(tmp_path, Image.fromarray(VOC[np.full((2, 2), 7)]))
  with pytest.raises(common.BadExampleError,
                     match=r'colour \(128, 128, 128\), which is not a class'):
    common.read_label(path, 7, True)


def test_colour_coded_label_refused_where_index_maps_are_required(tmp_path):
  path = _write(tmp_path, Image.fromarray(VOC[IDS]))
  with pytest.raises(common.BadExampleError, match="PIL mode 'RGB'"):
    common.read_label(path, 20, False)


def test_out_of_range_values_are_listed(tmp_path):
  path = _write(tmp_path, Image.fromarray(
      np.array([[0, 7, 9, 255]], np.uint8), mode='L'))
  with pytest.raises(common.BadExampleError,
                     match=r'label values \[7, 9\] are outside the 7 classes'):
    common.read_label(path, 7, True)


def test_image_bytes_pass_through_unless_not_rgb_or_grey(tmp_path):
  rgb = np.random.RandomState(0).randint(0, 255, (6, 5, 3)).astype(np.uint8)
  jpeg = _write(tmp_path, Image.fromarray(rgb), 'a.jpg')
  data, size = common.read_image(jpeg)
  assert data == jpeg.read_bytes() and size == (6, 5)
  cmyk = _write(tmp_path, Image.fromarray(rgb).convert('CMYK'), 'b.jpg')
  data, size = common.read_image(cmyk)
  with Image.open(io.BytesIO(data)) as image:
    assert (image.format, image.mode, image.size) == ('PNG', 'RGB', (5, 6))


def test_module_build_entry_point_runs_without_tensorflow(tmp_path):
  """`python -m datasets.build`, as launch/build_datasets.sh runs it."""
  repo = pathlib.Path(__file__).resolve().parent.parent
  env = dict(os.environ, PYTHONPATH=str(repo))
  raw = builder_testing.dummy_dir('pascal_person_part', 'graphonomy')
  result = subprocess.run(
      [sys.executable, '-m', 'datasets.build', 'datasets/pascal_person_part',
       f'--manual_dir={raw}', f'--data_dir={tmp_path}',
       '--file_format=array_record', '--config=skip_bad'],
      cwd=repo, env=env, capture_output=True, text=True, timeout=120,
      check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'skipped 0 of 6 examples' in result.stderr
  examples = builder_testing.read_back(tmp_path, 'pascal_person_part',
                                       'skip_bad')
  assert {s: len(e) for s, e in examples.items()} == {'train': 6,
                                                      'validation': 2}
