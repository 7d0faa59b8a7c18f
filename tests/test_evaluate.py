"""``python -m sst_jax.evaluate``: workdir, @step, export, errors, no writes."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

from configs import tiny
import helpers
from sst_jax import evaluate
from sst_jax import export
from sst_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tree_digest(root: pathlib.Path) -> dict:
  """``{relative path: sha256}`` of every file and ``None`` per folder."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for d in dirnames:
      out[os.path.relpath(os.path.join(dirpath, d), root)] = None
    for f in filenames:
      path = os.path.join(dirpath, f)
      with open(path, 'rb') as fh:
        out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
  return out


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A tiny SST run evaluated at steps 2 and 4, and its export."""
  root = tmp_path_factory.mktemp('evaluate')
  workdir, exported = root / 'run', root / 'export'
  config = tiny.get_config('sst')
  with config.unlocked():
    config.total_steps = 4
    config.checkpoint_every = 2
    config.eval_every = 2
    config.keep_checkpoints = 3
    config.async_checkpoints = False
  train.train_and_evaluate(config, str(workdir))
  assert export.main([f'--workdir={workdir}', f'--output={exported}',
                      '--no_serialize']) == 0
  records = [json.loads(l) for l in (workdir / 'metrics.jsonl').open()]
  evals = {r['step']: r for r in records if r['kind'] == 'eval'}
  assert sorted(evals) == [2, 4]
  return config, workdir, exported, evals


def _run(argv, capsys):
  status = evaluate.main(argv)
  out, err = capsys.readouterr()
  return status, out, err


def test_workdir_and_export_score_alike_and_the_workdir_is_unchanged(
    trained, tmp_path, capsys):
  config, workdir, exported, evals = trained
  # Training recorded its resolved config in the workdir.
  assert json.loads((workdir / 'config.json').read_text()) == json.loads(
      config.to_json_best_effort())
  before = _tree_digest(workdir)
  reports = {}
  for name, model in (('workdir', workdir), ('export', exported)):
    output = tmp_path / f'{name}.json'
    status, out, err = _run([f'--model={model}', f'--output={output}'],
                            capsys)
    assert status == 0, err
    reports[name] = json.loads(output.read_text())
    # Per domain, the per-class table and the summary table.
    for domain in ('synthetic_pascal', 'synthetic_cihp'):
      assert f'{domain} (validation, 8 images), {model} step 4' in out
    assert '| class ' in out and '| aAcc ' in out
    assert out.count('| head ') == 1  # a synthetic_pascal class
  a, b = reports['workdir'], reports['export']
  assert a['domains'] == b['domains']
  assert a['step'] == b['step'] == 4
  assert (a['model']['kind'], b['model']['kind']) == ('workdir', 'export')
  assert b['model']['workdir'] == str(workdir)
  assert a['test_time'] == {'flip': False, 'scales': [1.0], 'average': None,
                            'input_size': 32, 'label_size': 32,
                            'preprocessing': 'imagenet'}
  assert a['sst_jax_version'] == b['sst_jax_version']
  pascal = a['domains']['synthetic_pascal']
  assert [c['name'] for c in pascal['classes']][:2] == ['background', 'head']
  # The numbers are those training's own evaluation of step 4 recorded.
  for domain, scores in a['domains'].items():
    recorded = evals[4][domain]
    assert scores['miou'] == pytest.approx(recorded['miou'], abs=1e-12)
    assert [c['iou'] for c in scores['classes']] == [
        recorded['iou_by_class'][c['name']] for c in scores['classes']]

  # --config.mode=eval is the same evaluation, and writes nothing either.
  with config.unlocked():
    config.mode = 'eval'
  again = train.train_and_evaluate(config, str(workdir))
  assert again == a['domains']
  assert _tree_digest(workdir) == before


def test_step_selection_through_the_command_line(trained, tmp_path):
  _, workdir, _, _ = trained
  output = tmp_path / 'step2.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'sst_jax.evaluate', f'--model={workdir}@2',
       f'--output={output}', '--domains=synthetic_cihp', '--flip'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert f'synthetic_cihp (validation, 8 images), {workdir} step 2' in (
      proc.stdout)
  report = json.loads(output.read_text())
  assert report['step'] == report['model']['step'] == 2
  assert list(report['domains']) == ['synthetic_cihp']
  assert report['test_time']['flip'] and report['test_time']['average'] == (
      'probs')
  # Flip TTA scores every pixel of the same images.
  assert report['domains']['synthetic_cihp']['num_images'] == 8
  assert 0.0 <= report['domains']['synthetic_cihp']['miou'] <= 1.0
  assert f'wrote {output}' in proc.stdout


def test_step_selection_scores_that_checkpoint(trained, tmp_path, capsys):
  _, workdir, _, evals = trained
  output = tmp_path / 'step2.json'
  status, _, err = _run([f'--model={workdir}@2', f'--output={output}'],
                        capsys)
  assert status == 0, err
  report = json.loads(output.read_text())
  for domain, scores in report['domains'].items():
    assert scores['miou'] == pytest.approx(evals[2][domain]['miou'],
                                           abs=1e-12)


@pytest.mark.parametrize('model, message', [
    ('{root}/missing', 'no such file or directory'),
    ('{root}', 'not a training workdir (no checkpoints/), an export '
     'directory (no export.json) or an SCHP checkpoint file'),
    ('{workdir}@7', 'no checkpoint at step 7 in {workdir}/checkpoints (steps '
     'there: 2, 4)'),
    ('{exported}@2', '@step selects a checkpoint of a training workdir, but '
     '{exported} is an export directory'),
    ('{workdir}/config.json', 'an SCHP checkpoint needs its domain'),
])
def test_bad_model_is_refused_by_name(trained, tmp_path, capsys, model,
                                      message):
  _, workdir, exported, _ = trained
  names = dict(root=tmp_path, workdir=workdir, exported=exported)
  model = model.format(**names)
  status, out, err = _run([f'--model={model}'], capsys)
  assert status == 2 and not out
  assert err.startswith(f'error: --model {model}: ')
  assert message.format(**names) in err


def test_other_bad_input_is_refused(trained, capsys):
  _, workdir, _, _ = trained
  status, _, err = _run([f'--model={workdir}', '--domains=synthetic_lip'],
                        capsys)
  assert status == 2
  assert ("unknown domain 'synthetic_lip'; " f'{workdir} has: '
          'synthetic_pascal, synthetic_cihp') in err
  before = (workdir / 'metrics.jsonl').read_bytes()
  status, _, err = _run([f'--model={workdir}',
                         f'--output={workdir}/metrics.jsonl'], capsys)
  assert status == 2 and 'is a file of the workdir' in err
  assert (workdir / 'metrics.jsonl').read_bytes() == before
  status, _, err = _run([], capsys)
  assert status == 2 and '--model is required' in err
  status, _, err = _run([f'--model={workdir}', '--scales=1,big'], capsys)
  assert status == 2 and "--scales: expected comma-separated numbers, got " \
      "'1,big'" in err


def test_schp_checkpoint_is_scored_with_schp_preprocessing(tmp_path, capsys):
  """An SCHP-layout state dict (tiny widths, random) evaluates via --model."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sst_jax import steps  # pylint: disable=g-import-not-at-top
  from sst_jax.models import layers  # pylint: disable=g-import-not-at-top
  from sst_jax.models import pretrained  # pylint: disable=g-import-not-at-top
  path = helpers.fake_schp_npz(tmp_path / 'schp.npz', 'synthetic_pascal')
  rng = np.random.default_rng(0)

  # The evaluation input (ImageNet-normalized RGB) becomes SCHP's own.
  model = evaluate.load_model(str(path), 'synthetic_pascal')
  pixels = rng.integers(0, 256, (1, 32, 32, 3)).astype(np.uint8)
  got, _ = model.module.apply(model.variables, steps.normalize_images(pixels),
                              heads=('synthetic_pascal',))
  logits, _ = model.module.module.apply(
      model.variables, pretrained.schp_preprocess(pixels[0])[None],
      train=False, heads=('synthetic_pascal',))
  want = layers.resize_bilinear(logits['synthetic_pascal'], (32, 32),
                                align_corners=True)
  np.testing.assert_allclose(np.asarray(got['synthetic_pascal']),
                             np.asarray(jax.device_get(want)), rtol=1e-4,
                             atol=1e-4)

  output = tmp_path / 'schp.json'
  status, out, err = _run([f'--model={path}', '--schp_domain=synthetic_pascal',
                           f'--config={REPO / "configs" / "tiny.py"}',
                           f'--output={output}'], capsys)
  assert status == 0, err
  assert f'synthetic_pascal (validation, 8 images), {path}, flip' in out
  report = json.loads(output.read_text())
  assert report['model'] == {'kind': 'schp', 'path': str(path), 'step': None,
                             'domain': 'synthetic_pascal'}
  assert report['test_time']['preprocessing'] == 'schp'
  assert len(report['domains']['synthetic_pascal']['classes']) == 7
