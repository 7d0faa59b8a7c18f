"""Workdir paths through ``etils.epath``: ``gs://`` workdirs, ``config.json``.

There is no network here: a ``gs://bucket/...`` path is served from a local
folder by ``etils.epath.testing.mock_epath`` (``fake_gcs``), which sees every
file operation made through ``epath``. Code that used ``os.path`` or
``open`` on such a path instead would create a folder named ``gs:`` in the
current directory or fail to find the file.
"""

import contextlib
import json
import os
import sys

from etils import epath
from etils.epath import testing as epath_testing
import numpy as np
import pytest

import helpers
from configs import tiny
from sst_jax import api
from sst_jax import checkpointing
from sst_jax import export
from sst_jax import train
from sst_jax import visualize
from sst_jax import writers

_BACKEND_FNS = ('copy', 'exists', 'glob', 'isdir', 'listdir', 'makedirs',
                'mkdir', 'open', 'remove', 'rename', 'replace', 'rmtree',
                'stat', 'walk')


@contextlib.contextmanager
def fake_gcs(root):
  """``gs://<bucket>/<key>`` is ``<root>/<bucket>/<key>`` for ``epath``."""

  def local(path):
    path = os.fspath(path)
    return (os.path.join(root, path[len('gs://'):]) if path.startswith('gs://')
            else path)

  def mocked(name):
    def fn(original, path, *args, **kwargs):
      if name in ('copy', 'rename', 'replace'):
        args = (local(args[0]),) + args[1:]
      return original(local(path), *args, **kwargs)
    return fn

  with epath_testing.mock_epath(**{n: mocked(n) for n in _BACKEND_FNS}):
    yield


@pytest.fixture
def gcs(tmp_path, monkeypatch):
  """The fake bucket's folder; the test runs in an empty current folder."""
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  # tensorboardX would upload gs:// events with google-cloud-storage (over
  # the network); without it the writer keeps metrics.jsonl only.
  monkeypatch.setitem(sys.modules, 'tensorboardX', None)
  with fake_gcs(tmp_path / 'gcs'):
    yield tmp_path / 'gcs'
  assert not os.listdir(cwd), 'a gs:// path was used as a local path'


def test_metrics_config_and_pictures_reach_a_gs_workdir(gcs):
  workdir = 'gs://bucket/run'
  metrics = gcs / 'bucket' / 'run' / 'metrics.jsonl'
  writer = writers.MetricWriter(workdir)
  writer.write(1, 'train', {'loss': 1.5})
  writer.flush()
  assert [json.loads(l)['step'] for l in metrics.read_text().splitlines()] == [
      1]
  writer.write(2, 'train', {'loss': 1.25})
  writer.close()
  writer.close()  # a second close does nothing
  # A resumed run adds to the object instead of replacing it.
  writer = writers.MetricWriter(workdir)
  writer.write(3, 'eval', {'synthetic_pascal': {'miou': 0.5}})
  writer.close()
  records = [json.loads(l) for l in metrics.read_text().splitlines()]
  assert [(r['step'], r['kind']) for r in records] == [
      (1, 'train'), (2, 'train'), (3, 'eval')]

  config = tiny.get_config('baseline')
  written = train.write_config_json(config, workdir, 0)
  assert str(written) == f'{workdir}/config.json'
  saved = (gcs / 'bucket' / 'run' / 'config.json').read_text()
  assert json.loads(saved) == json.loads(config.to_json_best_effort())
  assert train.write_config_json(config, workdir, 6) is None  # same config
  with config.unlocked():
    config.total_steps = 12
  written = train.write_config_json(config, workdir, 6)
  assert str(written) == f'{workdir}/config.6.json'
  assert (gcs / 'bucket' / 'run' / 'config.json').read_text() == saved
  assert json.loads((gcs / 'bucket' / 'run' / 'config.6.json').read_text())[
      'total_steps'] == 12

  visualize.save_png(f'{workdir}/predictions/step_0000003.png',
                     np.zeros((4, 6, 3), np.uint8))
  assert (gcs / 'bucket' / 'run' / 'predictions' / 'step_0000003.png'
          ).read_bytes().startswith(b'\x89PNG')


def test_export_and_parser_load_on_gs(gcs, tmp_path):
  workdir = tmp_path / 'run'
  helpers.write_workdir(str(workdir), 'baseline')
  info = export.export(str(workdir), 'gs://bucket/export', serialize=False)
  assert (gcs / 'bucket' / 'export' / export.META_FILE).is_file()
  _, variables, loaded = export.load_exported('gs://bucket/export')
  assert loaded == json.loads(json.dumps(info))
  assert loaded['config']['total_steps'] == tiny.get_config().total_steps
  _, params, _, _ = export.load_checkpoint(str(workdir))
  np.testing.assert_array_equal(
      variables['params']['head_synthetic_pascal']['kernel'],
      params['parser']['head_synthetic_pascal']['kernel'])
  parser = api.Parser.load('gs://bucket/export')
  assert parser.domains == ('synthetic_pascal', 'synthetic_cihp')
  with pytest.raises(FileNotFoundError, match='is not a training workdir'):
    checkpointing.open_latest('gs://bucket/export')
  with pytest.raises(FileNotFoundError, match='not a training workdir'):
    api.Parser.load('gs://bucket/nothing')
  assert epath.Path('gs://bucket/export/params.npz').exists()


@pytest.mark.parametrize('ext', ['npz', 'safetensors', 'pth'])
def test_weight_files_are_read_from_gs(gcs, ext):
  from sst_jax.models import pretrained  # pylint: disable=g-import-not-at-top
  weights = {'conv1.weight': np.arange(24, dtype=np.float32).reshape(2, 3, 4),
             'bn1.running_mean': np.ones(2, np.float32)}
  local = gcs / 'bucket' / f'weights.{ext}'
  local.parent.mkdir(parents=True)
  if ext == 'npz':
    np.savez(local, **weights)
  elif ext == 'safetensors':
    st_numpy = pytest.importorskip('safetensors.numpy')
    st_numpy.save_file(weights, str(local))
  else:
    torch = pytest.importorskip('torch')
    torch.save({'state_dict': {f'module.{k}': torch.from_numpy(v)
                               for k, v in weights.items()}}, local)
  read = pretrained.load_torch_state_dict(f'gs://bucket/weights.{ext}')
  assert sorted(read) == sorted(weights)
  for name, value in weights.items():
    np.testing.assert_array_equal(read[name], value)
  with pytest.raises(FileNotFoundError, match='gs://bucket/missing.npz'):
    pretrained.load_torch_state_dict('gs://bucket/missing.npz')
