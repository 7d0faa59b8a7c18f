r"""Dedicated SST on the real benchmarks with ResNet-101: one target domain.

    python -m sst_jax.main \
        --config=configs/dedicated_r101.py:target=pascal_person_part,init_from=SOURCE,data_dir=DATA_DIR \
        --workdir=/tmp/sst_ded_ppp

Stage 2 of dedicated parsing (docs/method.md): the target network starts
from the source model in ``init_from`` (e.g. a ``configs/universal_r101.py``
workdir), a frozen copy of the source reads 8 source-domain images added to
every batch of 16 target images, and MST relates the target's node sets to
the source's. The target's head is the deliverable (export keeps backbone,
decoder and that head). Everything else is ``configs/universal_r101.py``.

The argument is a comma-separated list of
  ``target=<domain>``  pascal_person_part (default), atr, cihp or lip;
  ``lip`` / ``with_lip``  also use LIP (implied by ``target=lip``);
  ``data_dir=DIR``     the tfds data_dir of the built benchmarks;
  ``init_from=WORKDIR``  the source model (required with SST);
  ``baseline``         the dedicated layout with the SST modules off.
"""

from __future__ import annotations

import importlib.util
import os

from sst_jax import config_lib

# What the argument takes (config_lib.parse_arg).
ARGS = {'target': str, 'lip': bool, 'with_lip': bool, 'data_dir': str,
        'init_from': str, 'baseline': bool}


def _universal():
  """configs/universal_r101.py, loaded by path (configs/ is not a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      'universal_r101.py')
  spec = importlib.util.spec_from_file_location('_universal_r101', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(arg, ARGS, 'configs/dedicated_r101.py')
  with_lip = ('lip' in args or 'with_lip' in args
              or args.get('target') == 'lip')
  config = _universal().real_config(with_lip)
  # The defaults: the first benchmark, and the base config's fields.
  target = args.get('target', config.domains[0])
  config.data.data_dir = args.get('data_dir', config.data.data_dir)
  if target not in config.domains:
    raise ValueError(f'configs/dedicated_r101.py: target={target!r} is not '
                     f'one of {list(config.domains)}')
  config.parsing = 'dedicated'
  config.target = target
  config.init_from = args.get('init_from', config.init_from)
  config.sst.dedicated_aux_batch = 8
  if 'baseline' in args:
    config_lib.disable_sst(config)
  config.lock()
  return config
