r"""Inference-only export: parser parameters + a serialized forward function.

    python -m sst_jax.export --workdir=<train workdir> --output=<dir> \
        [--domains=synthetic_cihp,synthetic_atr] [--batch=b] \
        [--format=stablehlo|onnx]

reads the latest checkpoint of a training workdir and writes ``<dir>`` with

* ``params.npz``: the inference network's variables and nothing else,
  ``params['parser']`` as ``params/...`` and ``model_state['batch_stats']``
  as ``batch_stats/...`` (keys are ``/``-joined Flax paths). Every SST
  parameter (``params['sst']``) and the SST state
  (``model_state['sst_memory']``: with ``sst.intra='adjacency'``, the EMA
  of each domain's intra-domain class adjacency) are dropped, as are the
  optimizer state, dedicated parsing's frozen source copy
  (``model_state['frozen']``) and, when heads are selected, the other
  domains' ``head_<name>`` convs.
  In dedicated parsing (``config.parsing='dedicated'``) only the target head
  is kept unless ``--domains`` says otherwise.
* ``export.json``: its format number (``format_version``, checked when
  loading), the sst_jax version, the kept label domains (name, classes,
  flip pairs; the ignore id is always 255), the model config, compute dtype,
  preprocessing (RGB, ImageNet mean/std, input size, padding), the forward
  function's signature, the source checkpoint (workdir, step, checkpoint
  format) and the training config as the checkpoint recorded it
  (``config``: its ``data`` section is what ``python -m sst_jax.evaluate``
  scores the export on, as it does the workdir).
* ``forward.jax_export``: ``jax.export`` serialization (StableHLO) of
  ``image -> {domain: logits}`` with the parameters embedded as constants.
  ``image`` is a float32 ``[b, S, S, 3]`` batch normalized as ``export.json``
  says, with a symbolic batch size ``b`` and ``S`` the input size; the
  logits are ``[b, S, S, C_domain]`` (bilinearly upsampled from stride 4).
  (Training, evaluation and ``sst_jax.Parser`` send uint8 pixels and
  normalize inside their compiled functions, ``steps.normalize_images``,
  with the same mean and std; the serialized function keeps the float32
  contract, so its callers need no knowledge of the canvas padding.)
  It reloads with ``jax`` alone, no ``sst_jax`` or Flax needed::

      exp = jax.export.deserialize(open('forward.jax_export', 'rb').read())
      logits = exp.call(images)

* ``forward.onnx`` instead, with ``--format=onnx`` (the ``[onnx]`` extra):
  the same function and contract as an ONNX model (input ``image``, one
  output per domain, named after it), for ONNX Runtime and other ONNX
  consumers (``sst_jax.onnx_export``).

The spatial size is fixed at export time because the network's bilinear
resizes and pyramid pooling are built from static interpolation matrices.

Workdirs and export directories are ``etils.epath`` paths: local, or
``gs://`` with the ``[gcs]`` extra.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import sys
import tempfile
from typing import Sequence

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

import sst_jax
from sst_jax import checkpointing
from sst_jax import config_lib
from sst_jax import domains as domains_lib
from sst_jax import recipe
from sst_jax import steps
from sst_jax.data import transforms
from sst_jax.models import parser as parser_lib

# The layout of an export directory; ``load_exported`` refuses others.
FORMAT_VERSION = 1
PARAMS_FILE = 'params.npz'
META_FILE = 'export.json'
FORWARD_FILE = 'forward.jax_export'
ONNX_FILE = 'forward.onnx'
FORWARD_FORMATS = ('stablehlo', 'onnx')


class ExportFormatError(ValueError):
  """An export directory was written in a format this version cannot read."""


def load_checkpoint(workdir: str | os.PathLike, step: int | None = None
                    ) -> tuple[dict, dict, dict, int]:
  """Reads the latest checkpoint (or ``step``'s) of a workdir onto the host.

  Returns:
    ``(metadata, params, model_state, step)`` with numpy leaves.

  Raises:
    FileNotFoundError: if the workdir holds no checkpoint (at ``step``).
  """
  manager, step, meta = checkpointing.open_latest(workdir, step=step)
  raw = checkpointing.restore(manager, step)['state']
  manager.close()
  params, model_state = raw['params'], raw['model_state']
  return meta, params, model_state, step


def parsing_of(metadata: dict) -> str | None:
  """A checkpoint's or export's ``config.parsing`` (universal, dedicated).

  Recorded as ``'parsing'``; checkpoints and exports written before the
  field had that name record it as ``'mode_sst'``.
  """
  return metadata.get('parsing', metadata.get('mode_sst'))


def select_heads(metadata: dict, heads: Sequence[str] | None = None
                 ) -> list[str]:
  """The heads to keep: ``heads``, else the target (dedicated), else all.

  Raises:
    ValueError: naming the checkpoint's domains when a head is unknown.
  """
  names = [d['name'] for d in metadata['domains']]
  if not heads:
    if parsing_of(metadata) == 'dedicated' and metadata.get('target'):
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
  return keep_heads(steps.parser_variables(params, model_state), heads)


def keep_heads(variables: dict, heads: Sequence[str]) -> dict:
  """Network variables without the ``head_<name>`` of other domains."""
  keep = {f'head_{h}' for h in heads}
  return {col: {k: v for k, v in tree.items()
                if not k.startswith('head_') or k in keep}
          for col, tree in variables.items()}


def build_parser(metadata: dict,
                 heads: Sequence[str]) -> parser_lib.ParsingNetwork:
  """The inference network a checkpoint/export describes, ``heads`` only.

  The recorded model config over the base config's: a field added since
  the model was saved has its default there. No SST module; it runs the
  backend's speed paths (``recipe.speed_paths()``), as evaluation, export
  and ``sst_jax.Parser`` build their models here.
  """
  by_name = {d['name']: d for d in metadata['domains']}
  dtype = jnp.bfloat16 if metadata.get('dtype') == 'bfloat16' else jnp.float32
  model = {**config_lib.base_config().model.to_dict(), **metadata['model']}
  return parser_lib.make_parser(
      ml_collections.ConfigDict(model), list(heads),
      [len(by_name[h]['classes']) for h in heads], dtype,
      recipe.speed_paths())


def input_size_of(metadata: dict) -> int:
  """The evaluation input size of the training config (square side)."""
  config = metadata.get('config') or {}
  size = (config.get('data') or {}).get('eval_input_size')
  if size is None:
    size = metadata.get('preprocessing', {}).get(
        'input_size', config_lib.base_config().data.eval_input_size)
  return int(size)


def forward_fn(module, variables, heads: Sequence[str]):
  """``image -> {head: logits at input resolution}`` (plain, no TTA)."""
  return functools.partial(steps.predict_logits, variables, model=module,
                           heads=tuple(heads))


def describe(metadata: dict, heads: Sequence[str], source: dict) -> dict:
  """The ``export.json`` description of a checkpoint, all but ``forward``.

  Args:
    metadata: a checkpoint's metadata item.
    heads: the kept domains.
    source: where the parameters come from (workdir, step, ...).
  """
  by_name = {d['name']: d for d in metadata['domains']}
  return {
      'format_version': FORMAT_VERSION,
      'sst_jax_version': sst_jax.__version__,
      'domains': [by_name[h] for h in heads],
      'model': metadata['model'],
      'dtype': metadata.get('dtype', config_lib.base_config().dtype),
      'parsing': parsing_of(metadata),
      'target': metadata.get('target'),
      'preprocessing': {
          'channel_order': 'RGB',
          'mean': [float(v) for v in transforms.IMAGENET_MEAN / 255],
          'std': [float(v) for v in transforms.IMAGENET_STD / 255],
          'scale': 'pixel / 255, then (x - mean) / std',
          'input_size': input_size_of(metadata),
          'fit': 'resize keeping aspect so the longer side is input_size, '
                 'pad bottom/right with the mean colour (0 after '
                 'normalization)',
      },
      'source': source,
      'config': metadata.get('config'),
  }


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


def _write_npz(path: epath.Path, variables: dict) -> None:
  flat = traverse_util.flatten_dict(variables, sep='/')
  with path.open('wb') as f:
    np.savez(f, **{k: np.asarray(v) for k, v in flat.items()})


def export(workdir: str, output: str, heads: Sequence[str] | None = None,
           batch: str | int = 'b', serialize: bool = True,
           forward_format: str = 'stablehlo') -> dict:
  """Writes the inference-only export of ``workdir``'s latest checkpoint.

  Args:
    workdir: a training workdir.
    output: directory to write (created).
    heads: domains whose heads to keep (default: see ``select_heads``).
    batch: batch dimension of the serialized function (see
      ``serialize_forward``).
    serialize: also write the forward function.
    forward_format: ``'stablehlo'`` (``forward.jax_export``) or ``'onnx'``
      (``forward.onnx``; needs the ``[onnx]`` extra).

  Returns:
    the ``export.json`` content.

  Raises:
    ValueError: for an unknown head or ``forward_format``.
    ImportError: for ``'onnx'`` without the ``[onnx]`` extra.
  """
  if forward_format not in FORWARD_FORMATS:
    raise ValueError(f'format must be one of {FORWARD_FORMATS}, got '
                     f'{forward_format!r}')
  onnx = forward_format == 'onnx'
  if onnx and serialize:
    # Before anything is written: a missing converter leaves no half export.
    from sst_jax import onnx_export  # pylint: disable=g-import-not-at-top
    onnx_export.require()
  meta, params, model_state, step = load_checkpoint(workdir)
  heads = select_heads(meta, heads)
  variables = inference_variables(params, model_state, heads)
  module = build_parser(meta, heads)
  input_size = input_size_of(meta)
  info = describe(meta, heads, {
      'workdir': os.fspath(checkpointing.workdir_path(workdir)), 'step': step,
      'checkpoint_format': meta.get('format', 1)})
  forward = {
      'file': (ONNX_FILE if onnx else FORWARD_FILE) if serialize else None,
      'format': forward_format,
      'input': [batch if isinstance(batch, str) else int(batch),
                input_size, input_size, 3],
      'input_dtype': 'float32',
      'output': '{domain: float32 [b, input_size, input_size, C]} logits',
  }
  if onnx:
    forward.update(input_name='image', output_names=list(heads))
  info = {**info, 'forward': forward}
  output = epath.Path(output)
  output.mkdir(parents=True, exist_ok=True)
  _write_npz(output / PARAMS_FILE, variables)
  if serialize and onnx:
    # ONNX writes local files (a large model's weights go to a second one):
    # converted in a local folder, then copied to the (maybe remote) output.
    with tempfile.TemporaryDirectory() as local:
      onnx_export.convert(
          forward_fn(module, jax.tree.map(jnp.asarray, variables), heads),
          heads, input_size, batch, os.path.join(local, ONNX_FILE))
      for name in sorted(os.listdir(local)):
        (output / name).write_bytes(epath.Path(local, name).read_bytes())
  elif serialize:
    (output / FORWARD_FILE).write_bytes(
        serialize_forward(module, variables, heads, input_size, batch))
  (output / META_FILE).write_text(json.dumps(info, indent=1))
  return info


def load_exported(
    path: str) -> tuple[parser_lib.ParsingNetwork, dict, dict]:
  """Loads an export directory.

  Returns:
    ``(module, variables, info)``: the inference ``ParsingNetwork``
    (:func:`build_parser`: kept heads only), its ``{'params',
    'batch_stats'}`` as numpy arrays and the ``export.json`` content.
    Run with ``module.apply(variables, image)``.

  Raises:
    FileNotFoundError: if ``path`` is not an export directory.
    ExportFormatError: if it was written in another format.
  """
  meta_path = epath.Path(path) / META_FILE
  if not meta_path.is_file():
    raise FileNotFoundError(f'{os.fspath(path)} is not an sst_jax export (no '
                            f'{META_FILE})')
  info = json.loads(meta_path.read_text())
  found = info.get('format_version')
  if found != FORMAT_VERSION:
    raise ExportFormatError(
        f'{meta_path}: export format {found} (written by sst_jax '
        f'{info.get("sst_jax_version", "unknown")}), but sst_jax '
        f'{sst_jax.__version__} reads export format {FORMAT_VERSION} only; '
        're-export the workdir with this version or load it with the one '
        'that wrote it')
  params_bytes = (epath.Path(path) / PARAMS_FILE).read_bytes()
  with np.load(io.BytesIO(params_bytes), allow_pickle=False) as f:
    variables = traverse_util.unflatten_dict(
        {k: f[k] for k in f.files}, sep='/')
  module = build_parser(info, [d['name'] for d in info['domains']])
  return module, variables, info


def load_model(path: str, heads: Sequence[str] | None = None
               ) -> tuple[parser_lib.ParsingNetwork, dict, dict]:
  """The inference parser of a training workdir or an export directory.

  What another Flax project needs to run or fine-tune a trained parser
  (``docs/reuse.md``).

  Args:
    path: a training workdir (its latest checkpoint) or an export directory.
    heads: the domains whose heads to keep (default: every head there is).

  Returns:
    ``(module, variables, info)``: the inference :class:`ParsingNetwork`
    with those heads (:func:`build_parser`), its ``{'params',
    'batch_stats'}`` as numpy arrays (no SST parameter or state) and the
    ``export.json`` description (for a workdir, what ``export`` would write
    there, less ``forward``).

  Raises:
    FileNotFoundError: if ``path`` is neither.
    ValueError: naming the model's domains when a head is unknown.
  """
  if (epath.Path(path) / META_FILE).is_file():
    module, variables, info = load_exported(path)
    if heads:
      select_heads(info, heads)
      variables = keep_heads(variables, heads)
      module = build_parser(info, heads)
      by_name = {d['name']: d for d in info['domains']}
      info = {**info, 'domains': [by_name[h] for h in heads]}
    return module, variables, info
  if not (epath.Path(path) / 'checkpoints').is_dir():
    raise FileNotFoundError(
        f'{os.fspath(path)}: not a training workdir (no checkpoints/) or an '
        f'export directory (no {META_FILE})')
  meta, params, model_state, step = load_checkpoint(path)
  heads = (select_heads(meta, heads) if heads else
           [d['name'] for d in meta['domains']])
  info = describe(meta, heads, {'workdir': os.fspath(
                                    checkpointing.workdir_path(path)),
                                'step': step,
                                'checkpoint_format': meta.get('format', 1)})
  return (build_parser(meta, heads),
          inference_variables(params, model_state, heads), info)


def load_serialized(path: str):
  """Deserializes ``forward.jax_export`` (a file or an export directory).

  Returns:
    a callable ``image [b, S, S, 3] float32 -> {domain: logits}``.
  """
  path = epath.Path(path)
  if path.is_dir():
    path = path / FORWARD_FILE
  exported = jax.export.deserialize(bytearray(path.read_bytes()))
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
  ap.add_argument('--format', choices=FORWARD_FORMATS, default='stablehlo',
                  help='forward function: forward.jax_export (StableHLO, '
                  'jax.export) or forward.onnx (ONNX; needs the [onnx] '
                  'extra and jax2onnx, docs/predict.md)')
  ap.add_argument('--no_serialize', action='store_true',
                  help='skip the forward function')
  args = ap.parse_args(argv)
  heads = [h for h in args.domains.split(',') if h] or None
  batch = int(args.batch) if args.batch.isdigit() else args.batch
  try:
    info = export(args.workdir, args.output, heads, batch,
                  not args.no_serialize, args.format)
  except (FileNotFoundError, ValueError, ImportError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'exported step {info["source"]["step"]} of {args.workdir} '
        f'(heads: {", ".join(d["name"] for d in info["domains"])}) to '
        f'{args.output}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
