"""The interleaved step comparison: config overrides and one tiny run."""

import pathlib
import re
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] /
                       'benchmarks'))
import compare_step  # pylint: disable=g-import-not-at-top

from sst_jax import config_lib  # pylint: disable=g-import-not-at-top


def test_overrides_are_typed_nested_and_checked():
  config = config_lib.base_config()
  compare_step.apply_overrides(
      config, 'model.factored_convs=False, optim.lr=0.5,model.backbone=resnet18')
  assert config.model.factored_convs is False
  assert config.optim.lr == 0.5
  assert config.model.backbone == 'resnet18'
  compare_step.apply_overrides(
      config, "sst.scales=('res2', 'decoder'),sst.dim=32")
  assert config.sst.scales == ('res2', 'decoder')
  assert config.sst.dim == 32
  compare_step.apply_overrides(config, '')  # the unchanged config
  assert config.model.factored_convs is False
  with pytest.raises(KeyError, match='model.factored'):
    compare_step.apply_overrides(config, 'model.factored=True')
  with pytest.raises(ValueError, match='key=value'):
    compare_step.apply_overrides(config, 'model.factored_convs')


def test_compare_step_times_every_variant(capsys):
  compare_step.main([
      '--preset=synthetic', '--width=8', '--context_features=16',
      '--decoder_features=16', '--resolution=32', '--batch=2',
      '--num_devices=1', '--variant=baseline', '--warmup=0', '--rounds=2',
      '--set=model.factored_convs=False', '--set='])
  lines = capsys.readouterr().out.splitlines()
  rows = [l for l in lines if re.match(r'\s+[\d.]+ ms', l)]
  assert len(rows) == 2, lines
  assert rows[0].split()[2] == '1.000x'
  assert rows[0].endswith('[model.factored_convs=False]')
  assert rows[1].endswith('[unchanged]')


def test_compare_step_forward_times_the_inference_pass(capsys):
  compare_step.main([
      '--preset=synthetic', '--width=8', '--context_features=16',
      '--decoder_features=16', '--resolution=32', '--batch=2',
      '--num_devices=1', '--variant=baseline', '--warmup=0', '--rounds=2',
      '--forward', '--set=model.residual_relu=max', '--set='])
  lines = capsys.readouterr().out.splitlines()
  assert any(l.startswith('# inference forward,') for l in lines), lines
  rows = [l for l in lines if re.match(r'\s+[\d.]+ ms', l)]
  assert [r.split('[')[-1] for r in rows] == ['model.residual_relu=max]',
                                              'unchanged]'], lines


def test_count_flops_grows_with_the_image_and_counts_the_backward():
  import count_flops  # pylint: disable=g-import-not-at-top
  import train_step  # pylint: disable=g-import-not-at-top
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
  rows = [('base', 'baseline'), ('sst', 'sst')]
  results = {('baseline', 0): {'synthetic_pascal': 0.50},
             ('baseline', 1): {'synthetic_pascal': 0.60},
             ('sst', 0): {'synthetic_pascal': 0.52},
             ('sst', 1): {'synthetic_pascal': 0.64}}
  lines = ablation.table(rows, results, [0, 1])
  assert lines[2].startswith('| base (`baseline`) | 0.550 ± 0.050 |')
  # Per-seed differences +0.02 and +0.04: mean +0.030, spread 0.010 (the
  # unpaired spreads, 0.050 and 0.060, would hide it).
  assert lines[3].endswith('| 0.580 ± 0.060 | pascal +0.030 ± 0.010 |')
  assert set(ablation.GROUPS) == {'universal', 'scalability', 'low_data'}
  from configs import synthetic  # every row's config resolves
  for group in ablation.GROUPS.values():
    for _, arg in group:
      synthetic.get_config(arg)
