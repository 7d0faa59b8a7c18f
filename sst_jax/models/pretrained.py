"""Import of PyTorch weights: torchvision ImageNet ResNets and SCHP parsers.

Two sources are supported:

* torchvision-format ResNet-18/34/50/101 state dicts (ImageNet
  initialization of the parser's backbone): ``load_backbone_into``;
* the public Self-Correction Human Parsing checkpoints (LIP, ATR,
  PASCAL-Person-Part), imported as a ready-to-use
  ``sst_jax.models.schp.AugmentCE2P``: ``import_schp``.

Files are read by ``load_torch_state_dict``: ``.pth``/``.pt`` through PyTorch
(imported lazily; install with ``pip install sst_jax[torch]``), and
``.safetensors`` / ``.npz`` with no PyTorch at all.

Weights are loaded through abstract shapes (``jax.eval_shape`` of
``model.init``): every target leaf gets an explicit PyTorch name, a source
tensor with no target or with the wrong shape raises (naming the tensors), and
the target leaves that received nothing are returned in an ``ImportReport``.
Conv kernels go from PyTorch's OIHW to Flax's HWIO; BatchNorm
``weight``/``bias``/``running_mean``/``running_var`` become
``scale``/``bias``/``mean``/``var``; ``fc.*`` and ``num_batches_tracked`` are
ignored. Every normalization layer of SCHP is an InPlace-ABN, which scales by
``|weight| + eps`` where BatchNorm scales by ``weight``: SCHP weights are
imported with that scale (``inplace_abn_scale``), so the Flax BatchNorm
computes what SCHP's layer computes.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

from sst_jax import domains
from sst_jax.models import fast_paths
from sst_jax.models import resnet
from sst_jax.models import schp

StateDict = dict[str, np.ndarray]
PathLike = Union[str, os.PathLike]
# (module path inside the collection, leaf name) -> PyTorch key, or None.
NameFn = Callable[[tuple[str, ...], str], Optional[str]]

_IGNORED = (re.compile(r'^fc\.'), re.compile(r'(^|\.)num_batches_tracked$'))

# Flax leaf name -> PyTorch parameter/buffer name (convs and BatchNorms).
_LEAF_NAMES = {
    'kernel': 'weight',
    'bias': 'bias',
    'scale': 'weight',
    'mean': 'running_mean',
    'var': 'running_var',
}

# --------------------------------------------------------------------------
# Preprocessing the source weights expect.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """Input normalization expected by a set of pretrained weights.

  Attributes:
    channel_order: ``'RGB'`` or ``'BGR'``: order of the network's input
      channels.
    mean: per-channel mean, in ``channel_order``, of the image in [0, 1].
    std: per-channel standard deviation, in ``channel_order``.
    input_sizes: ``{domain: (height, width)}`` network input sizes used by
      the weights' authors (empty when not fixed).
  """
  channel_order: str
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  input_sizes: Mapping[str, tuple[int, int]] = dataclasses.field(
      default_factory=dict)

  def __call__(self, image_uint8_rgb: np.ndarray) -> np.ndarray:
    """Normalizes an RGB uint8 image ``[..., H, W, 3]`` to float32."""
    x = np.asarray(image_uint8_rgb)
    if x.shape[-1] != 3:
      raise ValueError(f'expected an RGB image [..., H, W, 3], got {x.shape}')
    x = x.astype(np.float32) / 255.0
    if self.channel_order == 'BGR':
      x = x[..., ::-1]
    return (x - np.float32(self.mean)) / np.float32(self.std)


IMAGENET_PREPROCESSING = Preprocessing(
    channel_order='RGB', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

# SCHP feeds cv2's BGR image, scaled to [0, 1], normalized with the ImageNet
# statistics listed in BGR order. Inputs are the affine-warped, centred person
# box at these sizes (see docs/pretrained.md).
SCHP_PREPROCESSING = Preprocessing(
    channel_order='BGR', mean=(0.406, 0.456, 0.485), std=(0.225, 0.224, 0.229),
    input_sizes={'lip': (473, 473), 'atr': (512, 512),
                 'pascal_person_part': (512, 512)})


def imagenet_preprocess(image_uint8_rgb: np.ndarray) -> np.ndarray:
  """RGB uint8 -> float32 normalized for torchvision ImageNet backbones."""
  return IMAGENET_PREPROCESSING(image_uint8_rgb)


def schp_preprocess(image_uint8_rgb: np.ndarray) -> np.ndarray:
  """RGB uint8 -> float32 BGR normalized as SCHP's weights expect."""
  return SCHP_PREPROCESSING(image_uint8_rgb)


