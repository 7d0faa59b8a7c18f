"""Colour-coded label maps, overlays, legends, image grids and PNG output.

Shared by evaluation, prediction and the docs. Everything here works on
numpy arrays; PIL is used only for text and PNG files.
"""

from __future__ import annotations

import os
from typing import Sequence

from etils import epath
import numpy as np
from PIL import Image, ImageDraw, ImageFont

_WHITE = (255, 255, 255)


def colorize(label: np.ndarray, palette: np.ndarray,
             ignore_color: Sequence[int] = _WHITE) -> np.ndarray:
  """Maps class ids to palette colours.

  Args:
    label: integer array ``[H, W]`` of class ids.
    palette: uint8 ``[C, 3]``; colour of class ``c`` is ``palette[c]``.
    ignore_color: colour of values ``>= C`` (e.g. the ignore id 255) and of
      negative values.

  Returns:
    uint8 ``[H, W, 3]``.
  """
  palette = np.asarray(palette, np.uint8).reshape(-1, 3)
  lut = np.empty((257, 3), np.uint8)
  lut[:] = np.asarray(ignore_color, np.uint8)
  n = min(len(palette), 256)
  lut[:n] = palette[:n]
  # Anything outside [0, C) lands on an ignore-coloured entry.
  index = np.asarray(label).astype(np.int64)
  index = np.where((index < 0) | (index >= n), 256, index)
  return lut[index]


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray,
            alpha: float = 0.5) -> np.ndarray:
  """Blends a colour-coded label map over an image.

  Background (class 0) pixels keep the image unchanged.

  Args:
    image: uint8 ``[H, W, 3]`` (or ``[H, W]`` grey).
    label: integer ``[H, W]`` class ids.
    palette: uint8 ``[C, 3]``.
    alpha: weight of the label colour on non-background pixels.

  Returns:
    uint8 ``[H, W, 3]``.
  """
  image = _to_rgb(image)
  if image.shape[:2] != np.shape(label):
    raise ValueError(f'image {image.shape[:2]} and label {np.shape(label)} '
                     'differ in size')
  colour = colorize(label, palette).astype(np.float32)
  blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colour
  out = np.where((np.asarray(label) != 0)[..., None], blended, image)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _font() -> ImageFont.ImageFont:
  return ImageFont.load_default()


def _text_size(text: str, font) -> tuple[int, int]:
  left, top, right, bottom = ImageDraw.Draw(Image.new('RGB', (1, 1))).textbbox(
      (0, 0), text, font=font)
  return right - left, bottom - top


