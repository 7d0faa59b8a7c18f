"""The benchmarks' shared parts: config overrides, speed paths, tiny runs."""

import pathlib
import re
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] /
                       'benchmarks'))
import compare_step  # pylint: disable=g-import-not-at-top

import train_step  # pylint: disable=g-import-not-at-top

from sst_jax import config_lib  # pylint: disable=g-import-not-at-top
from sst_jax.models import fast_paths  # pylint: disable=g-import-not-at-top


def test_overrides_are_typed_nested_and_checked():
  config = config_lib.base_config()
  compare_step.apply_overrides(
      config, 'model.edge=True, optim.lr=0.5,model.backbone=resnet18')
  assert config.model.edge is True
  assert config.optim.lr == 0.5
  assert config.model.backbone == 'resnet18'
  compare_step.apply_overrides(
      config, "sst.taps=('res2', 'context', 'decoder'),sst.dim=32")
  assert config.sst.taps == ('res2', 'context', 'decoder')
  assert config.sst.dim == 32
  compare_step.apply_overrides(config, '')  # the unchanged config
  assert config.model.edge is True
  # The speed paths are not config fields.
  with pytest.raises(KeyError, match='model.factored_convs'):
    compare_step.apply_overrides(config, 'model.factored_convs=True')
  with pytest.raises(ValueError, match='key=value'):
    compare_step.apply_overrides(config, 'model.edge')


def test_speed_path_items_choose_the_implementations():
  assert compare_step.split_paths(
      "plain=conv+residual_act,optim.lr=0.5,sst.taps=('a','b')") == (
          "optim.lr=0.5,sst.taps=('a','b')", '', ('conv', 'residual_act'))
  assert compare_step.split_paths('paths_for=gpu', 'cpu', ('conv',)) == (
      '', 'gpu', ('conv',))
  assert compare_step.split_paths('', 'cpu', ('all',)) == ('', 'cpu',
                                                           ('all',))
  plain = fast_paths.Implementations()
  assert train_step.implementations('cpu') == fast_paths.CPU
  assert train_step.implementations('gpu', ['all']) == plain
  mixed = train_step.implementations('cpu', ['residual_act', 'conv'])
  assert mixed.residual_act is plain.residual_act
  assert mixed.conv is plain.conv
  assert mixed.concat_conv is fast_paths.CPU.concat_conv
  with pytest.raises(ValueError, match='unknown speed paths'):
    train_step.implementations('cpu', ['relu'])


def test_compare_step_times_every_variant(capsys):
  compare_step.main([
      '--preset=synthetic', '--width=8', '--context_features=16',
      '--decoder_features=16', '--resolution=32', '--batch=2',
      '--num_devices=1', '--variant=baseline', '--warmup=0', '--rounds=2',
      '--set=plain=concat_conv', '--set='])
  lines = capsys.readouterr().out.splitlines()
  rows = [l for l in lines if re.match(r'\s+[\d.]+ ms', l)]
  assert len(rows) == 2, lines
  assert rows[0].split()[2] == '1.000x'
  assert rows[0].endswith('[plain=concat_conv]')
  assert rows[1].endswith('[unchanged]')


def test_compare_step_forward_times_the_inference_pass(capsys):
  compare_step.main([
      '--preset=synthetic', '--width=8', '--context_features=16',
      '--decoder_features=16', '--resolution=32', '--batch=2',
      '--num_devices=1', '--variant=baseline', '--warmup=0', '--rounds=2',
      '--forward', '--set=plain=residual_act', '--set='])
  lines = capsys.readouterr().out.splitlines()
  assert any(l.startswith('# inference forward,') for l in lines), lines
  rows = [l for l in lines if re.match(r'\s+[\d.]+ ms', l)]
  assert [r.split('[')[-1] for r in rows] == ['plain=residual_act]',
                                              'unchanged]'], lines


def test_count_flops_grows_with_the_image_and_counts_the_backward():
  import count_flops  # pylint: disable=g-import-not-at-top
  import argparse
  parser = argparse.ArgumentParser()
  train_step.add_model_flags(parser)
  counts = {}
  for size in (32, 64):
    args = train_step.apply_preset(parser.parse_args(
        ['--preset=tiny', f'--resolution={size}', '--batch=2']))
    args.num_devices = 0
    counts[size] = count_flops.count(train_step.load_config('baseline', args))
  # A fully convolutional network: 4x the pixels, about 4x the FLOPs.
  assert 3.5 < counts[64]['forward'] / counts[32]['forward'] < 4.5
  # The train step runs the forward, the backward (~2x) and the update.
  assert 2.5 < counts[32]['train'] / counts[32]['forward'] < 4.0


def test_ablation_table_pairs_each_seed_with_the_reference_row():
  import ablation  # pylint: disable=g-import-not-at-top
  rows = [ablation.Row('base', 'baseline'), ablation.Row('sst', 'sst'),
          ablation.Row('learned', 'sst', extra=('sst.intra=learned',),
                       reference='sst')]
  results = {('baseline', 0): {'synthetic_pascal': 0.50},
             ('baseline', 1): {'synthetic_pascal': 0.60},
             ('sst', 0): {'synthetic_pascal': 0.52},
             ('sst', 1): {'synthetic_pascal': 0.64},
             ('sst sst.intra=learned', 0): {'synthetic_pascal': 0.50},
             ('sst sst.intra=learned', 1): {'synthetic_pascal': 0.66}}
  lines = ablation.table(rows, results, [0, 1])
  # Sample standard deviations (ddof 1) of two seeds.
  assert lines[2].startswith('| base (`baseline`) | 0.550 ± 0.071 |')
  # Per-seed differences +0.02 and +0.04: mean +0.030, spread 0.014 (the
  # unpaired spreads, 0.071 and 0.085, would hide it).
  assert lines[3].endswith(
      '| 0.580 ± 0.085 | pascal +0.030 ± 0.014 (against `baseline`) |')
  # A row paired with the reference it names (-0.02 and +0.02 against sst).
  assert lines[4].startswith(
      '| learned (`sst --config.sst.intra=learned`) | 0.580 ± 0.113 | '
      'pascal +0.000 ± 0.028 (against `sst`) |')
  with pytest.raises(ValueError, match='two seeds'):
    ablation.table(rows, results, [0])
  assert set(ablation.GROUPS) == {'universal', 'dedicated', 'scalability',
                                  'low_data'}
  # Every run has its own workdir.
  keys = {row.key for group in ablation.GROUPS.values() for row in group}
  assert len({ablation.workdir_of('/r', k, 0) for k in keys}) == len(keys)
  # Every scalability SST row is paired with the baseline of its domain set.
  for row in ablation.GROUPS['scalability']:
    if row.arg.startswith('sst'):
      assert row.reference.replace('baseline', 'sst') == row.arg or (
          row.arg == 'sst,domains=pascal' and row.reference == 'pascal')
  from configs import synthetic  # every row's config resolves
  for group in ablation.GROUPS.values():
    for row in group:
      config = synthetic.get_config(row.arg)
      compare_step.apply_overrides(config, ','.join(row.extra))
      if row.source:
        config.init_from = ablation.workdir_of('/tmp', row.source, 0)
      config_lib.validate_config(config)
      if row.source:
        synthetic.get_config(row.source)
