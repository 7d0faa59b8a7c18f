r"""Builds your own human-parsing dataset from a folder (no builder to write).

    python -m datasets.folder mydata.py --manual_dir=RAW/mydata \
        --data_dir=DATA_DIR [--domain=mydata] [--skip_bad] [--overwrite]

The first argument is the Python file that registers the label domain with
``sst_jax.domains.register`` (your training config: it is imported, its
``get_config`` is not called; ``--domain`` picks the domain when it
registers several). ``--manual_dir`` holds::

    train/images/<id>.jpg        train/labels/<id>.png
    validation/images/<id>.jpg   validation/labels/<id>.png

Images are ``.jpg``, ``.jpeg`` or ``.png``; labels are index maps (PIL mode
``L``, or ``P`` whose pixel indices are the class ids) of the image's size,
with values among the domain's class ids and 255 (ignore). Every image of a
split is an example. The examples are checked and written exactly as the
benchmarks' builders do (``datasets/common.py``: ``strict`` stops at the
first bad example, ``--skip_bad`` skips and logs them) to
``DATA_DIR/<domain>/strict/1.0.0`` (``skip_bad/1.0.0``), which training reads
as the domain of the same name. Run it from the repository root, like
``python -m datasets.build`` (docs/datasets.md, "Your own dataset").
"""

from __future__ import annotations

import importlib.util
import os
import re

from absl import app
from absl import flags
from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from datasets import common
from sst_jax import domains as domains_lib

FLAGS = flags.FLAGS
_EVERY_IMAGE = 'every image of the folder'

LAYOUTS = (
    common.Layout('folder', {
        split: common.SplitSpec(f'{split}/images', f'{split}/labels',
                                select=lambda stem: True,
                                select_doc=_EVERY_IMAGE)
        for split in ('train', 'validation')}),
)

INSTRUCTIONS = """\
Put the images and label maps in manual_dir as
  train/images/<id>.jpg       train/labels/<id>.png
  validation/images/<id>.jpg  validation/labels/<id>.png
(labels: index maps whose pixel values are class ids, 255 = ignore).
"""

# What tfds accepts as a dataset name (and a directory of data_dir).
_NAME = re.compile(r'^[a-z][a-z0-9_]*$')


class FolderBuilder(common.HumanParsingBuilder, skip_registration=True):
  """A folder of images and index-map labels; see :func:`builder_class`."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  LAYOUTS = LAYOUTS


def builder_class(domain: str) -> type[FolderBuilder]:
  """The tfds builder of the registered domain ``domain``'s folder.

  Its dataset name is the domain's name, so that training
  (``sources.TfdsSource``) reads it without ``config.data.tfds_names``.

  Raises:
    KeyError: the domain is not registered.
    ValueError: the name is not a valid tfds dataset name.
  """
  domains_lib.get_domain(domain)
  if not _NAME.match(domain):
    raise ValueError(
        f'domain name {domain!r} cannot name a tfds dataset: use lowercase '
        'letters, digits and underscores, starting with a letter')
  # The builder is not added to tfds's registry: a second build (another
  # data_dir, a test) may define the same name again.
  return type(f'Folder_{domain}', (FolderBuilder,),
              {'name': domain, 'DOMAIN': domain,
               '__module__': 'datasets.folder'},
              skip_registration=True)


def build(domain: str, manual_dir: epath.PathLike, data_dir: epath.PathLike,
          *, skip_bad: bool = False, overwrite: bool = False
          ) -> tfds.core.DatasetBuilder:
  """Builds ``manual_dir`` to array_record in ``data_dir/<domain>/``.

  Raises:
    common.LayoutError: ``manual_dir`` lacks a split's images or labels.
    common.BadExampleError: a bad example (without ``skip_bad``).
  """
  config = common.SKIP_BAD.name if skip_bad else common.STRICT.name
  builder = builder_class(domain)(data_dir=os.fspath(data_dir), config=config,
                                  file_format='array_record')
  if overwrite and epath.Path(builder.data_dir).exists():
    epath.Path(builder.data_dir).rmtree()
    builder = builder_class(domain)(data_dir=os.fspath(data_dir),
                                    config=config, file_format='array_record')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual_dir)))
  return builder


def import_domains(path: str) -> list[str]:
  """Imports the Python file ``path``; returns the domains it registered."""
  before = set(domains_lib.DOMAINS)
  spec = importlib.util.spec_from_file_location(
      '_domains_' + re.sub(r'\W', '_', os.path.abspath(path)), path)
  if spec is None:
    raise FileNotFoundError(f'{path}: not a Python file')
  spec.loader.exec_module(importlib.util.module_from_spec(spec))
  return [n for n in domains_lib.DOMAINS if n not in before]


def main(argv: list[str]) -> None:
  logging.set_verbosity(logging.INFO)
  if len(argv) != 2:
    raise app.UsageError('expected one argument: the Python file that '
                         'registers the domain (your training config)')
  names = import_domains(argv[1])
  domain = FLAGS.domain
  if domain is None:
    if not names:
      raise app.UsageError(f'{argv[1]} registers no new label domain '
                           '(sst_jax.domains.register)')
    if len(names) > 1:
      raise app.UsageError(f'{argv[1]} registers the domains {names}: '
                           'choose one with --domain')
    domain = names[0]
  elif domain not in domains_lib.DOMAINS:
    raise app.UsageError(f'--domain={domain}: {argv[1]} registers {names}')
  builder = build(domain, FLAGS.manual_dir, FLAGS.data_dir,
                  skip_bad=FLAGS.skip_bad, overwrite=FLAGS.overwrite)
  splits = ', '.join(f'{k} {v.num_examples}'
                     for k, v in builder.info.splits.items())
  print(f'built {domain} ({splits} examples) in {builder.data_dir}')


def _define_flags() -> None:
  flags.DEFINE_string('manual_dir', None, 'the folder of train/ and '
                      'validation/ images and labels')
  flags.DEFINE_string('data_dir', None, "tfds data_dir to build into "
                      "(training's config.data.data_dir)")
  flags.DEFINE_string('domain', None, 'the domain to build (default: the '
                      'one the file registers)')
  flags.DEFINE_bool('skip_bad', False, 'skip and log bad examples (config '
                    'skip_bad) instead of stopping at the first')
  flags.DEFINE_bool('overwrite', False, 'delete an earlier build first')
  flags.mark_flags_as_required(['manual_dir', 'data_dir'])


if __name__ == '__main__':
  _define_flags()
  app.run(main)
