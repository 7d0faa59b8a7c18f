r"""`tfds build` without TensorFlow: the same command, the same flags.

The ``tfds`` console script of tensorflow-datasets 4.9.x imports its
``convert_format`` command at start-up, which needs TensorFlow, although
building to array_record does not. This entry point runs TFDS's own ``build``
command alone::

  python -m datasets.build datasets/lip --manual_dir=/data/raw/LIP \
      --data_dir=/data/tfds --file_format=array_record [--config=skip_bad]

Run it from the repository root (``sst_jax`` must be importable: ``pip install
-e .`` or ``PYTHONPATH=.``). With TensorFlow installed, ``tfds build`` with
the same arguments is equivalent.
"""

import dataclasses
import logging as python_logging

from absl import app
from absl import logging
import tensorflow_datasets as tfds
from tensorflow_datasets.scripts.cli import build
from tensorflow_datasets.scripts.cli import cli_utils


@dataclasses.dataclass(frozen=True, kw_only=True)
class Args(build.Args):
  """Builds datasets (`tfds build`'s arguments)."""


_parse_flags = cli_utils.make_flags_parser(
    Args, description='tfds build, without TensorFlow')


def main(args: Args) -> None:
  # As `tfds build`: show Python INFO logs (progress, skipped examples).
  logging.use_python_logging(quiet=True)
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().python_handler.setFormatter(
      python_logging.Formatter('{levelname}[{filename}]: {message}', style='{'))
  tfds.core.visibility.set_availables([
      tfds.core.visibility.DatasetType.TFDS_PUBLIC,
      tfds.core.visibility.DatasetType.COMMUNITY_PUBLIC,
  ])
  args.execute()


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