def legend(class_names: Sequence[str], palette: np.ndarray,
           width: int) -> np.ndarray:
  """Draws colour swatches with class names, flowing into columns.

  Entries fill columns top to bottom; as many columns as fit in ``width``
  are used (at least one).

  Args:
    class_names: names, index = class id.
    palette: uint8 ``[C, 3]`` with ``C >= len(class_names)``.
    width: image width in pixels.

  Returns:
    uint8 ``[h, width, 3]`` on a white background.
  """
  font = _font()
  names = [f'{i} {n}' for i, n in enumerate(class_names)]
  text_h = max([_text_size(n, font)[1] for n in names] + [8])
  row_h = max(text_h, 10) + 4
  swatch = row_h - 4
  col_w = swatch + 6 + max([_text_size(n, font)[0] for n in names] + [0]) + 8
  num_cols = max(1, min(len(names), width // max(col_w, 1)))
  num_rows = -(-len(names) // num_cols) if names else 0
  height = max(num_rows * row_h + 4, 1)
  canvas = Image.new('RGB', (width, height), _WHITE)
  draw = ImageDraw.Draw(canvas)
  for i, name in enumerate(names):
    col, row = divmod(i, num_rows)
    x, y = 2 + col * col_w, 2 + row * row_h
    colour = tuple(int(c) for c in np.asarray(palette)[i])
    draw.rectangle([x, y, x + swatch, y + swatch], fill=colour,
                   outline=(0, 0, 0))
    draw.text((x + swatch + 4, y), name, fill=(0, 0, 0), font=font)
  return np.asarray(canvas)


def _to_rgb(array: np.ndarray) -> np.ndarray:
  array = np.asarray(array)
  if array.dtype != np.uint8:
    array = np.clip(array, 0, 255).astype(np.uint8)
  if array.ndim == 2:
    array = np.repeat(array[..., None], 3, axis=-1)
  if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
    raise ValueError(f'expected an [H, W], [H, W, 1], [H, W, 3] or '
                     f'[H, W, 4] image, got shape {array.shape}')
  if array.shape[-1] == 1:
    array = np.repeat(array, 3, axis=-1)
  return array[..., :3]


def _text_image(text: str, width: int, height: int,
                vertical_center: bool = True) -> np.ndarray:
  canvas = Image.new('RGB', (max(width, 1), max(height, 1)), _WHITE)
  font = _font()
  tw, th = _text_size(text, font)
  y = (height - th) // 2 if vertical_center else 0
  ImageDraw.Draw(canvas).text((max((width - tw) // 2, 0), max(y, 0)), text,
                              fill=(0, 0, 0), font=font)
  return np.asarray(canvas)


def image_grid(rows: list[list[np.ndarray]], pad: int = 2,
               row_titles: list[str] | None = None,
               col_titles: list[str] | None = None) -> np.ndarray:
  """Arranges images of possibly different sizes in a grid.

  Each cell is as tall as the tallest image of its row and as wide as the
  widest image of its column; smaller images sit in the top-left corner of
  their cell on white.

  Args:
    rows: list of rows, each a list of ``[H, W]`` or ``[H, W, 3]`` arrays.
      Rows may have different lengths.
    pad: white pixels between and around cells.
    row_titles: optional text drawn left of each row.
    col_titles: optional text drawn above each column.

  Returns:
    uint8 ``[H, W, 3]``.
  """
  rows = [[_to_rgb(im) for im in row] for row in rows]
  num_cols = max([len(r) for r in rows] + [0])
  if not rows or num_cols == 0:
    return np.full((1, 1, 3), 255, np.uint8)
  if row_titles is not None and len(row_titles) != len(rows):
    raise ValueError(f'{len(row_titles)} row titles for {len(rows)} rows')
  if col_titles is not None and len(col_titles) != num_cols:
    raise ValueError(f'{len(col_titles)} column titles for {num_cols} '
                     'columns')
  row_h = [max([im.shape[0] for im in r] + [1]) for r in rows]
  col_w = [max([r[j].shape[1] for r in rows if j < len(r)] + [1])
           for j in range(num_cols)]
  font = _font()
  title_w = 0
  if row_titles:
    title_w = max(_text_size(t, font)[0] for t in row_titles) + 2 * pad + 4
  title_h = 0
  if col_titles:
    title_h = max(_text_size(t, font)[1] for t in col_titles) + pad + 4
  height = title_h + sum(row_h) + pad * (len(rows) + 1)
  width = title_w + sum(col_w) + pad * (num_cols + 1)
  out = np.full((height, width, 3), 255, np.uint8)
  if col_titles:
    x = title_w + pad
    for j, title in enumerate(col_titles):
      out[pad:pad + title_h - pad, x:x + col_w[j]] = _text_image(
          title, col_w[j], title_h - pad)
      x += col_w[j] + pad
  y = title_h + pad
  for i, row in enumerate(rows):
    if row_titles:
      out[y:y + row_h[i], :title_w] = _text_image(row_titles[i], title_w,
                                                  row_h[i])
    x = title_w + pad
    for j, im in enumerate(row):
      out[y:y + im.shape[0], x:x + im.shape[1]] = im
      x += col_w[j] + pad
    y += row_h[i] + pad
  return out


def save_png(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes an ``[H, W]`` or ``[H, W, 3]`` array as a PNG (parents created).

  ``path`` is local or a ``gs://`` URL (``etils.epath``).
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  array = np.asarray(array)
  if array.ndim == 2:
    image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
  else:
    image = Image.fromarray(_to_rgb(array))
  with path.open('wb') as f:
    image.save(f, format='PNG')


def save_index_png(path: str | os.PathLike, label: np.ndarray,
                   palette: np.ndarray) -> None:
  """Writes a paletted ('P' mode) PNG whose pixel values are the class ids.

  Reading it back with ``np.asarray(PIL.Image.open(path))`` returns the ids
  exactly; viewers show the palette colours. Ids without a palette entry
  (e.g. the ignore id 255) are shown white.

  Raises:
    ValueError: if ``label`` is not 2-D or holds values outside [0, 255].
  """
  label = np.asarray(label)
  if label.ndim != 2:
    raise ValueError(f'label must be [H, W], got shape {label.shape}')
  if label.size and (label.min() < 0 or label.max() > 255):
    raise ValueError('label values must lie in [0, 255] for an index PNG')
  label = np.ascontiguousarray(label.astype(np.uint8))
  height, width = label.shape
  image = Image.frombytes('P', (width, height), label.tobytes())
  full = np.full((256, 3), 255, np.uint8)
  palette = np.asarray(palette, np.uint8).reshape(-1, 3)[:256]
  full[:len(palette)] = palette
  image.putpalette(full.reshape(-1).tolist())
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  image.save(path, format='PNG')
