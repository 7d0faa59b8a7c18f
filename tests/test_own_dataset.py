"""A user's own dataset, step by step as docs/datasets.md "Your own dataset".

The config is the one the doc shows (read from docs/datasets.md), so the doc
and the workflow cannot drift apart: a folder of random images and label
PNGs is built with the doc's command, trained for two steps with a tiny
model together with a synthetic domain, and the workdir is then loaded,
used and scored in a fresh process that never registered the domain.
"""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image
import pytest

from sst_jax import domains as domains_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / 'docs' / 'datasets.md'
CLASSES = ('background', 'hair', 'face', 'upper-clothes', 'pants',
           'left-arm', 'right-arm', 'left-shoe', 'right-shoe')


def doc_config() -> str:
  """The config file of the doc's section (its block that registers)."""
  section = DOC.read_text().split('## Your own dataset', 1)[1]
  section = section.split('\n## ', 1)[0]
  blocks = [b for b in re.findall(r'```python\n(.*?)```', section, re.S)
            if 'domains.register(' in b]
  assert len(blocks) == 1, 'the doc shows one config that registers'
  return blocks[0]


def write_folder(root: pathlib.Path, rng) -> None:
  """Step 1: random images (JPEG and PNG) and index-map label PNGs."""
  for split, count in (('train', 6), ('validation', 2)):
    for folder in ('images', 'labels'):
      (root / split / folder).mkdir(parents=True)
    for i in range(count):
      h, w = (int(v) for v in rng.integers(28, 48, 2))
      image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
      label = rng.integers(0, len(CLASSES), (h, w), dtype=np.uint8)
      label[:2] = 255  # an unlabelled band
      suffix = '.png' if i % 3 == 2 else '.jpg'
      Image.fromarray(image).save(root / split / 'images' / f'{split}{i}'
                                  f'{suffix}')
      Image.fromarray(label, mode='L').save(root / split / 'labels' /
                                            f'{split}{i}.png')


def run(args, cwd=ROOT, timeout=120):
  env = dict(os.environ, PYTHONPATH=os.fspath(ROOT))
  result = subprocess.run([sys.executable, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result.stdout


def load_config_file(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location('_own_dataset_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny(config, data_dir):
  """The doc's config at test size; the benchmarks swapped for a synthetic
  domain (the doc's "without downloading them")."""
  with config.unlocked():
    config.domains = ['synthetic_pascal', 'mydata']
    config.data.tfds_names = {}
    config.data.data_dir = os.fspath(data_dir)
    config.total_steps = 2
    config.batch_size = 4
    config.num_devices = 1
    config.log_every = 1
    config.eval_every = 2
    config.checkpoint_every = 2
    config.async_checkpoints = False
    config.model.backbone = 'resnet_tiny'
    config.model.width = 8
    config.model.context_features = 16
    config.model.decoder_features = 16
    config.model.psp_bins = (1, 2)
    config.optim.warmup_steps = 1
    config.data.synthetic_size = 32
    config.data.synthetic_examples = {'synthetic_pascal:train': 4,
                                      'synthetic_pascal:validation': 2}
    config.data.crop_size = 32
    config.data.eval_input_size = 32
    config.data.eval_label_size = 48
    config.data.num_threads = 1
    config.eval.batch_size = 2
    config.eval.flip = False
    config.eval.num_vis = 1
    config.sst.dim = 8
  return config


# In a fresh process (nothing registers 'mydata' there): load the workdir,
# parse an image, score the built validation split without --config.
_FRESH = textwrap.dedent('''
    import json, sys
    import numpy as np
    import sst_jax
    from sst_jax import domains, evaluate
    workdir, image = sys.argv[1:3]
    assert 'mydata' not in domains.DOMAINS
    parser = sst_jax.Parser.load(workdir, domain='mydata')
    ids = parser.parse(image)
    mydata = parser.label_domains['mydata']
    status = evaluate.main([f'--model={workdir}', '--domains=mydata',
                            f'--output={workdir}_scores.json'])
    print(json.dumps({
        'domains': list(parser.domains), 'classes': list(mydata.classes),
        'flip_pairs': [list(p) for p in mydata.flip_pairs],
        'shape': list(ids.shape), 'max_id': int(ids.max()),
        'status': status}))
''')


def test_own_dataset_builds_trains_and_loads_without_registration(
    tmp_path, monkeypatch):
  pytest.importorskip('tensorflow_datasets')
  # The config registers 'mydata' in this process: undone afterwards.
  monkeypatch.setattr(domains_lib, 'DOMAINS', dict(domains_lib.DOMAINS))
  config_file = tmp_path / 'mydata.py'
  config_file.write_text(doc_config())
  raw, data_dir = tmp_path / 'raw' / 'mydata', tmp_path / 'tfds'
  write_folder(raw, np.random.default_rng(0))

  # Step 3, the doc's command, from the repository root.
  out = run(['-m', 'datasets.folder', os.fspath(config_file),
             f'--manual_dir={raw}', f'--data_dir={data_dir}'])
  assert 'built mydata (train 6, validation 2 examples)' in out
  built = data_dir / 'mydata' / 'strict' / '1.0.0'
  assert sorted(p.name.split('.')[0] for p in built.glob('*.array_record*')
                ) == ['mydata-train', 'mydata-validation']
  meta = json.loads((built / 'metadata.json').read_text())
  assert meta == {'domain': 'mydata', 'classes': list(CLASSES)}

  # Step 2: the config registers the domain as declared.
  module = load_config_file(config_file)
  assert domains_lib.get_domain('mydata') == module.MYDATA
  assert module.MYDATA.flip_pairs == ((5, 6), (7, 8))
  config = module.get_config(f'data_dir={data_dir}')
  assert list(config.domains) == ['pascal_person_part', 'atr', 'cihp',
                                  'mydata']
  assert config.data.data_dir == os.fspath(data_dir) and config.sst.enabled
  dedicated = module.get_config(f'dedicated=mydata,data_dir={data_dir}')
  assert dedicated.parsing == 'dedicated' and dedicated.target == 'mydata'

  # The built examples read back through training's source.
  from sst_jax.data import sources  # pylint: disable=g-import-not-at-top
  source = sources.make_source('mydata', 'validation', config.data)
  assert len(source) == 2 and source.domain == module.MYDATA
  record = source[0]
  assert record['image'].shape[:2] == record['label'].shape
  assert set(np.unique(record['label'])) <= set(range(len(CLASSES))) | {255}

  # Step 4: universal SST, mydata together with a synthetic domain.
  from sst_jax import train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'work'
  results = train.train_and_evaluate(tiny(config, data_dir), str(workdir))
  assert sorted(results) == ['mydata', 'synthetic_pascal']
  assert 0.0 <= results['mydata']['miou'] <= 1.0
  assert (workdir / 'checkpoints' / '2').is_dir()

  # The model, in a process that never registered the domain.
  image = tmp_path / 'photo.jpg'
  Image.fromarray(np.random.default_rng(1).integers(
      0, 256, (41, 29, 3), dtype=np.uint8)).save(image)
  fresh = json.loads(run(['-c', _FRESH, os.fspath(workdir),
                          os.fspath(image)]).strip().splitlines()[-1])
  assert fresh == {'domains': ['synthetic_pascal', 'mydata'],
                   'classes': list(CLASSES), 'flip_pairs': [[5, 6], [7, 8]],
                   'shape': [41, 29], 'max_id': fresh['max_id'], 'status': 0}
  assert fresh['max_id'] < len(CLASSES)
  scores = json.loads((tmp_path / 'work_scores.json').read_text())
  assert scores['domains']['mydata']['num_images'] == 2
