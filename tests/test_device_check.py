"""benchmarks/device_check.sh: the smoke run, the summary and the MFU peaks."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))
import device_check  # pylint: disable=g-import-not-at-top
import train_step  # pylint: disable=g-import-not-at-top


def test_peaks_match_device_kinds_and_give_mfu():
  peak = train_step.device_peak_flops
  assert peak('NVIDIA H200', 'bfloat16') == 989e12
  assert peak('NVIDIA H100 80GB HBM3', 'bfloat16') == 989e12
  assert peak('NVIDIA H100 PCIe', 'bfloat16') == 756e12
  assert peak('NVIDIA A100-SXM4-80GB', 'bfloat16') == 312e12
  assert peak('TPU v4', 'bfloat16') == 275e12
  assert peak('TPU v5 lite', 'bfloat16') == 197e12
  assert peak('TPU v5', 'bfloat16') == 459e12
  assert peak('TPU v6 lite', 'bfloat16') == 918e12
  for unknown in ('TPU v4 lite', 'NVIDIA H100 NVL', 'cpu', 'TPU7x'):
    assert peak(unknown, 'bfloat16') is None, unknown
  assert peak('TPU v4', 'float32') is None
  rate = train_step.rates(16, 0.5, 1e12, 64e12)
  assert rate['images_per_s'] == 32 and rate['mfu'] == 0.5
  assert train_step.rates(16, 0.5, 1e12, None)['mfu'] is None


def test_summary_marks_timeouts_and_failures(tmp_path):
  (tmp_path / 'steps.tsv').write_text(
      'versions\t0\t1000\t45\tpython versions\n'
      'baseline\t1\t5000\t200\tpython baseline\n'
      'sst\t124\t150000\t150\tpython sst\n'
      'main_job\tnot_run\t0\t0\tno time left\n')
  summary = device_check.summarize(tmp_path, 'device', 160.0, 470.0)
  status = {name: step['status'] for name, step in summary['steps'].items()}
  # versions.json is missing: the step's exit status alone is not enough.
  assert status == {'versions': 'failed', 'baseline': 'failed',
                    'torch': 'failed', 'sst': 'timeout',
                    'main_job': 'not_run'}
  assert summary['steps']['main_job']['note'] == 'no time left'
  assert not summary['passed']
  assert all(t['met'] is None for t in summary['targets'].values())
  assert '| sst | timeout | 150 | 150 |' in device_check.markdown(summary)


def test_smoke_check_runs_every_step(tmp_path):
  pytest.importorskip('torch')
  out = tmp_path / 'check'
  proc = subprocess.run(
      ['bash', str(REPO / 'benchmarks' / 'device_check.sh'), '--smoke',
       str(out)], env=dict(os.environ, PYTHON=sys.executable),
      capture_output=True, text=True, timeout=1200, check=False)
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
  assert '| JAX baseline train step |' in proc.stdout
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['passed'] and summary['mode'] == 'smoke'
  assert {n: s['status'] for n, s in summary['steps'].items()} == dict.fromkeys(
      device_check.STEPS, 'ok')
  for name in ('versions', 'baseline', 'sst', 'main_job'):
    assert json.loads((out / f'{name}.json').read_text())
    assert summary['steps'][name]['seconds'] <= summary['steps'][name][
        'timeout_s']

  r = summary['results']
  for key in ('jax_baseline_train', 'jax_sst_train', 'jax_inference',
              'torch_train', 'torch_inference'):
    assert r[key]['ms_per_step'] > 0 and r[key]['images_per_s'] > 0, key
    assert r[key]['mfu'] is None, key  # no known peak for a CPU
  flops = {k: r[k]['flops_per_image'] for k in r if k.endswith(('train',
                                                               'inference'))}
  assert flops['jax_sst_train'] > flops['jax_baseline_train'] > flops[
      'jax_inference'] > 0
  assert flops['torch_train'] == flops['jax_baseline_train']
  assert r['jax_over_torch']['train_step'] > 0
  assert r['sst_over_baseline_train_step'] > 0

  base = json.loads((out / 'baseline.json').read_text())
  devices = base['device']['count']
  assert base['args']['batch'] == 2 * devices
  assert base['device']['mfu_note']
  torch = base['torch']
  assert (torch['batch'], torch['autocast'], torch['channels_last']) == (
      2, 'bfloat16', True)
  assert torch['params'] == base['baseline']['params']
  if devices == 1:  # Otherwise PyTorch's loss is over one device's images.
    assert torch['first_loss'] == pytest.approx(
        base['baseline']['first_loss'], rel=2e-2)

  job = r['main_job']
  assert job['steps'] == 6
  assert set(job['final_miou']) == {'synthetic_pascal', 'synthetic_cihp'}
  assert 0 <= job['mean_miou'] <= 1
  assert job['wall_s'] > job['loop_s'] > 0 and job['images_per_s'] > 0


def test_flops_counted_on_the_host_cpu_equal_the_lowered_count():
  """The GPU fallback (an unsharded CPU lowering) counts the same FLOPs.

  On a GPU the lowered program has no cost analysis and the count comes
  from the same function lowered for the host CPU; here both exist and must
  agree, for the sharded 8-device train step and the forward.
  """
  import argparse
  import jax
  args = train_step.apply_preset(argparse.Namespace(
      preset='tiny', backbone=None, width=None, output_stride=None,
      context_features=None, decoder_features=None, resolution=None,
      crop_width=None, batch=None, deep_stem=False, paths_for='', plain=[],
      dtype='float32',
      optimizer='sgd', num_devices=0))
  args.batch = 8
  config = train_step.load_config('baseline', args)
  setup = train_step.setup_train_step(config)
  step_args = (setup['state'], setup['batch'])
  lowered = setup['step_fn'].lower(*step_args)
  native = train_step.flops_per_image(lowered, setup['step_fn'], step_args, 8)

  class NoAnalysis:  # what a PJRT plugin backend's lowering gives
    def cost_analysis(self):
      return None

  fallback = train_step.flops_per_image(NoAnalysis(), setup['step_fn'],
                                        step_args, 8)
  assert native > 0 and jax.device_count() == 8
  assert fallback == pytest.approx(native, rel=1e-6)
  forward = train_step.jit_forward(setup)
  fwd_args = (jax.device_put(
      {'params': setup['state'].params['parser'],
       'batch_stats': setup['state'].model_state['batch_stats']},
      setup['replicated']), setup['batch']['image'])
  fwd_native = train_step.flops_per_image(forward.lower(*fwd_args), forward,
                                          fwd_args, 8)
  assert train_step.flops_per_image(NoAnalysis(), forward, fwd_args, 8) == (
      pytest.approx(fwd_native, rel=1e-6))
  assert 2 * fwd_native < native  # the train step also runs the backward
