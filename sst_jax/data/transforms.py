"""Per-example transforms: random scale/crop/rotate, flip with label swap.

Images are uint8 ``[H, W, 3]``, labels uint8 ``[H, W]`` class-id maps.
Labels are only ever resampled with nearest neighbour, so no transform can
invent a class value; padding uses the ignore id 255.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from sst_jax.domains import IGNORE_ID, Domain

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def normalize(image: np.ndarray) -> np.ndarray:
  """uint8 RGB -> float32, ImageNet mean/std."""
  return (image.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD


def hflip(image: np.ndarray, label: np.ndarray | None, domain: Domain):
  """Horizontal flip; the label's left/right classes swap (domain pairs)."""
  image = image[:, ::-1]
  if label is not None:
    label = domain.flip_label_lut()[label[:, ::-1]]
  return image, label


def resize(image: np.ndarray, label: np.ndarray | None, size: tuple[int, int]):
  """Resizes to ``(height, width)``: bilinear image, nearest-neighbour label."""
  h, w = size
  image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
  if label is not None:
    label = np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
  return image, label


def rotate(image: np.ndarray, label: np.ndarray, degrees: float):
  """Rotation about the centre; exposed label corners become ignore."""
  image = np.asarray(Image.fromarray(image).rotate(
      degrees, Image.BILINEAR, fillcolor=tuple(int(v) for v in IMAGENET_MEAN)))
  label = np.asarray(Image.fromarray(label).rotate(
      degrees, Image.NEAREST, fillcolor=IGNORE_ID))
  return image, label


def pad_to(image: np.ndarray, label: np.ndarray, size: tuple[int, int]):
  """Pads bottom/right up to ``size``: mean colour, ignore label."""
  h, w = label.shape
  ph, pw = max(size[0] - h, 0), max(size[1] - w, 0)
  if ph == 0 and pw == 0:
    return image, label
  fill = IMAGENET_MEAN.astype(np.uint8)
  padded = np.empty((h + ph, w + pw, 3), np.uint8)
  padded[...] = fill
  padded[:h, :w] = image
  lab = np.full((h + ph, w + pw), IGNORE_ID, np.uint8)
  lab[:h, :w] = label
  return padded, lab


def color_jitter(image: np.ndarray, rng: np.random.Generator,
                 strength: float) -> np.ndarray:
  """Random brightness, contrast and saturation in ``1 +- strength``."""
  x = image.astype(np.float32)
  b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
  x = x * b
  mean = x.mean()
  x = (x - mean) * c + mean
  grey = x.mean(axis=-1, keepdims=True)
  x = (x - grey) * s + grey
  return np.clip(x, 0, 255).astype(np.uint8)


def train_transform(record: dict, rng: np.random.Generator, domain: Domain,
                    crop_size: tuple[int, int], scale_range=(0.75, 1.25),
                    rotation: float = 0.0, flip: bool = True,
                    jitter: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """The human-parsing training augmentation.

  Random scale, optional rotation in ``[-rotation, rotation]`` degrees,
  pad-with-ignore and random crop to ``crop_size``, horizontal flip with the
  domain's left/right swap, optional colour jitter.

  Returns:
    ``(image, label)``: float32 normalized ``[h, w, 3]``, uint8 ``[h, w]``.
  """
  image, label = record['image'], record['label']
  h, w = label.shape
  scale = rng.uniform(*scale_range)
  if scale != 1.0:
    image, label = resize(image, label, (max(int(h * scale + 0.5), 1),
                                         max(int(w * scale + 0.5), 1)))
  if rotation:
    image, label = rotate(image, label, rng.uniform(-rotation, rotation))
  image, label = pad_to(image, label, crop_size)
  h, w = label.shape
  y = rng.integers(0, h - crop_size[0] + 1)
  x = rng.integers(0, w - crop_size[1] + 1)
  image = image[y:y + crop_size[0], x:x + crop_size[1]]
  label = label[y:y + crop_size[0], x:x + crop_size[1]]
  if flip and rng.random() < 0.5:
    image, label = hflip(image, label, domain)
  if jitter:
    image = color_jitter(image, rng, jitter)
  return normalize(image), np.ascontiguousarray(label)


def eval_resize_matrix(orig: int, resized: int, canvas_in: int,
                       canvas_out: int) -> np.ndarray:
  """Bilinear weights from input-canvas pixels back to original pixels.

  The image (``orig`` pixels along this axis) was resized to ``resized``
  pixels and placed at the start of a ``canvas_in`` input canvas. Row ``y``
  of the result (``y < orig``) holds the weights that sample the network's
  input-resolution output at original pixel ``y``; rows past ``orig`` (label
  padding) are zero.

  Returns:
    float32 ``[canvas_out, canvas_in]``.
  """
  m = np.zeros((canvas_out, canvas_in), np.float32)
  src = (np.arange(orig) + 0.5) * (resized / orig) - 0.5
  src = np.clip(src, 0, resized - 1)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, resized - 1)
  frac = (src - lo).astype(np.float32)
  rows = np.arange(orig)
  np.add.at(m, (rows, lo), 1 - frac)
  np.add.at(m, (rows, hi), frac)
  return m


def eval_transform(record: dict, input_size: int, label_size: int) -> dict:
  """Fits the image into an ``input_size`` square, keeps the label as is.

  The label stays at its original resolution (padded with ignore to a
  ``label_size`` square) so scores are computed on the original pixels; the
  ``resize_h``/``resize_w`` matrices map predictions back to it exactly.
  """
  image, label = record['image'], record['label']
  h, w = label.shape
  if h > label_size or w > label_size:
    raise ValueError(f'example {record.get("id", "?")!s} is {h}x{w}, larger '
                     f'than eval.label_size={label_size}')
  r = input_size / max(h, w)
  nh, nw = min(max(int(round(h * r)), 1), input_size), min(
      max(int(round(w * r)), 1), input_size)
  if (nh, nw) != (h, w):
    image, _ = resize(image, None, (nh, nw))
  canvas = np.empty((input_size, input_size, 3), np.float32)
  canvas[...] = 0.0  # the normalized mean colour
  canvas[:nh, :nw] = normalize(image)
  lab = np.full((label_size, label_size), IGNORE_ID, np.uint8)
  lab[:h, :w] = label
  return {
      'image': canvas,
      'label': lab,
      'resize_h': eval_resize_matrix(h, nh, input_size, label_size),
      'resize_w': eval_resize_matrix(w, nw, input_size, label_size),
  }
