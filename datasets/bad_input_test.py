"""Bad raw data stops every builder with one message naming the file.

Each case breaks a copy of a builder's dummy data (the first ``train`` id of
a layout with id lists) and checks the exception type and that the message
names the offending file; ``skip_bad`` skips and reports instead.
"""

import logging
import os
import pathlib
import re
import shutil

import numpy as np
from PIL import Image
import pytest

from datasets import builder_testing
from datasets import common
from datasets.atr import atr_dataset_builder
from datasets.cihp import cihp_dataset_builder
from datasets.lip import lip_dataset_builder
from datasets.pascal_person_part import pascal_person_part_dataset_builder
from sst_jax import domains

# name -> (builder module, a dummy layout with id lists).
BUILDERS = {
    'lip': (lip_dataset_builder, 'official'),
    'cihp': (cihp_dataset_builder, 'official'),
    'atr': (atr_dataset_builder, 'graphonomy'),
    'pascal_person_part': (pascal_person_part_dataset_builder, 'graphonomy'),
}


def _setup(name, tmp_path):
  """Copies the dummy data; returns (module, raw root, train spec, first id)."""
  module, layout_name = BUILDERS[name]
  raw = builder_testing.copy_dummy(name, layout_name, tmp_path)
  layout = {l.name: l for l in module.LAYOUTS}[layout_name]
  spec = layout.splits['train']
  first_id = common.resolve_split(raw, spec).ids[0]
  return module, raw, spec, first_id


def _build(module, raw, tmp_path, config=None):
  return builder_testing.build(module.Builder, raw, tmp_path / 'out', config)


def _num_classes(name):
  return domains.get_domain(name).num_classes


def _remove_image_folder(raw, spec, i, name):
  shutil.rmtree(raw / spec.images)
  return raw / spec.images


def _remove_label_folder(raw, spec, i, name):
  shutil.rmtree(raw / spec.labels)
  return raw / spec.labels


def _remove_id_list(raw, spec, i, name):
  for path in spec.id_lists:
    if (raw / path).exists():
      os.remove(raw / path)
  return raw / spec.id_lists[0]


def _remove_image(raw, spec, i, name):
  os.remove(raw / spec.images / f'{i}.jpg')
  return raw / spec.images / f'{i}.jpg'


def _remove_label(raw, spec, i, name):
  os.remove(raw / spec.labels / f'{i}.png')
  return raw / spec.labels / f'{i}.png'


def _corrupt_image(raw, spec, i, name):
  path = raw / spec.images / f'{i}.jpg'
  path.write_bytes(b'\xff\xd8 this is not a JPEG')
  return path


def _truncate_image(raw, spec, i, name):
  path = raw / spec.images / f'{i}.jpg'
  path.write_bytes(path.read_bytes()[:200])
  return path


def _resize_label(raw, spec, i, name):
  path = raw / spec.labels / f'{i}.png'
  with Image.open(path) as label:
    label.resize((label.width + 1, label.height), Image.NEAREST).save(path)
  return path


def _out_of_range_label(raw, spec, i, name):
  path = raw / spec.labels / f'{i}.png'
  with Image.open(path) as label:
    ids = np.asarray(label).copy()
  ids[2, 2] = _num_classes(name)  # one past the last class
  Image.fromarray(ids, mode='L').save(path)
  return path


def _duplicate_id(raw, spec, i, name):
  path = next(raw / p for p in spec.id_lists if (raw / p).exists())
  path.write_text(path.read_text() + f'{i}\n')
  return path


BROKEN_LAYOUT = [_remove_image_folder, _remove_label_folder, _remove_id_list]
BROKEN_EXAMPLE = [_remove_image, _remove_label, _corrupt_image,
                  _truncate_image, _resize_label, _out_of_range_label,
                  _duplicate_id]


@pytest.mark.parametrize('name', sorted(BUILDERS))
@pytest.mark.parametrize('break_fn', BROKEN_LAYOUT, ids=lambda f: f.__name__)
def test_broken_layout_stops_build_naming_path(name, break_fn, tmp_path):
  module, raw, spec, first_id = _setup(name, tmp_path)
  path = break_fn(raw, spec, first_id, name)
  with pytest.raises(common.LayoutError, match=re.escape(str(path))):
    _build(module, raw, tmp_path)
  assert not list((tmp_path / 'out').glob(f'{name}/*/*/*.array_record*'))


