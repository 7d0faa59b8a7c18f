"""CIHP (Crowd Instance-level Human Parsing): multi-person, 20 classes.

Only the semantic maps (``Category_ids``) are used. Build (no TensorFlow)::

  tfds build datasets/cihp --manual_dir=<raw CIHP folder> \
      --file_format=array_record [--config=skip_bad]
"""

from etils import epath
import tensorflow_datasets as tfds

try:  # Imported as datasets.cihp.cihp_dataset_builder (pytest, python -m).
  from .. import common
except ImportError:  # `tfds build datasets/cihp` puts datasets/ on sys.path.
  import common  # pylint: disable=g-import-not-at-top

BadExampleError = common.BadExampleError
LayoutError = common.LayoutError

_OFFICIAL = 'instance-level_human_parsing/'

LAYOUTS = (
    # As the official instance-level_human_parsing.tar.gz unpacks.
    common.Layout('official', {
        'train': common.SplitSpec(
            images=f'{_OFFICIAL}Training/Images',
            labels=f'{_OFFICIAL}Training/Category_ids',
            id_lists=(f'{_OFFICIAL}Training/train_id.txt',)),
        'validation': common.SplitSpec(
            images=f'{_OFFICIAL}Validation/Images',
            labels=f'{_OFFICIAL}Validation/Category_ids',
            id_lists=(f'{_OFFICIAL}Validation/val_id.txt',)),
    }),
    # Graphonomy's CIHP_4w: train and val images share one folder.
    common.Layout('graphonomy', {
        'train': common.SplitSpec(images='Images', labels='Category_ids',
                                  id_lists=('lists/train_id.txt',)),
        'validation': common.SplitSpec(images='Images', labels='Category_ids',
                                       id_lists=('lists/val_id.txt',)),
    }),
)


class Builder(common.HumanParsingBuilder):
  """DatasetBuilder for CIHP human parsing (semantic labels)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      epath.Path(__file__).parent / 'MANUAL_DOWNLOAD_INSTRUCTIONS').read_text()
  DOMAIN = 'cihp'
  LAYOUTS = LAYOUTS
  HOMEPAGE = 'https://sysu-hcp.net/lip/'
