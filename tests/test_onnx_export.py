"""ONNX export: ONNX Runtime computes the JAX forward's logits.

Needs the ``[onnx]`` extra (jax2onnx, onnxruntime); skipped without it,
except under CI (which installs it), where a missing piece is an error.
"""

import importlib.util
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sst_jax import export as export_lib
from sst_jax import steps

import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position

SIZE = 32  # tiny.py's data.eval_input_size
# What ONNX Runtime's logits may differ from the JAX forward's by.
ATOL = 1e-4


def test_missing_extra_is_named(tmp_path, monkeypatch, capsys):
  """Without jax2onnx the CLI stops with the extra to install."""
  workdir = str(tmp_path / 'work')
  helpers.write_workdir(workdir, 'baseline')
  monkeypatch.setitem(sys.modules, 'jax2onnx', None)
  status = export_lib.main([f'--workdir={workdir}', f'--output={tmp_path}/e',
                            '--format=onnx'])
  assert status == 2
  err = capsys.readouterr().err
  assert 'pip install "sst_jax[onnx]"' in err
  assert 'pip install --no-deps "jax2onnx' in err
  # Checked before anything is written.
  assert not os.path.exists(tmp_path / 'e')


_MISSING = [m for m in ('jax2onnx', 'onnx', 'onnxruntime')
            if importlib.util.find_spec(m) is None]
if _MISSING and os.environ.get('CI'):
  raise RuntimeError(f'ONNX export test cannot run in CI: {_MISSING} missing '
                     '(pip install "sst_jax[onnx]")')
needs_onnx = pytest.mark.skipif(
    bool(_MISSING), reason=f'{_MISSING} not installed (pip install '
    '"sst_jax[onnx]")')


@pytest.fixture(scope='module')
def onnx_export(tmp_path_factory):
  root = tmp_path_factory.mktemp('onnx')
  workdir, out = str(root / 'work'), str(root / 'export')
  # The universal SST config: the export must drop the SST modules here too.
  _, domains, model, _ = helpers.write_workdir(workdir, seed=5)
  status = export_lib.main([f'--workdir={workdir}', f'--output={out}',
                            '--format=onnx'])
  assert status == 0
  return workdir, out, domains, model


@needs_onnx
def test_onnx_runtime_logits_equal_jax_forward(onnx_export):
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  workdir, out, domains, model = onnx_export
  heads = [d.name for d in domains]
  with open(os.path.join(out, export_lib.META_FILE)) as f:
    forward = json.load(f)['forward']
  assert forward['file'] == export_lib.ONNX_FILE
  assert forward['format'] == 'onnx'
  assert forward['output_names'] == heads
  assert not os.path.exists(os.path.join(out, export_lib.FORWARD_FILE))

  session = ort.InferenceSession(os.path.join(out, export_lib.ONNX_FILE),
                                 providers=['CPUExecutionProvider'])
  (image,) = session.get_inputs()
  # The StableHLO export's contract: a symbolic batch of float32 images.
  assert image.name == 'image'
  assert image.shape == ['b', SIZE, SIZE, 3]
  assert image.type == 'tensor(float)'
  assert [o.name for o in session.get_outputs()] == heads

  _, params, model_state, _ = export_lib.load_checkpoint(workdir)
  variables = steps.parser_variables(params, model_state)
  rng = np.random.default_rng(1)
  for batch in (1, 3):
    x = rng.normal(size=(batch, SIZE, SIZE, 3)).astype(np.float32)
    want = steps.predict_logits(variables, jnp.asarray(x), model=model,
                                heads=tuple(heads))
    got = session.run(None, {'image': x})
    for name, lg in zip(heads, got):
      scale = float(np.abs(want[name]).max())
      diff = float(np.abs(lg - np.asarray(want[name])).max())
      print(f'batch {batch} {name}: max |logit| {scale:.3g}, max abs diff '
            f'{diff:.2e}')
      assert lg.shape == want[name].shape == (batch, SIZE, SIZE,
                                              want[name].shape[-1])
      assert diff <= ATOL
      # The logits are not constant: equality above is informative.
      assert float(np.std(np.asarray(want[name]))) > 100 * ATOL


@needs_onnx
def test_max_pool_rewrite_is_exact():
  """The stem's 3x3/2 max pool (padded), with ties and negative values."""
  from sst_jax import onnx_export  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.default_rng(0).integers(-3, 3, (2, 9, 8, 4)),
                  jnp.float32) - 10.0
  for window, strides, padding in (((1, 3, 3, 1), (1, 2, 2, 1),
                                    ((0, 0), (1, 1), (1, 1), (0, 0))),
                                   ((1, 2, 3, 1), (1, 1, 2, 1),
                                    ((0, 0), (0, 1), (2, 0), (0, 0)))):
    want = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides,
                                 padding)
    got = onnx_export.max_pool_by_slices(
        x, want.shape, window_dimensions=window, window_strides=strides,
        padding=padding, base_dilation=(1,) * 4, window_dilation=(1,) * 4)
    np.testing.assert_array_equal(got, want)
