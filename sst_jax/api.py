"""``sst_jax.Parser``: parse your own images from Python.

    parser = sst_jax.Parser.load('/path/to/workdir_or_export')
    label = parser.parse('photo.jpg', domain='cihp', flip=True)  # uint8 [H, W]
    labels = parser.parse_all('photo.jpg')                        # per domain

A model is a training workdir (latest checkpoint), an export directory
(``python -m sst_jax.export``) or an SCHP checkpoint file
(``Parser.load('exp-schp-201908261155-lip.pth', domain='lip')``).

Each image is decoded (EXIF orientation applied, alpha composited on white,
greyscale/palette converted to RGB), fitted into the model's square input
(aspect kept, padded), run through the network with optional flip and
multi-scale test-time augmentation, and the logits are bilinearly mapped back
to the image's original size before the argmax. An SCHP checkpoint runs
SCHP's own pipeline instead: its centred affine fit, BGR normalization and
logit averaging over test-time views (see ``docs/pretrained.md``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Iterable, Sequence, Union

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sst_jax import domains as domains_lib
from sst_jax import export as export_lib
from sst_jax import interpolation
from sst_jax import recipe
from sst_jax import steps
from sst_jax.data import transforms
from sst_jax.models import layers

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


class ImageReadError(ValueError):
  """An input image could not be read or decoded."""


# --------------------------------------------------------------------------
# Image decoding.
# --------------------------------------------------------------------------


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
  """Any PIL mode -> uint8 RGB; transparency is composited on white."""
  image = ImageOps.exif_transpose(image)
  if image.mode in ('I;16', 'I;16B', 'I;16L', 'I;16N'):
    grey = np.asarray(image).astype(np.float32) / 257.0
    return np.repeat(np.round(grey).astype(np.uint8)[..., None], 3, -1)
  if image.mode == 'P' and 'transparency' in image.info:
    image = image.convert('RGBA')
  if image.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La'):
    image = image.convert('RGBA')
    white = Image.new('RGBA', image.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, image)
  return np.asarray(image.convert('RGB'))


def read_image(image: ImageLike) -> np.ndarray:
  """Decodes an image to uint8 RGB ``[H, W, 3]``.

  Args:
    image: a path (any format PIL reads; EXIF orientation is applied), a PIL
      image, or a uint8 array ``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]``
      (RGBA: composited on white).

  Raises:
    ImageReadError: naming the file when it is missing or not decodable, or
      describing a bad array.
  """
  if isinstance(image, Image.Image):
    return _pil_to_rgb(image)
  if isinstance(image, np.ndarray):
    if image.dtype != np.uint8:
      raise ImageReadError(f'image arrays must be uint8, got {image.dtype}')
    if image.ndim == 3 and image.shape[-1] == 1:
      image = image[..., 0]
    if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4)):
      return _pil_to_rgb(Image.fromarray(np.ascontiguousarray(image)))
    raise ImageReadError(f'expected an [H, W], [H, W, 3] or [H, W, 4] image '
                         f'array, got shape {image.shape}')
  path = os.fspath(image)
  try:
    with Image.open(path) as f:
      f.load()
      return _pil_to_rgb(f)
  except FileNotFoundError:
    raise ImageReadError(f'{path}: no such file') from None
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise ImageReadError(f'{path}: cannot be decoded as an image ({e})'
                         ) from None


# --------------------------------------------------------------------------
# Fitting images into the network input and mapping predictions back.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where an image sits in the network input, per axis.

  Original pixel centre ``y`` (row) lies at input coordinate
  ``scale[0] * y + offset[0]`` (pixel-centre units), columns likewise;
  ``limit`` bounds the input region the image covers.
  """
  size: tuple[int, int]
  scale: tuple[float, float]
  offset: tuple[float, float]
  limit: tuple[int, int]


def map_back(logits: np.ndarray, layout: Layout) -> np.ndarray:
  """Input-resolution ``[S, S, C]`` -> original ``[H, W, C]`` (bilinear)."""
  s_h, s_w = logits.shape[:2]
  (h, w), (ah, aw), (bh, bw) = layout.size, layout.scale, layout.offset
  # Clipped to the image's extent: the padding is never read.
  lh, lw = layout.limit
  mh = interpolation.linear_weights(
      np.clip(ah * np.arange(h) + bh, 0, lh - 1), lh, s_h)
  mw = interpolation.linear_weights(
      np.clip(aw * np.arange(w) + bw, 0, lw - 1), lw, s_w)
  rows = (mh @ logits.reshape(s_h, -1)).reshape(h, s_w, -1)
  return np.matmul(mw, rows)