def schp_affine_matrix(height: int, width: int,
                       input_size: tuple[int, int]) -> np.ndarray:
  """SCHP's image -> network-input affine map (``simple_extractor.py``).

  SCHP's ``get_affine_transform`` centres the image box
  ``[0, 0, w - 1, h - 1]`` in the network input and scales it uniformly so
  that the box, widened or heightened to the input's aspect ratio, spans
  pixel centres ``0 .. in_w - 1``: the scale is ``(in_w - 1) / box_w`` and
  the box centre lands on ``((in_w - 1) / 2, (in_h - 1) / 2)`` (rotation 0);
  the rest is zero-padded. A square ``in x in`` image is thus copied
  unchanged. This returns the ``[2, 3]`` matrix of
  ``cv2.warpAffine(image, M, (in_w, in_h))`` (pixel-centre coordinates); its
  inverse maps the upsampled logits back onto the image.

  Args:
    height, width: the image size.
    input_size: network input ``(in_h, in_w)``, e.g.
      ``SCHP_PREPROCESSING.input_sizes['lip']``.

  Returns:
    float32 ``[[k, 0, tx], [0, k, ty]]`` mapping image ``(x, y)`` to input
    coordinates.
  """
  in_h, in_w = input_size
  w, h = width - 1.0, height - 1.0
  center = np.array([w * 0.5, h * 0.5])
  aspect = in_w / in_h
  if w > aspect * h:
    h = w / aspect
  else:
    w = h * aspect
  k = (in_w - 1) / w
  return np.array([[k, 0.0, (in_w - 1) * 0.5 - k * center[0]],
                   [0.0, k, (in_h - 1) * 0.5 - k * center[1]]], np.float32)


# --------------------------------------------------------------------------
# InPlace-ABN.
# --------------------------------------------------------------------------

# InPlace-ABN's epsilon in SCHP (the default of its modules/bn.py ABN; SCHP
# never sets another). Checkpoints do not store it.
INPLACE_ABN_EPS = 1e-5


def inplace_abn_scale(weight: np.ndarray,
                      eps: float = INPLACE_ABN_EPS) -> np.ndarray:
  """The BatchNorm scale that computes what an InPlace-ABN weight computes.

  InPlace-ABN (SCHP's ``modules/src/inplace_abn_cpu.cpp`` ``forward_cpu``;
  the CUDA kernels alike) computes
  ``(x - mean) * rsqrt(var + eps) * (|weight| + eps) + bias``: the sign of a
  weight is ignored (its backward pass flips the gradient of negative
  weights to match) and eps is added. A plain BatchNorm with scale
  ``|weight| + eps`` computes the same, in float32 as InPlace-ABN does.

  Args:
    weight: InPlace-ABN ``weight`` ``[C]``.
    eps: InPlace-ABN's epsilon.

  Returns:
    float32 ``|weight| + eps``.
  """
  return np.abs(np.asarray(weight, np.float32)) + np.float32(eps)


# The leaf conversion of an InPlace-ABN state dict for import_state_dict.
INPLACE_ABN_LEAF_FNS = {'scale': inplace_abn_scale}


