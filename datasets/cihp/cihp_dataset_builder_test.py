"""Builds CIHP from dummy data in each accepted raw layout and reads it back."""

import pytest

from datasets import builder_testing
from datasets.cihp import cihp_dataset_builder

TRAIN = ['0000006', '0000007', '0000009']
VAL = ['0000001', '0000004']
_BASE = 'instance-level_human_parsing'

# layout -> split -> (image folder, label folder), relative to the layout.
LAYOUTS = {
    'official': {
        'train': (f'{_BASE}/Training/Images', f'{_BASE}/Training/Category_ids'),
        'validation': (f'{_BASE}/Validation/Images',
                       f'{_BASE}/Validation/Category_ids'),
    },
    'graphonomy': {
        'train': ('Images', 'Category_ids'),
        'validation': ('Images', 'Category_ids'),
    },
}


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_builds_layout(layout, tmp_path):
  raw = builder_testing.dummy_dir('cihp', layout)
  builder_testing.build(cihp_dataset_builder.Builder, raw, tmp_path)
  examples = builder_testing.read_back(tmp_path, 'cihp')
  files = {}
  for split, ids in (('train', TRAIN), ('validation', VAL)):
    image_dir, label_dir = LAYOUTS[layout][split]
    for i in ids:
      files[i] = (raw / image_dir / f'{i}.jpg', raw / label_dir / f'{i}.png')
  builder_testing.check_built(examples, {'train': TRAIN, 'validation': VAL},
                              files)
