"""Builds ATR from dummy data in each accepted raw layout and reads it back."""

import hashlib

from datasets import builder_testing
from datasets.atr import atr_dataset_builder


def _files(folder, ids, image_dir, label_dir):
  return {i: (folder / image_dir / f'{i}.jpg', folder / label_dir / f'{i}.png')
          for i in ids}


def test_builds_graphonomy_layout(tmp_path):
  raw = builder_testing.dummy_dir('atr', 'graphonomy')
  builder_testing.build(atr_dataset_builder.Builder, raw, tmp_path)
  expected = {'train': ['997_1', '998_2', '999_3'],
              'validation': ['1000_4', '1001_5']}
  builder_testing.check_built(
      builder_testing.read_back(tmp_path, 'atr'), expected,
      _files(raw, sum(expected.values(), []), 'JPEGImages',
             'SegmentationClassAug'))


def test_builds_official_layout_with_md5_split(tmp_path):
  raw = builder_testing.dummy_dir('atr', 'official')
  builder_testing.build(atr_dataset_builder.Builder, raw, tmp_path)
  stems = sorted(p.stem for p in (raw / 'humanparsing/JPEGImages').iterdir())
  # The documented rule, computed independently of the builder.
  val = [s for s in stems
         if int(hashlib.md5(s.encode()).hexdigest()[:8], 16) < 0.1 * 2**32]
  expected = {'train': sorted(set(stems) - set(val)), 'validation': val}
  assert len(expected['train']) == 3 and len(val) == 2
  builder_testing.check_built(
      builder_testing.read_back(tmp_path, 'atr'), expected,
      _files(raw / 'humanparsing', stems, 'JPEGImages',
             'SegmentationClassAug'))


def test_md5_split_is_stable_and_about_ten_percent():
  stems = [f'{i}_{j}' for i in range(100) for j in range(20)]
  val = [s for s in stems if atr_dataset_builder.is_validation(s)]
  assert 0.08 < len(val) / len(stems) < 0.12
  assert val == [s for s in reversed(stems)
                 if atr_dataset_builder.is_validation(s)][::-1]