def fit_pad(image: np.ndarray, input_size: int) -> tuple[np.ndarray, Layout]:
  """Resize keeping aspect (longer side = ``input_size``), pad bottom/right.

  As in evaluation (``transforms.eval_transform``), the canvas stays uint8
  and the compiled forward normalizes it (``steps.normalize_images``, with
  ``layout.limit`` as the image's extent): the padding is then exactly the
  ImageNet mean colour, 0 after normalization.

  Returns:
    ``(uint8 [S, S, 3], layout)``.
  """
  h, w = image.shape[:2]
  r = input_size / max(h, w)
  nh = min(max(int(round(h * r)), 1), input_size)
  nw = min(max(int(round(w * r)), 1), input_size)
  if (nh, nw) != (h, w):
    image, _ = transforms.resize(image, None, (nh, nw))
  canvas = np.empty((input_size, input_size, 3), np.uint8)
  canvas[...] = transforms.IMAGENET_MEAN.astype(np.uint8)
  canvas[:nh, :nw] = image
  # PIL resizes with pixel centres aligned: y -> (y + 0.5) * nh / h - 0.5.
  return canvas, Layout((h, w), (nh / h, nw / w),
                        (0.5 * nh / h - 0.5, 0.5 * nw / w - 0.5), (nh, nw))


def _zero_border_taps(coords: np.ndarray,
                      size: int) -> tuple[np.ndarray, np.ndarray]:
  """Bilinear taps of sample positions along one axis, zero outside.

  Position ``c`` (pixel-centre units) reads ``(1 - f) * v[i] + f * v[i + 1]``
  with ``i = floor(c)``, ``f = c - i``; a tap outside ``[0, size)`` reads 0,
  as OpenCV's ``BORDER_CONSTANT`` with value 0 does.

  Returns:
    ``(index, weight)``, both ``[N, 2]``: gather indices clipped into range
    and their weights (0 for taps outside).
  """
  lo = np.floor(coords).astype(np.int64)
  frac = coords - lo
  index = np.stack([lo, lo + 1], axis=1)
  weight = np.stack([1.0 - frac, frac], axis=1)
  weight = np.where((index >= 0) & (index < size), weight, 0.0)
  return np.clip(index, 0, size - 1), weight


def warp_scale_translate(image: np.ndarray, scale: float,
                         shift: tuple[float, float],
                         out_size: tuple[int, int]) -> np.ndarray:
  """``cv2.warpAffine`` of a uint8 image by ``[[k, 0, tx], [0, k, ty]]``.

  Bilinear, zero border, output rounded to uint8: output pixel ``(x, y)``
  samples the image at ``((x - tx) / k, (y - ty) / k)``. The map has no
  rotation, so the warp is separable (rows, then columns). OpenCV rounds
  sample positions to 1/32 pixel and weights to fixed point; this does not,
  so the two agree exactly where the positions are whole pixels and differ
  by about a grey level elsewhere.

  Args:
    image: uint8 ``[H, W, C]``.
    scale: ``k``.
    shift: ``(ty, tx)``.
    out_size: ``(out_h, out_w)``.

  Returns:
    uint8 ``[out_h, out_w, C]``.
  """
  x = image
  for axis, (t, n) in enumerate(zip(shift, out_size)):
    index, weight = _zero_border_taps((np.arange(n) - t) / scale,
                                      image.shape[axis])
    shape = [1] * x.ndim
    shape[axis] = n
    # Gather first: only the sampled rows/columns become float64.
    x = sum(np.take(x, index[:, j], axis=axis).astype(np.float64)
            * weight[:, j].reshape(shape) for j in (0, 1))
  return np.floor(x + 0.5).astype(np.uint8)


