"""LIP (Look Into Person): single-person parsing, 20 classes.

Build (no TensorFlow needed)::

  tfds build datasets/lip --manual_dir=<raw LIP folder> \
      --file_format=array_record [--config=skip_bad]
"""

from etils import epath
import tensorflow_datasets as tfds

try:  # Imported as datasets.lip.lip_dataset_builder (pytest, python -m).
  from .. import common
except ImportError:  # `tfds build datasets/lip` puts datasets/ on sys.path.
  import common  # pylint: disable=g-import-not-at-top

BadExampleError = common.BadExampleError
LayoutError = common.LayoutError


def _split(images_root: str, labels_root: str, split: str) -> common.SplitSpec:
  # The id lists ship inside TrainVal_images/; accept them next to the
  # annotations or at the top level too.
  lists = tuple(dict.fromkeys(
      f'{folder}{split}_id.txt' for folder in (images_root, labels_root, '')))
  return common.SplitSpec(images=f'{images_root}{split}_images',
                          labels=f'{labels_root}{split}_segmentations',
                          id_lists=lists)


LAYOUTS = (
    # As the official TrainVal_images.zip and TrainVal_parsing_annotations.zip
    # unpack.
    common.Layout('official', {
        'train': _split('TrainVal_images/', 'TrainVal_parsing_annotations/',
                        'train'),
        'validation': _split('TrainVal_images/',
                             'TrainVal_parsing_annotations/', 'val'),
    }),
    # Everything at the top level (CE2P / SCHP style).
    common.Layout('flat', {
        'train': _split('', '', 'train'),
        'validation': _split('', '', 'val'),
    }),
)


class Builder(common.HumanParsingBuilder):
  """DatasetBuilder for LIP human parsing."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      epath.Path(__file__).parent / 'MANUAL_DOWNLOAD_INSTRUCTIONS').read_text()
  DOMAIN = 'lip'
  LAYOUTS = LAYOUTS
  HOMEPAGE = 'https://sysu-hcp.net/lip/'
