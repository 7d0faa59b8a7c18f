r"""Inference-only export: parser parameters + a serialized forward function.

    python -m sst_jax.export --workdir=<train workdir> --output=<dir> \
        [--domains=synthetic_cihp,synthetic_atr] [--batch=b]

reads the latest checkpoint of a training workdir and writes ``<dir>`` with

* ``params.npz``: the inference network's variables and nothing else,
  ``params['parser']`` as ``params/...`` and ``model_state['batch_stats']``
  as ``batch_stats/...`` (keys are ``/``-joined Flax paths). Every SST
  parameter (``params['sst']``) and the SST prototype memory
  (``model_state['sst_memory']``) are dropped, as are the optimizer state
  and, when heads are selected, the other domains' ``head_<name>`` convs.
  In dedicated mode (``mode_sst='dedicated'``) only the target head is kept
  unless ``--domains`` says otherwise.
* ``export.json``: the kept label domains (name, classes, flip pairs, ignore
  id), the model config, compute dtype, preprocessing (RGB, ImageNet
  mean/std, input size, padding) and the source checkpoint.
* ``forward.jax_export``: ``jax.export`` serialization (StableHLO) of
  ``image -> {domain: logits}`` with the parameters embedded as constants.
  ``image`` is a float32 ``[b, S, S, 3]`` batch normalized as ``export.json``
  says, with a symbolic batch size ``b`` and ``S`` the input size; the
  logits are ``[b, S, S, C_domain]`` (bilinearly upsampled from stride 4).
  It reloads with ``jax`` alone, no ``sst_jax`` or Flax needed::

      exp = jax.export.deserialize(open('forward.jax_export', 'rb').read())
      logits = exp.call(images)

The spatial size is fixed at export time because the network's bilinear
resizes and pyramid pooling are built from static interpolation matrices.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from sst_jax import checkpointing
from sst_jax import domains as domains_lib
from sst_jax import steps
from sst_jax.data import transforms
from sst_jax.models import parser as parser_lib

FORMAT_VERSION = 1
PARAMS_FILE = 'params.npz'
META_FILE = 'export.json'
FORWARD_FILE = 'forward.jax_export'


def load_checkpoint(workdir: str) -> tuple[dict, dict, dict, int]:
  """Reads the latest checkpoint of a training workdir onto the host.

  Returns:
    ``(metadata, params, model_state, step)`` with numpy leaves.

  Raises:
    FileNotFoundError: if the workdir holds no checkpoint.
  """
  manager, step, meta = checkpointing.open_latest(workdir)
  raw = checkpointing.restore_state(manager, step)
  manager.close()
  params, model_state = raw['params'], raw['model_state']
  return meta, params, model_state, step


def select_heads(metadata: dict, heads: Sequence[str] | None = None
                 ) -> list[str]:
  """The heads to keep: ``heads``, else the target (dedicated), else all.

  Raises:
    ValueError: naming the checkpoint's domains when a head is unknown.
  """
  names = [d['name'] for d in metadata['domains']]
  if not heads:
    if metadata.get('mode_sst') == 'dedicated' and metadata.get('target'):
      return [metadata['target']]
    return names
  unknown = [h for h in heads if h not in names]
  if unknown:
    raise ValueError(f'unknown domain(s) {unknown}; this model has: '
                     f'{", ".join(names)}')
  return list(heads)


def inference_variables(params: dict, model_state: dict,
                        heads: Sequence[str]) -> dict:
  """``{'params', 'batch_stats'}`` of the parser with only ``heads`` kept."""
  variables = steps.parser_variables(params, model_state)
  keep = {f'head_{h}' for h in heads}
  return {col: {k: v for k, v in tree.items()
                if not k.startswith('head_') or k in keep}
          for col, tree in variables.items()}


def build_parser(metadata: dict, heads: Sequence[str]) -> parser_lib.Parser:
  """The plain Parser a checkpoint/export describes, with ``heads`` only."""
  by_name = {d['name']: d for d in metadata['domains']}
  dtype = jnp.bfloat16 if metadata.get('dtype') == 'bfloat16' else jnp.float32
  return parser_lib.make_parser(
      ml_collections.ConfigDict(metadata['model']), list(heads),
      [len(by_name[h]['classes']) for h in heads], dtype)


def input_size_of(metadata: dict) -> int:
  """The evaluation input size of the training config (square side)."""
  config = metadata.get('config') or {}
  size = (config.get('data') or {}).get('eval_input_size')
  if size is None:
    size = metadata.get('preprocessing', {}).get('input_size', 473)
  return int(size)


def forward_fn(module, variables, heads: Sequence[str]):
  """``image -> {head: logits at input resolution}`` (plain, no TTA)."""
  return functools.partial(steps.predict_logits, variables, model=module,
                           heads=tuple(heads))


def serialize_forward(module, variables, heads: Sequence[str],
                      input_size: int, batch: str | int = 'b') -> bytes:
  """``jax.export`` bytes of the forward pass (variables embedded).

  Args:
    batch: a symbolic dimension name (any batch size at call time) or a
      fixed batch size.
  """
  fn = forward_fn(module, jax.tree.map(jnp.asarray, variables), heads)
  if isinstance(batch, str):
    shape = jax.export.symbolic_shape(f'{batch}, {input_size}, '
                                      f'{input_size}, 3')
  else:
    shape = (int(batch), input_size, input_size, 3)
  exported = jax.export.export(jax.jit(fn))(
      jax.ShapeDtypeStruct(shape, jnp.float32))
  return exported.serialize()


def _write_npz(path: str, variables: dict) -> None:
  flat = traverse_util.flatten_dict(variables, sep='/')
  np.savez(path, **{k: np.asarray(v) for k, v in flat.items()})


def export(workdir: str, output: str, heads: Sequence[str] | None = None,
           batch: str | int = 'b', serialize: bool = True) -> dict:
  """Writes the inference-only export of ``workdir``'s latest checkpoint.

  Args:
    workdir: a training workdir.
    output: directory to write (created).
    heads: domains whose heads to keep (default: see ``select_heads``).
    batch: batch dimension of the serialized function (see
      ``serialize_forward``).
    serialize: also write ``forward.jax_export``.

  Returns:
    the ``export.json`` content.
  """
  meta, params, model_state, step = load_checkpoint(workdir)
  heads = select_heads(meta, heads)
  variables = inference_variables(params, model_state, heads)
  module = build_parser(meta, heads)
  input_size = input_size_of(meta)
  by_name = {d['name']: d for d in meta['domains']}
  info = {
      'format_version': FORMAT_VERSION,
      'domains': [by_name[h] for h in heads],
      'model': meta['model'],
      'dtype': meta.get('dtype', 'float32'),
      'mode_sst': meta.get('mode_sst'),
      'target': meta.get('target'),
      'preprocessing': {
          'channel_order': 'RGB',
          'mean': [float(v) for v in transforms.IMAGENET_MEAN / 255],
          'std': [float(v) for v in transforms.IMAGENET_STD / 255],
          'scale': 'pixel / 255, then (x - mean) / std',
          'input_size': input_size,
          'fit': 'resize keeping aspect so the longer side is input_size, '
                 'pad bottom/right with the mean colour (0 after '
                 'normalization)',
      },
      'forward': {
          'file': FORWARD_FILE if serialize else None,
          'input': [batch if isinstance(batch, str) else int(batch),
                    input_size, input_size, 3],
          'input_dtype': 'float32',
          'output': '{domain: float32 [b, input_size, input_size, C]} logits',
      },
      'source': {'workdir': os.path.abspath(workdir), 'step': step},
  }
  os.makedirs(output, exist_ok=True)
  _write_npz(os.path.join(output, PARAMS_FILE), variables)
  if serialize:
    data = serialize_forward(module, variables, heads, input_size, batch)
    with open(os.path.join(output, FORWARD_FILE), 'wb') as f:
      f.write(data)
  with open(os.path.join(output, META_FILE), 'w') as f:
    json.dump(info, f, indent=1)
  return info


def load_exported(path: str) -> tuple[parser_lib.Parser, dict, dict]:
  """Loads an export directory.

  Returns:
    ``(module, variables, info)``: the plain ``Parser`` (kept heads only),
    ``{'params', 'batch_stats'}`` as numpy arrays and the ``export.json``
    content. Run with ``module.apply(variables, image)``.

  Raises:
    FileNotFoundError: if ``path`` is not an export directory.
  """
  meta_path = os.path.join(path, META_FILE)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f'{path} is not an sst_jax export (no '
                            f'{META_FILE})')
  with open(meta_path) as f:
    info = json.load(f)
  with np.load(os.path.join(path, PARAMS_FILE), allow_pickle=False) as f:
    variables = traverse_util.unflatten_dict(
        {k: f[k] for k in f.files}, sep='/')
  module = build_parser(info, [d['name'] for d in info['domains']])
  return module, variables, info


def load_serialized(path: str):
  """Deserializes ``forward.jax_export`` (a file or an export directory).

  Returns:
    a callable ``image [b, S, S, 3] float32 -> {domain: logits}``.
  """
  if os.path.isdir(path):
    path = os.path.join(path, FORWARD_FILE)
  with open(path, 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  return exported.call


def domains_of(info: dict) -> list[domains_lib.Domain]:
  """The label domains recorded in checkpoint metadata or ``export.json``."""
  return [domains_lib.from_json(d) for d in info['domains']]


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(
      prog='python -m sst_jax.export', description=__doc__.split('\n\n')[0])
  ap.add_argument('--workdir', required=True, help='training workdir')
  ap.add_argument('--output', required=True, help='export directory')
  ap.add_argument('--domains', default='',
                  help='comma-separated heads to keep (default: all; the '
                  'target in dedicated mode)')
  ap.add_argument('--batch', default='b',
                  help="batch size of the serialized function: a symbol "
                  "('b', any size) or an integer")
  ap.add_argument('--no_serialize', action='store_true',
                  help='skip forward.jax_export')
  args = ap.parse_args(argv)
  heads = [h for h in args.domains.split(',') if h] or None
  batch = int(args.batch) if args.batch.isdigit() else args.batch
  try:
    info = export(args.workdir, args.output, heads, batch,
                  not args.no_serialize)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'exported step {info["source"]["step"]} of {args.workdir} '
        f'(heads: {", ".join(d["name"] for d in info["domains"])}) to '
        f'{args.output}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