def fit_schp(image: np.ndarray, input_size: int) -> tuple[np.ndarray, Layout]:
  """SCHP's centred affine fit (``simple_extractor.py``), zero border.

  The map is ``pretrained.schp_affine_matrix``, SCHP's own, applied as
  SCHP's ``cv2.warpAffine`` does (``warp_scale_translate``). Where it copies
  pixels (scale 1, integer shift: e.g. a 473 x 473 photo at LIP's input, or
  one with width 473 and an odd height) the network input equals SCHP's
  exactly; elsewhere OpenCV's 1/32-pixel positions make the two differ by
  about a grey level.

  Returns:
    ``(SCHP-normalized float32 [S, S, 3] in BGR order, layout)``.
  """
  from sst_jax.models import pretrained  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  m = pretrained.schp_affine_matrix(h, w, (input_size, input_size))
  k, tx, ty = float(m[0, 0]), float(m[0, 2]), float(m[1, 2])
  warped = warp_scale_translate(image, k, (ty, tx), (input_size, input_size))
  canvas = pretrained.schp_preprocess(warped)
  return canvas, Layout((h, w), (k, k), (ty, tx), (input_size, input_size))


class _UpsampleAlignCorners:
  """Wraps an SCHP module: logits upsampled to the input, align_corners=True.

  ``steps.predict_logits`` calls ``model.apply(variables, x, train=False,
  heads=...)``; SCHP upsamples its stride-4 fusion logits with
  ``align_corners=True``, done here before ``predict_logits``'s own (then
  identity) resize.
  """

  def __init__(self, module):
    self.module = module

  def apply(self, variables, image, train=False, heads=None):
    logits, aux = self.module.apply(variables, image, train=train,
                                    heads=heads)
    size = image.shape[1:3]
    return {k: layers.resize_bilinear(v, size, align_corners=True)
            for k, v in logits.items()}, aux


# --------------------------------------------------------------------------
# The Parser.
# --------------------------------------------------------------------------


