"""ATR: fashion single-person parsing, 18 classes.

Build (no TensorFlow needed)::

  tfds build datasets/atr --manual_dir=<raw ATR folder> \
      --file_format=array_record [--config=skip_bad]

With the official archive (``humanparsing/``, no split lists) the split is
derived deterministically from each file stem: see :data:`VALIDATION_FRACTION`.
"""

from etils import epath
import tensorflow_datasets as tfds

try:  # Imported as datasets.atr.atr_dataset_builder (pytest, python -m).
  from .. import common
except ImportError:  # `tfds build datasets/atr` puts datasets/ on sys.path.
  import common  # pylint: disable=g-import-not-at-top

BadExampleError = common.BadExampleError
LayoutError = common.LayoutError

# Without lists, an image is in validation iff the md5 of its stem, read as a
# fraction in [0, 1), is below this: about 10% of ATR, stable when files are
# added or removed, and independent of file order.
VALIDATION_FRACTION = 0.1
_SPLIT_DOC = (f'md5(stem) fraction < {VALIDATION_FRACTION} goes to '
              'validation, the rest to train')


def is_validation(stem: str) -> bool:
  return common.hash_fraction(stem) < VALIDATION_FRACTION


LAYOUTS = (
    # Graphonomy's ATR: lists given.
    common.Layout('graphonomy', {
        'train': common.SplitSpec('JPEGImages', 'SegmentationClassAug',
                                  ('list/train_id.txt',)),
        'validation': common.SplitSpec('JPEGImages', 'SegmentationClassAug',
                                       ('list/val_id.txt',)),
    }),
    # As the official humanparsing.zip unpacks: no lists.
    common.Layout('official', {
        'train': common.SplitSpec(
            'humanparsing/JPEGImages', 'humanparsing/SegmentationClassAug',
            select=lambda stem: not is_validation(stem), select_doc=_SPLIT_DOC),
        'validation': common.SplitSpec(
            'humanparsing/JPEGImages', 'humanparsing/SegmentationClassAug',
            select=is_validation, select_doc=_SPLIT_DOC),
    }),
)


class Builder(common.HumanParsingBuilder):
  """DatasetBuilder for ATR human parsing."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      epath.Path(__file__).parent / 'MANUAL_DOWNLOAD_INSTRUCTIONS').read_text()
  DOMAIN = 'atr'
  LAYOUTS = LAYOUTS
  HOMEPAGE = 'https://github.com/lemondan/HumanParsing-Dataset'
