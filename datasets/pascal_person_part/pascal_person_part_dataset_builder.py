"""PASCAL-Person-Part: body-part parsing, 7 classes.

Label PNGs may be index maps or colour-coded with the VOC palette (see
``common.read_label`` and docs/datasets.md). Build (no TensorFlow needed)::

  tfds build datasets/pascal_person_part --manual_dir=<raw folder> \
      --file_format=array_record [--config=skip_bad]
"""

from etils import epath
import tensorflow_datasets as tfds

try:  # Imported as datasets.pascal_person_part.* (pytest, python -m).
  from .. import common
except ImportError:  # `tfds build datasets/...` puts datasets/ on sys.path.
  import common  # pylint: disable=g-import-not-at-top

BadExampleError = common.BadExampleError
LayoutError = common.LayoutError

LAYOUTS = (
    # Graphonomy's / the common release: VOC images, part maps, id lists.
    common.Layout('graphonomy', {
        'train': common.SplitSpec('JPEGImages', 'SegmentationPart',
                                  ('list/train_id.txt',)),
        'validation': common.SplitSpec('JPEGImages', 'SegmentationPart',
                                       ('list/val_id.txt',)),
    }),
)


class Builder(common.HumanParsingBuilder):
  """DatasetBuilder for PASCAL-Person-Part."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      epath.Path(__file__).parent / 'MANUAL_DOWNLOAD_INSTRUCTIONS').read_text()
  DOMAIN = 'pascal_person_part'
  LAYOUTS = LAYOUTS
  HOMEPAGE = 'http://roozbehm.info/pascal-parts/pascal-parts.html'
  COLOUR_CODED_LABELS_OK = True
