"""``sst_jax/config_lib.py``: the argument parser, checks, batch composition.

(Every file in configs/ loading and building: tests/test_real_configs.py.)
"""

import pathlib

import pytest

import helpers
from sst_jax import config_lib

TINY = pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'tiny.py'

# Dedicated parsing's source workdir: the config functions only name it.
SOURCE = '/source_workdir'


def _dedicated(init_from, **overrides):
  return helpers.tiny_config('dedicated', init_from=init_from,
                             **{'sst.dedicated_aux_batch': 8, **overrides})


def test_argument_parser_types_and_domains():
  known = {'flag': bool, 'name': str, 'count': int, 'either': str | None}
  domains = ['synthetic_pascal', 'synthetic_cihp']
  args = config_lib.parse_arg(' count=3, flag ,name=a=b,either', known,
                              'f.py', domains)
  assert args == {'count': 3, 'flag': True, 'name': 'a=b', 'either': None}
  assert list(args) == ['count', 'flag', 'name', 'either']
  assert config_lib.parse_arg('either=x,pascal', known, 'f.py', domains) == {
      'either': 'x', 'domain': 'pascal'}
  assert config_lib.parse_arg(None, known, 'f.py') == {}
  for arg, match in (('count=x', 'not an integer'),
                     ('name', 'needs a value'),
                     ('lip', r"unknown argument 'lip'.*flag, name=<str>, "
                      r'count=<int>, either\[=<str>\] or a domain of'),
                     ('pascal', 'unknown argument')):
    with pytest.raises(ValueError, match=match):
      config_lib.parse_arg(arg, known, 'f.py',
                           domains if arg != 'pascal' else ())


def test_every_batch_holds_the_target_then_each_source_domain():
  config = _dedicated(SOURCE)
  with config.unlocked():
    config.domains = ['synthetic_pascal', 'synthetic_cihp', 'synthetic_atr']
  assert config_lib.batch_groups(config, {}) == [
      ({'synthetic_pascal': 1.0}, 8), ({'synthetic_cihp': 1.0}, 4),
      ({'synthetic_atr': 1.0}, 4)]
  assert config_lib.global_batch_size(config) == 16


def test_dedicated_settings_are_checked():
  config = _dedicated('')
  with pytest.raises(ValueError, match='config.init_from'):
    config_lib.validate_config(config)
  config = _dedicated(SOURCE, **{'sst.dedicated_aux_batch': 0})
  with pytest.raises(ValueError, match='dedicated_aux_batch'):
    config_lib.validate_config(config)
  plain = helpers.tiny_config('finetune', init_from=SOURCE)
  config_lib.validate_config(plain)
  assert not config_lib.dedicated_source(plain)
  assert config_lib.batch_groups(plain, {'synthetic_cihp': 0.0}) == [
      ({'synthetic_pascal': 1.0}, 8)]


@pytest.mark.parametrize('field,bad,message', [
    ('mode', 'predict', "config.mode must be 'train' or 'eval'"),
    ('parsing', 'both', "config.parsing must be 'universal' or 'dedicated'"),
    ('dtype', 'float16', "config.dtype must be 'float32' or 'bfloat16'"),
    ('cpu_devices', -1, 'config.cpu_devices must be >= 0'),
    ('optim.name', 'lamb', "config.optim.name must be 'sgd' or 'adamw'"),
    ('optim.schedule', 'step', 'config.optim.schedule must be'),
    ('data.crop_width', -8, 'config.data.crop_width >= 0'),
    ('data.mix', {'synthetic_lip': 1.0},
     r"config.data.mix names domains not in config.domains: \['synthetic_lip'"),
    ('data.mix', {'synthetic_pascal': 0.0, 'synthetic_cihp': 0.0},
     'config.data.mix gives every domain weight 0'),
    ('sst.taps', ('context', 'decoder'), 'config.sst.taps'),
    ('sst.intra', 'identity', "config.sst.intra must be 'adjacency' or"),
    ('sst.mst_stop_gradient', 'both', 'config.sst.mst_stop_gradient'),
])
def test_every_config_value_is_checked_in_one_place(field, bad, message):
  """validate_config refuses a bad value, naming the field."""
  config = helpers.tiny_config('sst')
  config_lib.validate_config(config)
  with pytest.raises(ValueError, match=message):
    config_lib.validate_config(helpers.tiny_config('sst', **{field: bad}))


@pytest.mark.parametrize('flag', [
    '--config.data.final_crop_size=128', '--config.data.final_crop_steps=10',
    '--config.data.batching=per_domain', '--config.optim.restart_steps=10',
    '--config.optim.restart_lr=0.001', '--config.optim.restart_warmup_steps=1',
    '--config.optim.nesterov=True', '--config.optim.decay_all=True',
    '--config.optim.end_lr_factor=0.1', '--config.optim.grad_clip_norm=1.0',
    '--config.sst.fixed_batch=False'])
def test_removed_options_are_refused_naming_them(flag):
  """An unknown (e.g. removed) config key fails on the command line."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=values,
                                  lock_config=True)
  key = flag[2:].split('=')[0]
  with pytest.raises(flags.Error, match=f"Unknown command line flag '{key}'"):
    values(['main', f'--config={TINY}', flag])


def test_removed_variant_is_refused_naming_it():
  with pytest.raises(ValueError, match="unknown argument 'msa_mst'"):
    helpers.tiny_config('msa_mst')
