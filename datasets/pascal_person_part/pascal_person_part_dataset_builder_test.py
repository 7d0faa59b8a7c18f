"""Builds PASCAL-Person-Part from dummy data (index and colour labels)."""

from PIL import Image

from datasets import builder_testing
from datasets.pascal_person_part import pascal_person_part_dataset_builder

TRAIN = ['2008_000003', '2008_000008', '2008_000023', '2008_000026',
         '2008_000041', '2008_000045']
VAL = ['2008_000002', '2008_000034']


def test_builds_graphonomy_layout_with_every_label_encoding(tmp_path):
  raw = builder_testing.dummy_dir('pascal_person_part', 'graphonomy')
  modes = {Image.open(raw / 'SegmentationPart' / f'{i}.png').mode
           for i in TRAIN + VAL}
  assert modes == {'L', 'P', 'RGB', 'RGBA'}  # the dummy data covers them
  builder_testing.build(pascal_person_part_dataset_builder.Builder, raw,
                        tmp_path)
  files = {i: (raw / 'JPEGImages' / f'{i}.jpg',
               raw / 'SegmentationPart' / f'{i}.png') for i in TRAIN + VAL}
  builder_testing.check_built(
      builder_testing.read_back(tmp_path, 'pascal_person_part'),
      {'train': TRAIN, 'validation': VAL}, files, colour_coded_ok=True)