# --------------------------------------------------------------------------
# Readers.
# --------------------------------------------------------------------------


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):  # A torch.Tensor; no torch import needed.
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()  # numpy has no bfloat16.
    return value.numpy()
  return np.asarray(value)


def _unwrap(obj: Any, source: str) -> StateDict:
  """Finds the state dict in a checkpoint and strips DataParallel prefixes."""
  if isinstance(obj, Mapping):
    for key in ('state_dict', 'model', 'model_state_dict'):
      if key in obj and isinstance(obj[key], Mapping):
        obj = obj[key]
        break
  if not isinstance(obj, Mapping):
    raise ValueError(f'{source}: expected a state dict (name -> tensor), got '
                     f'{type(obj).__name__}')
  out = {}
  for name, value in obj.items():
    # SCHP checkpoints are saved from nn.DataParallel.
    name = name[len('module.'):] if name.startswith('module.') else name
    out[name] = _to_numpy(value)
  return out


def _torch_load(path: str, weights_only: bool, source=None) -> Any:
  """``torch.load`` of ``source`` (default: the file at ``path``)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(
        f'reading {path} needs PyTorch: pip install sst_jax[torch] (or convert '
        'the file once to .safetensors/.npz, which need no PyTorch)') from None
  try:
    return torch.load(path if source is None else source, map_location='cpu',
                      weights_only=weights_only)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f'{path}: cannot be read by torch.load(weights_only={weights_only}): '
        f'{e}. If you trust the file, pass weights_only=False.') from e


def load_torch_state_dict(path: PathLike, *,
                          weights_only: bool = True) -> StateDict:
  """Reads a PyTorch state dict into numpy arrays.

  ``.pth``/``.pt``/``.tar``/``.bin`` are read with ``torch.load`` (imported
  here only); ``.safetensors`` with ``safetensors.numpy``; ``.npz`` with numpy.
  A ``{'state_dict': ...}`` (or ``'model'``) wrapper is unwrapped and a
  ``module.`` prefix (``nn.DataParallel``) is stripped from every name.

  Args:
    path: the checkpoint file; a remote path (``gs://...``) is read through
      ``etils.epath``.
    weights_only: passed to ``torch.load``; keep True for untrusted files.

  Returns:
    ``{name: array}`` with floating tensors as float32.

  Raises:
    FileNotFoundError: if ``path`` does not exist.
    ImportError: if a ``.pth`` file is given and PyTorch is not installed.
    ValueError: on an unknown extension or unreadable content.
  """
  path = os.fspath(path)
  if not epath.Path(path).is_file():
    raise FileNotFoundError(f'checkpoint not found: {path}')
  ext = path.lower()
  # A local file is read where it lies; a remote one once into memory.
  data = None if '://' not in path else epath.Path(path).read_bytes()
  if ext.endswith('.safetensors'):
    try:
      # pylint: disable-next=g-import-not-at-top
      from safetensors import numpy as st_numpy
    except ImportError:
      raise ImportError(f'reading {path} needs safetensors: '
                        'pip install safetensors') from None
    return _unwrap(st_numpy.load_file(path) if data is None
                   else st_numpy.load(data), path)
  if ext.endswith('.npz'):
    with np.load(path if data is None else io.BytesIO(data),
                 allow_pickle=False) as f:
      return _unwrap({k: f[k] for k in f.files}, path)
  if ext.endswith(('.pth', '.pt', '.tar', '.bin', '.ckpt')):
    return _unwrap(_torch_load(path, weights_only,
                               None if data is None else io.BytesIO(data)),
                   path)
  raise ValueError(f'{path}: unknown checkpoint format; expected .pth, .pt, '
                   '.safetensors or .npz')


def _as_state_dict(source: Union[PathLike, Mapping[str, Any]],
                   weights_only: bool = True) -> StateDict:
  if isinstance(source, Mapping):
    return _unwrap(source, '<state dict>')
  return load_torch_state_dict(source, weights_only=weights_only)


def save_npz(state_dict: Mapping[str, Any], path: PathLike) -> None:
  """Writes a state dict as ``.npz`` (readable later without PyTorch)."""
  np.savez(path, **_unwrap(state_dict, '<state dict>'))


# --------------------------------------------------------------------------
# The import engine.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class ImportReport:
  """What an import did.

  Attributes:
    loaded: target leaves (``collection/module/.../leaf``) that got a tensor.
    not_loaded: target leaves that got nothing (kept as they were).
    ignored: source tensors skipped on purpose (``fc.*``,
      ``num_batches_tracked``).
  """
  loaded: list[str]
  not_loaded: list[str]
  ignored: list[str]

  def summary(self) -> str:
    head = ', '.join(self.not_loaded[:8])
    more = ' ...' if len(self.not_loaded) > 8 else ''
    return (f'loaded {len(self.loaded)} leaves, ignored {len(self.ignored)} '
            f'source tensors, {len(self.not_loaded)} target leaves not loaded'
            + (f': {head}{more}' if self.not_loaded else ''))


def _is_ignored(name: str) -> bool:
  return any(p.search(name) for p in _IGNORED)


def _torch_layout_to_flax(value: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == 'kernel' and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
  if leaf == 'kernel' and value.ndim == 2:
    return value.T  # Linear (out, in) -> Dense (in, out).
  return value


def _flax_shape_to_torch(shape: Sequence[int], leaf: str) -> tuple[int, ...]:
  shape = tuple(shape)
  if leaf == 'kernel' and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if leaf == 'kernel' and len(shape) == 2:
    return shape[::-1]
  return shape


def _name_table(target_variables: Mapping[str, Any],
                name_fn: NameFn) -> dict[str, tuple[str, ...]]:
  """PyTorch name -> flattened target key, for every mapped target leaf."""
  flat = traverse_util.flatten_dict(dict(target_variables))
  table = {}
  for key in flat:
    name = name_fn(key[1:-1], key[-1])
    if name is None:
      continue
    if name in table:
      raise AssertionError(f'two target leaves map to {name}: '
                           f'{"/".join(table[name])}, {"/".join(key)}')
    table[name] = key
  return table


def import_state_dict(
    state_dict: Mapping[str, np.ndarray],
    target_variables: Mapping[str, Any],
    name_fn: NameFn,
    leaf_fns: Optional[Mapping[str, Callable[[np.ndarray], np.ndarray]]] = None,
) -> tuple[dict[str, Any], ImportReport]:
  """Copies a PyTorch state dict into a Flax variables tree.

  Args:
    state_dict: ``{torch_name: array}`` in PyTorch layout.
    target_variables: the Flax variables (``{'params': ..., 'batch_stats':
      ...}``), concrete or abstract (``jax.eval_shape(model.init, ...)``).
    name_fn: maps ``(module_path, leaf_name)`` of a target leaf (collection
      excluded) to its PyTorch name, or None for leaves it does not cover.
    leaf_fns: ``{flax_leaf_name: fn}`` applied to the source value of every
      such leaf (e.g. ``{'scale': inplace_abn_scale}`` for InPlace-ABN
      weights).

  Returns:
    ``(variables, report)``: a new tree whose loaded leaves are numpy arrays
    of the target dtype; every other leaf is the target's own (abstract
    leaves stay abstract and are listed in ``report.not_loaded``).

  Raises:
    ValueError: naming every source tensor without a target and every tensor
      whose shape differs from its target.
  """
  flat = traverse_util.flatten_dict(dict(target_variables))
  table = _name_table(target_variables, name_fn)
  unmapped, misshaped, ignored, loaded = [], [], [], {}
  for name, value in state_dict.items():
    if _is_ignored(name):
      ignored.append(name)
      continue
    key = table.get(name)
    if key is None:
      unmapped.append(name)
      continue
    value = _torch_layout_to_flax(np.asarray(value), key[-1])
    target = flat[key]
    if tuple(value.shape) != tuple(target.shape):
      misshaped.append(
          f'{name} {tuple(np.shape(state_dict[name]))} -> {"/".join(key)} '
          f'expects {_flax_shape_to_torch(target.shape, key[-1])} (torch '
          'layout)')
      continue
    if leaf_fns and key[-1] in leaf_fns:
      value = leaf_fns[key[-1]](value)
    loaded[key] = np.asarray(value, dtype=target.dtype)
  if unmapped or misshaped:
    lines = []
    if unmapped:
      lines.append(f'{len(unmapped)} source tensors have no target: '
                   + ', '.join(unmapped))
    if misshaped:
      lines.append(f'{len(misshaped)} tensors have the wrong shape: '
                   + '; '.join(misshaped))
    raise ValueError('cannot import weights:\n  ' + '\n  '.join(lines))
  out = {key: loaded.get(key, leaf) for key, leaf in flat.items()}
  report = ImportReport(
      loaded=sorted('/'.join(k) for k in loaded),
      not_loaded=sorted('/'.join(k) for k in flat if k not in loaded),
      ignored=sorted(ignored))
  logging.info('weight import: %s', report.summary())
  return traverse_util.unflatten_dict(out), report


# --------------------------------------------------------------------------
# torchvision ResNet backbones.
# --------------------------------------------------------------------------

_BLOCK_RE = re.compile(r'^layer(\d)_(\d+)$')


def _resnet_module_name(path: Sequence[str]) -> str:
  """``('layer1_0', 'downsample_conv')`` -> ``'layer1.0.downsample.0'``."""
  parts = []
  for p in path:
    m = _BLOCK_RE.match(p)
    if m:
      parts += [f'layer{m.group(1)}', m.group(2)]
    elif p == 'downsample_conv':
      parts += ['downsample', '0']
    elif p == 'downsample_bn':
      parts += ['downsample', '1']
    else:
      parts.append(p)
  return '.'.join(parts)


def _split_prefix(prefix: Optional[str]) -> tuple[str, ...]:
  return tuple(p for p in (prefix or '').split('/') if p)


def resnet_name_fn(prefix: Optional[str] = 'backbone') -> NameFn:
  """Names torchvision uses for the leaves of ``resnet.ResNet``.

  Args:
    prefix: ``/``-separated path of the ResNet inside the collections
      (``'backbone'`` in ``ParsingNetwork``; None or ``''`` for a bare ResNet).
  """
  pre = _split_prefix(prefix)

  def name_fn(path, leaf):
    if path[:len(pre)] != pre or leaf not in _LEAF_NAMES or len(path) == len(
        pre):
      return None
    return f'{_resnet_module_name(path[len(pre):])}.{_LEAF_NAMES[leaf]}'

  return name_fn


def import_resnet(
    state_dict: Mapping[str, np.ndarray],
    target_variables: Mapping[str, Any],
    prefix: Optional[str] = 'backbone',
    *,
    inplace_abn: bool = False,
) -> tuple[dict[str, Any], ImportReport]:
  """Imports a torchvision ResNet state dict into a ResNet inside a tree.

  Args:
    state_dict: torchvision ``resnet18/34/50/101`` state dict (numpy).
    target_variables: Flax variables, concrete or abstract, holding a
      ``resnet.ResNet`` under ``prefix`` in ``params`` and ``batch_stats``.
    prefix: ``/``-separated path of the ResNet (None or ``''``: the tree is
      the ResNet itself).
    inplace_abn: the normalization layers are InPlace-ABN (SCHP): their
      weights become ``inplace_abn_scale(weight)``.

  Returns:
    ``(variables, report)`` as ``import_state_dict``.

  Raises:
    ValueError: on unmapped or mis-shaped tensors (e.g. a 7x7 ImageNet stem
      into a ``deep_stem`` backbone, or a width mismatch), or if nothing lies
      under ``prefix``.
  """
  name_fn = resnet_name_fn(prefix)
  if not _name_table(target_variables, name_fn):
    raise ValueError(f'no ResNet parameters under prefix {prefix!r} in the '
                     f'target variables (collections: '
                     f'{", ".join(target_variables)})')
  return import_state_dict(state_dict, target_variables, name_fn,
                           INPLACE_ABN_LEAF_FNS if inplace_abn else None)


def load_backbone_into(
    variables: Mapping[str, Any],
    source: Union[PathLike, Mapping[str, Any]],
    prefix: str = 'backbone',
    *,
    weights_only: bool = True,
    inplace_abn: Optional[bool] = None,
) -> tuple[dict[str, Any], ImportReport]:
  """Initializes a model's backbone from an ImageNet or SCHP checkpoint.

  This is the call behind ``config.init.backbone=<path>``. Contract with the
  trainer: ``variables`` is the parser's full, freshly initialized variables
  dict, ``{'params': {'backbone': ..., ...}, 'batch_stats': {'backbone':
  ..., ...}}``; the returned dict has the same structure, the backbone's
  leaves replaced by the checkpoint's (as numpy float32 arrays; the caller
  places/shards them) and every other leaf the very object passed in. The
  report's ``not_loaded`` lists what stays at its random initialization (the
  context module, decoder, heads, ...); the trainer logs
  ``report.summary()``. The images must then be normalized with
  ``IMAGENET_PREPROCESSING`` (RGB).

  Args:
    variables: the model's variables (concrete arrays).
    source: a ``.pth``/``.pt``/``.safetensors``/``.npz`` path, or a state
      dict.
    prefix: path of the backbone inside the collections.
    weights_only: passed to ``torch.load`` for ``.pth`` files.
    inplace_abn: whether the checkpoint's normalization layers are
      InPlace-ABN (``inplace_abn_scale``). Default: true for an SCHP
      checkpoint (one holding SCHP's context, edge, decoder or fusion
      tensors), false otherwise.

  Returns:
    ``(variables, report)``.

  Raises:
    FileNotFoundError, ImportError: see ``load_torch_state_dict``.
    ValueError: on source tensors without a target or with the wrong shape.
  """
  state_dict = _as_state_dict(source, weights_only)
  state_dict, dropped = split_schp_backbone(state_dict)
  if inplace_abn is None:
    inplace_abn = bool(dropped)
  variables, report = import_resnet(state_dict, variables, prefix,
                                    inplace_abn=inplace_abn)
  report.ignored.extend(dropped)
  if inplace_abn:
    logging.info('InPlace-ABN weights imported as BatchNorm scales '
                 '|weight| + %g', INPLACE_ABN_EPS)
  return variables, report


# The parts of an SCHP AugmentCE2P checkpoint that are not its ResNet.
SCHP_HEAD_PREFIXES = ('context_encoding.', 'edge.', 'decoder.', 'fushion.')


def split_schp_backbone(
    state_dict: Mapping[str, np.ndarray]) -> tuple[dict, list[str]]:
  """Keeps the ResNet tensors of an SCHP checkpoint (a no-op for torchvision).

  An SCHP checkpoint initializes an sst_jax parser's backbone (deep stem,
  ResNet-101): its context, edge, decoder and fusion modules have no
  counterpart in the CE2P-style parser and are reported as ignored.

  Returns:
    ``(backbone_state_dict, dropped_names)``.
  """
  kept, dropped = {}, []
  for name, value in state_dict.items():
    if name.startswith(SCHP_HEAD_PREFIXES):
      dropped.append(name)
    else:
      kept[name] = value
  return kept, sorted(dropped)


# --------------------------------------------------------------------------
# SCHP AugmentCE2P checkpoints.
# --------------------------------------------------------------------------


def _schp_module_table(num_bins: int) -> dict[tuple[str, ...], str]:
  """Flax module path (outside the backbone) -> SCHP module name."""
  table = {}

  def conv_abn(flax_path, torch_seq, first_index):
    table[flax_path + ('conv',)] = f'{torch_seq}.{first_index}'
    table[flax_path + ('bn',)] = f'{torch_seq}.{first_index + 1}'

  for i in range(num_bins):
    # nn.Sequential(AdaptiveAvgPool2d, Conv2d, InPlaceABNSync).
    conv_abn(('context_encoding', f'stage_{i}'),
             f'context_encoding.stages.{i}', 1)
  conv_abn(('context_encoding', 'bottleneck'), 'context_encoding.bottleneck',
           0)
  for i in (1, 2, 3):
    conv_abn(('edge', f'conv{i}'), f'edge.conv{i}', 0)
  table[('edge', 'conv4')] = 'edge.conv4'
  table[('edge', 'conv5')] = 'edge.conv5'
  conv_abn(('decoder', 'conv1'), 'decoder.conv1', 0)
  conv_abn(('decoder', 'conv2'), 'decoder.conv2', 0)
  conv_abn(('decoder', 'conv3_0'), 'decoder.conv3', 0)
  conv_abn(('decoder', 'conv3_1'), 'decoder.conv3', 2)
  table[('decoder', 'conv4')] = 'decoder.conv4'
  # nn.Sequential(Conv2d, InPlaceABNSync, Dropout2d, Conv2d).
  conv_abn(('fushion_0',), 'fushion', 0)
  table[('fushion_3',)] = 'fushion.3'
  return table


def schp_name_fn(num_bins: int = 4) -> NameFn:
  """Names SCHP's ``AugmentCE2P`` state dict uses for ``schp.AugmentCE2P``."""
  table = _schp_module_table(num_bins)
  backbone = resnet_name_fn('')

  def name_fn(path, leaf):
    if leaf not in _LEAF_NAMES:
      return None
    if path[:1] == ('backbone',):
      return backbone(path[1:], leaf)  # SCHP's backbone keys are top level.
    module = table.get(tuple(path))
    return None if module is None else f'{module}.{_LEAF_NAMES[leaf]}'

  return name_fn


