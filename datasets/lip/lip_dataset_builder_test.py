"""Builds LIP from dummy data in each accepted raw layout and reads it back."""

import pytest

from datasets import builder_testing
from datasets.lip import lip_dataset_builder

TRAIN = ['77_471474', '100034_483681', '10005_205677']
VAL = ['36_454991', '1000_1234574']

# layout -> split -> (image folder, label folder), relative to the layout.
LAYOUTS = {
    'official': {
        'train': ('TrainVal_images/train_images',
                  'TrainVal_parsing_annotations/train_segmentations'),
        'validation': ('TrainVal_images/val_images',
                       'TrainVal_parsing_annotations/val_segmentations'),
    },
    'flat': {
        'train': ('train_images', 'train_segmentations'),
        'validation': ('val_images', 'val_segmentations'),
    },
}


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_builds_layout(layout, tmp_path):
  raw = builder_testing.dummy_dir('lip', layout)
  builder_testing.build(lip_dataset_builder.Builder, raw, tmp_path)
  examples = builder_testing.read_back(tmp_path, 'lip')
  files = {}
  for split, ids in (('train', TRAIN), ('validation', VAL)):
    image_dir, label_dir = LAYOUTS[layout][split]
    for i in ids:
      files[i] = (raw / image_dir / f'{i}.jpg', raw / label_dir / f'{i}.png')
  builder_testing.check_built(examples, {'train': TRAIN, 'validation': VAL},
                              files)


def test_official_layout_finds_id_list_in_either_folder(tmp_path):
  # The dummy official layout keeps val_id.txt next to the annotations; move
  # train_id.txt there too.
  raw = builder_testing.copy_dummy('lip', 'official', tmp_path)
  (raw / 'TrainVal_images/train_id.txt').rename(
      raw / 'TrainVal_parsing_annotations/train_id.txt')
  builder_testing.build(lip_dataset_builder.Builder, raw, tmp_path / 'out')
  examples = builder_testing.read_back(tmp_path / 'out', 'lip')
  assert {s: len(e) for s, e in examples.items()} == {'train': 3,
                                                      'validation': 2}