class Parser:
  """A loaded human parser: decode, fit, predict with TTA, map back.

  Attributes:
    module: the Flax module (``models.ParsingNetwork`` or
      ``models.schp.AugmentCE2P``).
    variables: its ``{'params', 'batch_stats'}``.
    label_domains: ``{name: domains.Domain}`` of the heads, in model order.
    default_domain: the domain ``parse`` uses when none is given.
    input_size: side of the square network input.
    preprocessing: ``'imagenet'`` (aspect-kept resize, bottom/right pad) or
      ``'schp'`` (SCHP's centred affine fit, BGR normalization).
    average: how flip / multi-scale views are combined by default:
      ``'probs'`` (mean probability; sst_jax's evaluation rule) or
      ``'logits'`` (mean logit; SCHP's rule, the default for SCHP models).
  """

  def __init__(self, module, variables, label_domains: Sequence[Any], *,
               input_size: int, preprocessing: str = 'imagenet',
               default_domain: str | None = None, source: str = '',
               average: str | None = None):
    if preprocessing not in ('imagenet', 'schp'):
      raise ValueError(f"preprocessing must be 'imagenet' or 'schp', got "
                       f'{preprocessing!r}')
    average = average or ('logits' if preprocessing == 'schp' else 'probs')
    if average not in ('probs', 'logits'):
      raise ValueError(f"average must be 'probs' or 'logits', got "
                       f'{average!r}')
    self.average = average
    self.module = module
    self.label_domains = {d.name: d for d in label_domains}
    self.default_domain = default_domain or next(iter(self.label_domains))
    self.input_size = int(input_size)
    self.preprocessing = preprocessing
    self.source = source
    # Placed once; every call reuses the device copy.
    self.variables = jax.device_put(jax.tree.map(jnp.asarray, variables))
    self._apply_model = (_UpsampleAlignCorners(module)
                         if preprocessing == 'schp' else module)
    self._fns = {}

  # Loading.

  @classmethod
  def load(cls, path: str | os.PathLike, domain: str | None = None,
           input_size: int | None = None) -> 'Parser':
    """Loads a training workdir, an export directory or an SCHP checkpoint.

    Args:
      path: a workdir (``<path>/checkpoints``), an export directory
        (``<path>/export.json``), both local or ``gs://`` (``etils.epath``),
        or an SCHP ``.pth``/``.safetensors``/``.npz`` file.
      domain: the SCHP checkpoint's domain (``'lip'``, ``'atr'``,
        ``'pascal_person_part'``); for other models, the default domain of
        ``parse``.
      input_size: network input side (default: the training config's
        ``data.eval_input_size``; SCHP: 473 for LIP, 512 otherwise).

    Raises:
      FileNotFoundError: if ``path`` is none of the above.
      ValueError: for an SCHP file without ``domain``, or an unknown domain.
    """
    path = os.fspath(path)
    if (epath.Path(path) / export_lib.META_FILE).is_file():
      module, variables, info = export_lib.load_exported(path)
      doms = export_lib.domains_of(info)
      size = input_size or info['preprocessing']['input_size']
      default = info.get('target') or None
    elif (epath.Path(path) / 'checkpoints').is_dir():
      meta, params, model_state, _ = export_lib.load_checkpoint(path)
      doms = export_lib.domains_of(meta)
      heads = [d.name for d in doms]
      variables = export_lib.inference_variables(params, model_state, heads)
      module = export_lib.build_parser(meta, heads)
      size = input_size or export_lib.input_size_of(meta)
      default = meta.get('target') or None
    elif epath.Path(path).is_file():
      return cls._load_schp(path, domain, input_size)
    else:
      raise FileNotFoundError(
          f'{path}: not a training workdir (no checkpoints/), an export '
          f'directory (no {export_lib.META_FILE}) or a checkpoint file')
    names = [d.name for d in doms]
    if domain is not None and domain not in names:
      raise ValueError(f'unknown domain {domain!r}; this model has: '
                       f'{", ".join(names)}')
    return cls(module, variables, doms, input_size=size,
               default_domain=domain or (default if default in names
                                         else None), source=path)

  @classmethod
  def _load_schp(cls, path, domain, input_size):
    from sst_jax.models import pretrained  # pylint: disable=g-import-not-at-top
    if not domain:
      raise ValueError(f'{path}: an SCHP checkpoint needs its domain '
                       "(domain='lip', 'atr' or 'pascal_person_part')")
    module, variables = pretrained.import_schp(
        path, domain, implementations=recipe.speed_paths())
    size = input_size or pretrained.SCHP_PREPROCESSING.input_sizes.get(
        domain, (473, 473))[0]
    return cls(module, variables, [domains_lib.get_domain(domain)],
               input_size=size, preprocessing='schp', source=path)

  # Introspection.

  @property
  def domains(self) -> tuple[str, ...]:
    """Names of the model's label domains (one head each)."""
    return tuple(self.label_domains)

  def resolve_domains(self, domain: str | Iterable[str] | None) -> list[str]:
    """``None`` -> default, ``'all'`` -> every head, names -> checked list.

    Raises:
      ValueError: listing the model's domains when a name is unknown.
    """
    if domain is None:
      return [self.default_domain]
    names = [domain] if isinstance(domain, str) else list(domain)
    if names == ['all']:
      return list(self.label_domains)
    unknown = [n for n in names if n not in self.label_domains]
    if unknown:
      raise ValueError(f'unknown domain {", ".join(map(repr, unknown))}; '
                       f'this model has: {", ".join(self.label_domains)}')
    return names

  # Prediction.

  def _forward(self, heads: tuple[str, ...], flip: bool,
               scales: tuple[float, ...], average: str):
    """The jitted forward for one (heads, flip, scales, average)."""
    key = (heads, flip, scales, average)
    if key not in self._fns:
      perms = ({h: self.label_domains[h].flip_permutation for h in heads}
               if flip else None)
      self._fns[key] = jax.jit(functools.partial(
          steps.predict_logits, model=self._apply_model, heads=heads,
          flip_perms=perms, scales=scales, average=average))
    return self._fns[key]

  def fit(self, image: np.ndarray) -> tuple[np.ndarray, Layout]:
    """Network input ``[S, S, 3]`` and layout of an RGB image.

    The input is the uint8 canvas (``fit_pad``), or for SCHP preprocessing
    the float32 BGR-normalized one (``fit_schp``).
    """
    fit_fn = fit_schp if self.preprocessing == 'schp' else fit_pad
    return fit_fn(image, self.input_size)

  def predict_batch(self, images: Sequence[np.ndarray],
                    domains: Sequence[str], *, flip: bool = False,
                    scales: Sequence[float] = (1.0,),
                    batch_size: int | None = None,
                    average: str | None = None) -> list[dict]:
    """Scores of decoded RGB images at their original sizes.

    Args:
      images: uint8 ``[H_i, W_i, 3]`` images (sizes may differ).
      domains: heads to compute (checked names).
      flip: add the horizontally flipped view (left/right channels swapped
        back with each domain's flip permutation).
      scales: input scales averaged over.
      batch_size: pad the batch to this many images so that every batch
        reuses one compiled function (default: ``len(images)``).
      average: ``'probs'`` or ``'logits'``, how several views are combined
        (default: ``self.average``).

    Returns:
      per image, ``{domain: float32 [H_i, W_i, C]}``: logits (one view), the
      averaged logits (``average='logits'``) or the log of the averaged
      probabilities (``average='probs'``).
    """
    fitted = [self.fit(im) for im in images]
    batch = np.stack([c for c, _ in fitted])
    # The uint8 canvases' extents: their padding normalizes to exactly 0.
    image_hw = (np.array([layout.limit for _, layout in fitted], np.int32)
                if batch.dtype == np.uint8 else None)
    pad = max((batch_size or len(images)) - len(images), 0)
    if pad:
      batch = np.concatenate([batch, np.zeros((pad,) + batch.shape[1:],
                                              batch.dtype)])
      if image_hw is not None:
        image_hw = np.concatenate([image_hw, np.zeros((pad, 2), np.int32)])
    fn = self._forward(tuple(domains), bool(flip),
                       tuple(float(s) for s in scales),
                       average or self.average)
    logits = jax.device_get(fn(self.variables, batch, image_hw=image_hw))
    return [{d: map_back(np.asarray(logits[d][i]), layout) for d in domains}
            for i, (_, layout) in enumerate(fitted)]

  def logits(self, image: ImageLike, domain: str | None = None, *,
             flip: bool = False, scales: Sequence[float] = (1.0,),
             average: str | None = None) -> np.ndarray:
    """float32 ``[H, W, C]`` scores of one domain at the original size."""
    name, = self.resolve_domains(domain)
    return self.predict_batch([read_image(image)], [name], flip=flip,
                              scales=scales, average=average)[0][name]

  def probabilities(self, image: ImageLike, domain: str | None = None, *,
                    flip: bool = False, scales: Sequence[float] = (1.0,),
                    average: str | None = None) -> np.ndarray:
    """float32 ``[H, W, C]`` class probabilities at the original size."""
    return softmax(self.logits(image, domain, flip=flip, scales=scales,
                               average=average))

  def parse(self, image: ImageLike, domain: str | None = None, *,
            flip: bool = False, scales: Sequence[float] = (1.0,),
            average: str | None = None) -> np.ndarray:
    """uint8 ``[H, W]`` class ids of ``domain`` at the image's original size.

    Args:
      image: a path, PIL image or uint8 array (see ``read_image``).
      domain: a head name (default: ``default_domain``).
      flip: flip test-time augmentation.
      scales: multi-scale test-time augmentation, e.g. ``(0.75, 1, 1.25)``.
      average: ``'probs'`` (mean probability) or ``'logits'`` (mean logit,
        SCHP's rule) over the views; default ``self.average``.
    """
    return argmax(self.logits(image, domain, flip=flip, scales=scales,
                              average=average))

  def parse_all(self, image: ImageLike, *, flip: bool = False,
                scales: Sequence[float] = (1.0,),
                average: str | None = None) -> dict[str, np.ndarray]:
    """``{domain: uint8 [H, W]}`` for every head (one forward pass)."""
    out = self.predict_batch([read_image(image)], self.domains, flip=flip,
                             scales=scales, average=average)[0]
    return {d: argmax(v) for d, v in out.items()}

  def __repr__(self):
    return (f'Parser({self.source!r}, domains={list(self.domains)}, '
            f'input_size={self.input_size}, '
            f'preprocessing={self.preprocessing!r}, '
            f'average={self.average!r})')


def softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def argmax(logits: np.ndarray) -> np.ndarray:
  return np.argmax(logits, axis=-1).astype(np.uint8)