def _require(state_dict: Mapping[str, Any], name: str) -> tuple[int, ...]:
  if name not in state_dict:
    raise ValueError(f'not an SCHP AugmentCE2P state dict: no tensor {name!r}')
  return tuple(state_dict[name].shape)


def schp_config_from_state_dict(
    state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Reads ``AugmentCE2P`` attributes off an SCHP state dict's shapes.

  Args:
    state_dict: name -> anything with a ``.shape``.

  Returns:
    ``{'num_classes': int, 'backbone': str, 'width': int, ...}``: keyword
    arguments for ``schp.AugmentCE2P`` (``num_classes`` as a count).

  Raises:
    ValueError: if a needed tensor is missing or the block counts match no
      registered ResNet.
  """
  block = 'bottleneck' if 'layer1.0.conv3.weight' in state_dict else 'basic'
  sizes = []
  for i in range(1, 5):
    idx = {int(m.group(1)) for k in state_dict
           if (m := re.match(rf'layer{i}\.(\d+)\.', k))}
    sizes.append(max(idx) + 1 if idx else 0)
  matches = [n for n, (b, s) in resnet.RESNET_SPECS.items()
             if b == block and tuple(s) == tuple(sizes)]
  if not matches:
    raise ValueError(f'SCHP state dict has a {block} ResNet with blocks '
                     f'{tuple(sizes)}, which matches no registered backbone')
  num_bins = len({m.group(1) for k in state_dict
                  if (m := re.match(r'context_encoding\.stages\.(\d+)\.', k))})
  bins = (1, 2, 3, 6)
  if num_bins != len(bins):
    raise ValueError(f'SCHP state dict has {num_bins} PSP stages, expected '
                     f'{len(bins)} (bins {bins})')
  return dict(
      num_classes=_require(state_dict, 'fushion.3.weight')[0],
      backbone=matches[0],
      width=_require(state_dict, 'conv1.weight')[0],
      context_features=_require(state_dict,
                                'context_encoding.bottleneck.0.weight')[0],
      edge_features=_require(state_dict, 'edge.conv1.0.weight')[0],
      decoder_features=_require(state_dict, 'decoder.conv1.0.weight')[0],
      skip_features=_require(state_dict, 'decoder.conv2.0.weight')[0],
      fusion_features=_require(state_dict, 'fushion.0.weight')[0],
      psp_bins=bins)


def abstract_variables(module, image_size: tuple[int, int] = (64, 64)):
  """``jax.eval_shape`` of ``module.init``: shapes only, no allocation."""
  image = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
  return jax.eval_shape(
      lambda x: module.init(jax.random.key(0), x, train=False), image)


def import_schp(
    source: Union[PathLike, Mapping[str, Any]],
    domain: str,
    *,
    dtype: Any = jnp.float32,
    weights_only: bool = True,
    implementations: fast_paths.Implementations | None = None,
) -> tuple[schp.AugmentCE2P, dict[str, Any]]:
  """Builds an SCHP parser for ``domain`` from an SCHP checkpoint.

  The public checkpoints are ``exp-schp-201908261155-lip.pth`` (LIP, 20
  classes), ``exp-schp-201908301523-atr.pth`` (ATR, 18) and
  ``exp-schp-201908270938-pascal-person-part.pth`` (PASCAL-Person-Part, 7).
  Every tensor of the checkpoint must load and every target leaf must be
  filled. SCHP's InPlace-ABN weights become BatchNorm scales
  ``|weight| + eps`` (``inplace_abn_scale``). Run the result with
  ``module.apply(variables, image)`` on images normalized by
  ``SCHP_PREPROCESSING``; ``logits[domain]`` is the fusion result at
  stride 4.

  Args:
    source: checkpoint path (``.pth``, ``.safetensors``, ``.npz``) or a state
      dict (``module.`` prefixes and a ``state_dict`` wrapper are handled).
    domain: ``'lip'``, ``'atr'``, ``'pascal_person_part'`` or another
      registered domain with the checkpoint's class count.
    dtype: computation dtype of the returned module.
    weights_only: passed to ``torch.load`` for ``.pth`` files.
    implementations: what the module runs (``fast_paths``); None: the
      plain forms. Entry points pass the backend's speed paths
      (``recipe.speed_paths()``).

  Returns:
    ``(module, variables)`` with ``variables = {'params', 'batch_stats'}``.

  Raises:
    KeyError: unknown domain.
    ValueError: class count differs from the domain's, or the checkpoint does
      not fit the architecture (names the tensors).
  """
  dom = domains.get_domain(domain)
  state_dict = _as_state_dict(source, weights_only)
  config = schp_config_from_state_dict(state_dict)
  num_classes = config.pop('num_classes')
  if num_classes != dom.num_classes:
    raise ValueError(
        f'SCHP checkpoint has {num_classes} classes (fushion.3.weight) but '
        f'domain {domain!r} has {dom.num_classes}; pick the checkpoint '
        'trained on that dataset')
  if implementations is None:
    implementations = fast_paths.Implementations()
  module = schp.AugmentCE2P(num_classes={domain: num_classes}, dtype=dtype,
                            implementations=implementations, **config)
  target = abstract_variables(module)
  variables, report = import_state_dict(
      state_dict, target, schp_name_fn(len(config['psp_bins'])),
      INPLACE_ABN_LEAF_FNS)
  if report.not_loaded:
    raise ValueError('SCHP checkpoint lacks tensors for: '
                     + ', '.join(report.not_loaded))
  return module, jax.tree.map(jnp.asarray, variables)
