r"""Dedicated SST on the real benchmarks with ResNet-101: one target domain.

    python -m sst_jax.main \
        --config=configs/dedicated_r101.py:target=pascal_person_part,data_dir=DATA_DIR \
        --config.init.backbone=resnet101_imagenet.pth --workdir=/tmp/sst_ded_ppp

The target's head is the deliverable (export keeps backbone, decoder and that
head); the other benchmarks' images are mixed in with weight
``config.sst.dedicated_other_weight`` (0.5: each other domain is sampled half
as often as the target) and transfer into the target through MST and L_kd.
Everything else is ``configs/universal_r101.py``.

The argument is a comma-separated list of
  ``target=<domain>``  pascal_person_part (default), atr, cihp or lip;
  ``lip`` / ``with_lip``  also use LIP (implied by ``target=lip``);
  ``data_dir=DIR``     the tfds data_dir of the built benchmarks;
  ``init_from=WORKDIR``  start from a trained universal model's checkpoint;
  ``baseline``         the dedicated layout with the SST modules off.
"""

from __future__ import annotations

import importlib.util
import os

from sst_jax import config_lib


def _universal():
  """configs/universal_r101.py, loaded by path (configs/ is not a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      'universal_r101.py')
  spec = importlib.util.spec_from_file_location('_universal_r101', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None):
  universal = _universal()
  options, flags = universal.parse_arg(arg)
  target = options.pop('target', 'pascal_person_part')
  if target == 'lip' and 'lip' not in flags and 'with_lip' not in flags:
    flags.append('with_lip')
  config = universal.real_config(options, flags)
  if target not in config.domains:
    raise ValueError(f'configs/dedicated_r101.py: target={target!r} is not '
                     f'one of {list(config.domains)}')
  config.mode_sst = 'dedicated'
  config.target = target
  config.init_from = options.pop('init_from', '')
  config.sst.dedicated_other_weight = 0.5
  # Dedicated parsing from a frozen source is built for the first
  # reconstruction only so far (docs/method.md).
  config.sst.variant = 'first'
  baseline = 'baseline' in flags
  if baseline:
    flags.remove('baseline')
    config_lib.disable_sst(config)
  if options or flags:
    raise ValueError(f'configs/dedicated_r101.py: unknown argument(s) '
                     f'{sorted(options) + flags} in {arg!r}')
  config.lock()
  return config
