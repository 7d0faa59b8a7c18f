"""Per-example transforms: random scale/crop/rotate, flip with label swap.

Images are uint8 ``[H, W, 3]``, labels uint8 ``[H, W]`` class-id maps, in
and out: normalization happens on the device, inside the compiled steps
(``steps.normalize_images``), so batches cross to it as uint8. Labels are only
ever resampled with nearest neighbour, so no transform can invent a class
value; padding uses the ignore id 255.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from sst_jax import interpolation
from sst_jax.domains import IGNORE_ID, Domain

# The network's input normalization, ``(pixel - IMAGENET_MEAN) /
# IMAGENET_STD`` in float32. Batches carry uint8 pixels; the compiled steps
# apply it (``steps.normalize_images``).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


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


def _rotation_matrix(degrees: float, size: tuple[int, int],
                     offset: tuple[int, int]) -> tuple[float, ...]:
  """PIL's ``Image.rotate`` affine matrix, shifted to a window at ``offset``.

  ``size`` is the rotated image's ``(height, width)``, ``offset`` the
  ``(top, left)`` of the output window in it. Output pixel ``(i, j)`` of the
  window is pixel ``(top + i, left + j)`` of ``Image.rotate``'s result.
  """
  angle = -math.radians(degrees % 360.0)
  a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
  d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
  cx, cy = size[1] / 2, size[0] / 2
  c = a * -cx + b * -cy + cx
  f = d * -cx + e * -cy + cy
  top, left = offset
  return (a, b, c + a * left + b * top, d, e, f + d * left + e * top)


def _window_source_box(matrix, crop_size, size, margin=2):
  """The pixels of the scaled image that a rotated crop window samples.

  ``matrix`` maps window pixels to scaled-image coordinates; an affine map
  takes the window to a parallelogram, so its corners bound it. ``margin``
  keeps the bilinear neighbours inside. Returns ``(top, left, bottom,
  right)``, clipped to the scaled image of ``size`` ``(height, width)``.
  """
  a, b, c, d, e, f = matrix
  us = np.array([0, crop_size[1], 0, crop_size[1]], np.float64)
  vs = np.array([0, 0, crop_size[0], crop_size[0]], np.float64)
  xs, ys = a * us + b * vs + c, d * us + e * vs + f
  top = min(max(int(math.floor(ys.min())) - margin, 0), size[0])
  left = min(max(int(math.floor(xs.min())) - margin, 0), size[1])
  bottom = min(max(int(math.ceil(ys.max())) + margin, 0), size[0])
  right = min(max(int(math.ceil(xs.max())) + margin, 0), size[1])
  return top, left, bottom, right


def _scaled_region(image, label, scaled_size, box):
  """``resize(image, label, scaled_size)[top:bottom, left:right]``, alone.

  PIL's ``resize(box=...)`` samples the same source positions with the same
  filter (the scale factor is unchanged), so only the region is computed.
  """
  h, w = label.shape
  top, left, bottom, right = box
  if scaled_size == (h, w):
    return image[top:bottom, left:right], label[top:bottom, left:right]
  fy, fx = h / scaled_size[0], w / scaled_size[1]
  src = (left * fx, top * fy, right * fx, bottom * fy)
  size = (right - left, bottom - top)
  image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR,
                                                   box=src))
  label = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST,
                                                   box=src))
  return image, label


def scale_rotate_crop(image: np.ndarray, label: np.ndarray,
                      scaled_size: tuple[int, int], degrees: float,
                      offset: tuple[int, int], crop_size: tuple[int, int]):
  """``resize`` -> ``rotate`` -> ``pad_to`` -> crop, computed for the crop only.

  The crop at ``offset`` (top, left) of the scaled (``scaled_size``),
  rotated (``degrees``, about the centre, as ``rotate``) and padded image.
  Only the source region the window needs is resized and only the window is
  rotated (with ``rotate``'s matrix, shifted), which makes the result equal
  to the full-image chain up to float rounding at sampling ties; window pixels
  past the scaled image's bottom/right edge get ``pad_to``'s fill.
  """
  sh, sw = scaled_size
  ch, cw = crop_size
  fill = IMAGENET_MEAN.astype(np.uint8)
  out_image = np.empty((ch, cw, 3), np.uint8)
  out_image[...] = fill
  out_label = np.full((ch, cw), IGNORE_ID, np.uint8)
  if degrees:
    matrix = _rotation_matrix(degrees, scaled_size, offset)
    box = _window_source_box(matrix, crop_size, scaled_size)
  else:
    box = (offset[0], offset[1], min(offset[0] + ch, sh),
           min(offset[1] + cw, sw))
  top, left, bottom, right = box
  if bottom <= top or right <= left:  # The window samples no image pixel.
    return out_image, out_label
  image, label = _scaled_region(image, label, scaled_size, box)
  if not degrees:
    out_image[:bottom - top, :right - left] = image
    out_label[:bottom - top, :right - left] = label
    return out_image, out_label
  a, b, c, d, e, f = matrix
  matrix = (a, b, c - left, d, e, f - top)  # Into region coordinates.
  out_image[...] = Image.fromarray(image).transform(
      (cw, ch), Image.AFFINE, matrix, Image.BILINEAR,
      fillcolor=tuple(int(v) for v in fill))
  out_label[...] = Image.fromarray(label).transform(
      (cw, ch), Image.AFFINE, matrix, Image.NEAREST, fillcolor=IGNORE_ID)
  rows, cols = max(sh - offset[0], 0), max(sw - offset[1], 0)
  out_image[rows:], out_image[:, cols:] = fill, fill
  out_label[rows:], out_label[:, cols:] = IGNORE_ID, IGNORE_ID
  return out_image, out_label


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
  return _color_jitter_float(image, rng, strength).astype(np.uint8)


def _color_jitter_float(image: np.ndarray, rng: np.random.Generator,
                        strength: float) -> np.ndarray:
  """``color_jitter`` before the uint8 cast: float32 holding whole numbers.

  Brightness ``b``, contrast ``c`` (about the image mean ``m`` after
  brightness) and saturation ``s`` (about each pixel's grey ``g``) compose to
  one affine map, ``b c (s x + (1 - s) g) + (1 - c) m``, evaluated in a few
  in-place passes; ``floor`` after the clip is the old uint8 truncation.
  """
  x = image.astype(np.float32)
  b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
  mean = np.float32(b) * x.mean(dtype=np.float32)
  grey = x[..., 0:1] + x[..., 1:2]  # The channel mean, without a slow
  grey += x[..., 2:3]                # reduction over a length-3 axis.
  grey /= np.float32(3)
  grey *= np.float32((1 - s) * b * c)
  grey += np.float32(1 - c) * mean
  x *= np.float32(s * b * c)
  x += grey
  np.clip(x, 0, 255, out=x)
  return np.floor(x, out=x)


def train_transform(record: dict, rng: np.random.Generator, domain: Domain,
                    crop_size: tuple[int, int], scale_range=(0.75, 1.25),
                    rotation: float = 0.0, flip: bool = True,
                    jitter: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """The human-parsing training augmentation.

  Random scale, optional rotation in ``[-rotation, rotation]`` degrees,
  pad-with-ignore and random crop to ``crop_size``, horizontal flip with the
  domain's left/right swap, optional colour jitter.

  Returns:
    ``(image, label)``: uint8 ``[h, w, 3]`` and ``[h, w]``.
  """
  image, label = record['image'], record['label']
  h, w = label.shape
  scale = rng.uniform(*scale_range)
  if scale != 1.0:
    h, w = max(int(h * scale + 0.5), 1), max(int(w * scale + 0.5), 1)
  degrees = rng.uniform(-rotation, rotation) if rotation else 0.0
  # The crop window in the scaled, rotated (same size) image padded to at
  # least crop_size. Drawn before any resampling, so that only the window is
  # resampled (scale_rotate_crop); the random draws are those of the
  # resize -> rotate -> pad_to -> crop chain it computes.
  y = rng.integers(0, max(h, crop_size[0]) - crop_size[0] + 1)
  x = rng.integers(0, max(w, crop_size[1]) - crop_size[1] + 1)
  image, label = scale_rotate_crop(image, label, (h, w), degrees, (y, x),
                                   crop_size)
  if flip and rng.random() < 0.5:
    image, label = hflip(image, label, domain)
  if jitter:
    image = color_jitter(image, rng, jitter)
  return image, np.ascontiguousarray(label)


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
  src = (np.arange(orig) + 0.5) * (resized / orig) - 0.5
  return interpolation.linear_weights(np.clip(src, 0, resized - 1), resized,
                                      canvas_in, canvas_out)


def eval_transform(record: dict, input_size: int, label_size: int) -> dict:
  """Fits the image into an ``input_size`` square, keeps the label as is.

  The label stays at its original resolution (padded with ignore to a
  ``label_size`` square) so scores are computed on the original pixels; the
  ``resize_h``/``resize_w`` matrices map predictions back to it exactly.

  Returns:
    ``{'image': uint8 [S, S, 3], 'image_hw': int32 [2], 'label': uint8
    [L, L], 'resize_h', 'resize_w': float32 [L, S]}``: the image resized
    into the top-left ``image_hw`` of the canvas, the rest filled with the
    mean colour; ``steps.normalize_images`` sets that padding to exactly 0.
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
  canvas = np.empty((input_size, input_size, 3), np.uint8)
  canvas[...] = IMAGENET_MEAN.astype(np.uint8)
  canvas[:nh, :nw] = image
  lab = np.full((label_size, label_size), IGNORE_ID, np.uint8)
  lab[:h, :w] = label
  return {
      'image': canvas,
      'image_hw': np.array([nh, nw], np.int32),
      'label': lab,
      'resize_h': eval_resize_matrix(h, nh, input_size, label_size),
      'resize_w': eval_resize_matrix(w, nw, input_size, label_size),
  }