@pytest.mark.parametrize('name', sorted(BUILDERS))
@pytest.mark.parametrize('break_fn', BROKEN_EXAMPLE, ids=lambda f: f.__name__)
def test_bad_example_stops_build_naming_file(name, break_fn, tmp_path):
  module, raw, spec, first_id = _setup(name, tmp_path)
  path = break_fn(raw, spec, first_id, name)
  with pytest.raises(common.BadExampleError, match=re.escape(str(path))) as e:
    _build(module, raw, tmp_path)
  assert '\n' not in str(e.value)  # one message


@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_no_layout_lists_every_layout_and_the_folder(name, tmp_path):
  module = BUILDERS[name][0]
  raw = tmp_path / 'raw'
  raw.mkdir()
  (raw / 'README.txt').write_text('wrong folder')
  with pytest.raises(common.LayoutError) as e:
    _build(module, raw, tmp_path)
  assert str(raw) in str(e.value)
  for layout in module.LAYOUTS:
    assert f'layout {layout.name!r}' in str(e.value)
    for spec in layout.splits.values():
      assert spec.images in str(e.value) and spec.labels in str(e.value)


def test_rgb_label_is_refused_where_labels_must_be_index_maps(tmp_path):
  module, raw, spec, first_id = _setup('lip', tmp_path)
  path = raw / spec.labels / f'{first_id}.png'
  with Image.open(path) as label:
    label.convert('RGB').save(path)
  with pytest.raises(common.BadExampleError,
                     match=re.escape(f"{path}: label has PIL mode 'RGB'")):
    _build(module, raw, tmp_path)


def test_unknown_colour_in_colour_coded_pascal_label(tmp_path):
  module, raw, spec, _ = _setup('pascal_person_part', tmp_path)
  # An RGB (colour-coded) label of the dummy data.
  path = next(p for p in sorted((raw / spec.labels).iterdir())
              if Image.open(p).mode == 'RGB')
  with Image.open(path) as label:
    colours = np.asarray(label).copy()
  colours[1, 1] = (1, 2, 3)
  Image.fromarray(colours).save(path)
  with pytest.raises(common.BadExampleError,
                     match=re.escape(
                         f'{path}: colour-coded label has colour (1, 2, 3)')):
    _build(module, raw, tmp_path)


@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_skip_bad_skips_and_reports_every_file(name, tmp_path, caplog):
  module, raw, spec, _ = _setup(name, tmp_path)
  layout = {l.name: l for l in module.LAYOUTS}[BUILDERS[name][1]]
  val_spec = layout.splits['validation']
  ids = common.resolve_split(raw, spec).ids
  val_ids = common.resolve_split(raw, val_spec).ids
  bad_files = [_remove_image(raw, spec, ids[0], name),
               _out_of_range_label(raw, spec, ids[1], name),
               _corrupt_image(raw, val_spec, val_ids[0], name)]
  with caplog.at_level(logging.INFO):
    _build(module, raw, tmp_path, config='skip_bad')
  examples = builder_testing.read_back(tmp_path / 'out', name, 'skip_bad')
  assert sorted(ex['id'].decode() for ex in examples['train']) == sorted(
      ids[2:])
  assert sorted(ex['id'].decode() for ex in examples['validation']) == sorted(
      val_ids[1:])
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING]
  for path in bad_files:
    assert any(str(path) in w and 'skipping' in w for w in warnings), path
  assert any(f'train: skipped 2 of {len(ids)} examples' in w
             for w in warnings), warnings
  assert any(f'validation: skipped 1 of {len(val_ids)} examples' in w
             for w in warnings), warnings
  # The default (strict) build of the same data still stops.
  with pytest.raises(common.BadExampleError):
    _build(module, raw, tmp_path)


def test_skip_bad_with_every_example_bad_stops(tmp_path):
  module, raw, spec, _ = _setup('lip', tmp_path)
  for i in common.resolve_split(raw, spec).ids:
    _corrupt_image(raw, spec, i, 'lip')
  with pytest.raises(common.BadExampleError,
                     match="all 3 examples of split 'train' are bad"):
    _build(module, raw, tmp_path, config='skip_bad')


def test_plain_build_makes_only_the_strict_config(tmp_path):
  raw = builder_testing.dummy_dir('lip', 'flat')
  _build(lip_dataset_builder, raw, tmp_path)
  assert [p.name for p in (tmp_path / 'out/lip').iterdir()
          if not p.name.startswith('.')] == ['strict']
  assert pathlib.Path(tmp_path / 'out/lip/strict/1.0.0').is_dir()
