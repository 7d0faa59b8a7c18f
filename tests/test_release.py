"""Release hygiene: format numbers in checkpoints and exports, packaging.

A checkpoint or export of another format number is refused with a message
naming the file and both numbers; the declared Python versions, extras,
constraints and license are what CI and users rely on.
"""

import configparser
import json
import os
import re
import sys

import pytest

import sst_jax
from sst_jax import api
from sst_jax import checkpointing
from sst_jax import export as export_lib
from sst_jax import predict

import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.join(os.path.dirname(__file__), '..')


def _setup_cfg() -> configparser.ConfigParser:
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, 'setup.cfg'))
  return cfg


def _lines(value: str) -> list[str]:
  return [v.strip() for v in value.strip().splitlines() if v.strip()]


def _name(requirement: str) -> str:
  name = re.split(r'[\s\[<>=!~;]', requirement, maxsplit=1)[0]
  return re.sub(r'[-_.]+', '-', name).lower()


def _format_2(meta):
  return {**meta, 'format': 2, 'sst_jax_version': '9.0.0'}


def test_other_checkpoint_format_is_refused_by_every_reader(tmp_path,
                                                            capsys):
  workdir = str(tmp_path / 'work')
  helpers.write_workdir(workdir, 'baseline', edit_metadata=_format_2)
  with pytest.raises(checkpointing.CheckpointFormatError) as e:
    checkpointing.open_latest(workdir)
  message = str(e.value)
  assert os.path.join(workdir, 'checkpoints', '3') in message
  assert 'checkpoint format 2 (written by sst_jax 9.0.0)' in message
  assert (f'reads checkpoint format {checkpointing.CHECKPOINT_FORMAT} only'
          in message)
  with pytest.raises(checkpointing.CheckpointFormatError):
    api.Parser.load(workdir)
  with pytest.raises(checkpointing.CheckpointFormatError):
    export_lib.load_model(workdir)
  assert export_lib.main([f'--workdir={workdir}',
                          f'--output={tmp_path / "e"}']) == 2
  assert 'checkpoint format 2' in capsys.readouterr().err
  (tmp_path / 'img.png').write_bytes(b'not read')
  assert predict.main([f'--model={workdir}', f'--input={tmp_path}/img.png',
                       f'--output={tmp_path / "p"}']) == 2
  assert 'checkpoint format 2' in capsys.readouterr().err


def test_checkpoint_without_format_field_is_format_1(tmp_path):
  workdir = str(tmp_path / 'work')

  def drop(meta):
    return {k: v for k, v in meta.items()
            if k not in ('format', 'sst_jax_version')}

  helpers.write_workdir(workdir, 'baseline', edit_metadata=drop)
  info = export_lib.export(workdir, str(tmp_path / 'e'), serialize=False)
  assert info['source']['checkpoint_format'] == 1


def test_export_records_versions_and_refuses_other_format(tmp_path):
  workdir, out = str(tmp_path / 'work'), str(tmp_path / 'e')
  helpers.write_workdir(workdir, 'baseline')
  export_lib.export(workdir, out, serialize=False)
  path = os.path.join(out, export_lib.META_FILE)
  with open(path) as f:
    info = json.load(f)
  assert info['format_version'] == export_lib.FORMAT_VERSION
  assert info['sst_jax_version'] == sst_jax.__version__
  assert info['source']['checkpoint_format'] == (
      checkpointing.CHECKPOINT_FORMAT)
  export_lib.load_exported(out)
  with open(path, 'w') as f:
    json.dump({**info, 'format_version': 2, 'sst_jax_version': '9.0.0'}, f)
  with pytest.raises(export_lib.ExportFormatError) as e:
    export_lib.load_exported(out)
  assert path in str(e.value)
  assert 'export format 2 (written by sst_jax 9.0.0)' in str(e.value)
  assert f'reads export format {export_lib.FORMAT_VERSION} only' in str(
      e.value)
  with pytest.raises(export_lib.ExportFormatError):
    api.Parser.load(out)


def test_python_versions_declared_and_this_one_among_them():
  cfg = _setup_cfg()
  minimum = cfg['options']['python_requires'].strip()
  assert minimum == '>=3.11'
  declared = re.findall(r'Programming Language :: Python :: (3\.\d+)$',
                        cfg['metadata']['classifiers'], re.M)
  assert declared == ['3.11', '3.12', '3.13']
  assert f'{sys.version_info[0]}.{sys.version_info[1]}' in declared


def test_extras_license_changelog():
  cfg = _setup_cfg()
  extras = cfg['options.extras_require']
  for name in ('cuda12', 'tpu', 'tf', 'gcs', 'onnx', 'test', 'torch',
               'safetensors', 'schp'):
    assert _lines(extras[name]), name
  assert _lines(extras['cuda12']) == ['jax[cuda12]']
  assert _lines(extras['tpu']) == ['jax[tpu]']
  with open(os.path.join(ROOT, 'LICENSE')) as f:
    license_text = f.read()
  assert 'Apache License' in license_text and 'Version 2.0' in license_text
  assert cfg['metadata']['license'].strip() == 'Apache-2.0'
  with open(os.path.join(ROOT, 'CHANGELOG.md')) as f:
    changelog = f.read()
  assert re.search(rf'^## {re.escape(sst_jax.__version__)}$', changelog,
                   re.M)


def test_constraints_pin_what_ci_installs_and_ci_uses_them():
  cfg = _setup_cfg()
  with open(os.path.join(ROOT, 'constraints.txt')) as f:
    pins = dict(_pin(line) for line in f if line.strip() and
                not line.startswith('#'))
  extras = cfg['options.extras_require']
  wanted = _lines(cfg['options']['install_requires'])
  for extra in ('test', 'torch', 'safetensors', 'schp', 'onnx'):
    wanted += _lines(extras[extra])
  missing = [r for r in wanted if _name(r) not in pins]
  assert not missing, f'not pinned in constraints.txt: {missing}'
  for extra_package in ('schp', 'jax2onnx'):  # installed --no-deps by CI
    assert extra_package in pins
  assert 'sst-jax' not in pins
  # A local build label (torch's +cpu) is not on package indexes.
  assert not [v for v in pins.values() if '+' in v]
  with open(os.path.join(ROOT, '.ci', 'run')) as f:
    ci = f.read().replace('\\\n', ' ')
  installs = [line for line in ci.splitlines()
              if 'pip install' in line and '--upgrade pip' not in line]
  assert len(installs) >= 4
  for line in installs:
    assert '-c constraints.txt' in line, line
  assert '.[test,torch,safetensors,schp,onnx]' in ci


def _pin(line: str) -> tuple[str, str]:
  name, version = line.strip().split('==')
  return _name(name), version
