"""Trains and reads tiny checkpoints in a process with its own device count.

Run by ``tests/test_topology.py`` in subprocesses whose ``XLA_FLAGS`` set
the number of CPU devices (not pytest's forced 8), so that a checkpoint is
written by one topology and read by another, as when a model trained on a
pod slice is exported or parsed on a laptop::

    python tests/topology_probe.py train WORKDIR
    python tests/topology_probe.py read WORKDIR SCRATCH OUT.npz

``train`` trains ``configs/tiny.py`` (SST) for ``STEPS`` steps. ``read``
goes through every reader of a checkpoint on a copy of ``WORKDIR`` (made
under ``SCRATCH``) and saves what each one produced to ``OUT.npz``: the
``sst_jax.predict`` CLI's label PNGs, ``Parser.load`` logits, the
``sst_jax.export`` CLI and ``Parser.load`` of the export,
``--config.mode=eval`` scores, one step of ``config.init_from`` training
and one resumed step.
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

STEPS = 2
IMAGE_SIZES = ((32, 32), (45, 27))


def tiny_config(**overrides):
  """``configs/tiny.py`` (SST), shortened; dotted keys override fields."""
  from configs import tiny
  config = tiny.get_config('sst')
  fields = {'total_steps': STEPS, 'checkpoint_every': STEPS, 'eval_every': 0,
            'log_every': 1, 'async_checkpoints': False, 'eval.num_vis': 0,
            'data.max_eval_examples': 8}
  fields.update(overrides)
  with config.unlocked():
    for key, value in fields.items():
      node = config
      *parents, leaf = key.split('.')
      for p in parents:
        node = node[p]
      node[leaf] = value
  return config


def train(workdir: str) -> None:
  from sst_jax import train as train_lib
  train_lib.train_and_evaluate(tiny_config(), workdir)


def _photos(folder: str) -> list[str]:
  from PIL import Image
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  paths = []
  for i, (h, w) in enumerate(IMAGE_SIZES):
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    path = os.path.join(folder, f'photo{i}.png')
    Image.fromarray(small).resize((w, h), Image.BILINEAR).save(path)
    paths.append(path)
  return paths


def _final_params(workdir: str, step: int) -> dict:
  from flax import traverse_util
  from sst_jax import checkpointing
  manager = checkpointing.make_manager(workdir, async_save=False)
  state = checkpointing.restore(manager, step)['state']
  manager.close()
  assert int(state['step']) == step, (workdir, int(state['step']), step)
  flat = traverse_util.flatten_dict(state['params'], sep='/')
  return {k: np.asarray(v) for k, v in flat.items()}


def read(workdir: str, scratch: str, out: str) -> None:
  import jax
  from PIL import Image
  import sst_jax
  from sst_jax import export
  from sst_jax import predict
  from sst_jax import train as train_lib

  results = {'device_count': np.asarray(jax.device_count())}
  os.makedirs(scratch, exist_ok=True)
  work = os.path.join(scratch, 'work')
  shutil.copytree(workdir, work)
  photos = _photos(os.path.join(scratch, 'photos'))

  # The predict CLI: label PNGs for every domain.
  parsed = os.path.join(scratch, 'parsed')
  assert predict.main([f'--model={work}', f'--input={os.path.dirname(photos[0])}',
                       f'--output={parsed}', '--domain=all']) == 0
  for root, _, files in os.walk(parsed):
    for name in sorted(files):
      if name.endswith('.png'):
        rel = os.path.relpath(os.path.join(root, name), parsed)
        results[f'predict/{rel}'] = np.asarray(
            Image.open(os.path.join(root, name)))

  # Parser.load on the workdir, and on its export (the export CLI).
  exported = os.path.join(scratch, 'export')
  assert export.main([f'--workdir={work}', f'--output={exported}',
                      '--no_serialize']) == 0
  for name, path in (('parser', work), ('export', exported)):
    parser = sst_jax.Parser.load(path)
    for i, photo in enumerate(photos):
      for domain in parser.domains:
        results[f'{name}/{domain}/{i}'] = parser.logits(photo, domain)

  # --config.mode=eval.
  scores = train_lib.train_and_evaluate(tiny_config(mode='eval'), work)
  for domain, values in scores.items():
    per_class = [np.nan if c['iou'] is None else c['iou']
                 for c in values['classes']]
    results[f'eval/{domain}'] = np.asarray(
        [values['miou'], values['pixel_acc']] + per_class)

  # config.init_from: one step from the checkpoint, in a new workdir.
  init_dir = os.path.join(scratch, 'init_from')
  train_lib.train_and_evaluate(
      tiny_config(init_from=work, total_steps=1, checkpoint_every=1), init_dir)
  for key, value in _final_params(init_dir, 1).items():
    results[f'init_from/{key}'] = value

  # Resume: one more step in the copied workdir.
  train_lib.train_and_evaluate(tiny_config(total_steps=STEPS + 1), work)
  for key, value in _final_params(work, STEPS + 1).items():
    results[f'resume/{key}'] = value

  np.savez(out, **results)


if __name__ == '__main__':
  mode, *args = sys.argv[1:]
  {'train': train, 'read': read}[mode](*args)
