"""Heat-map pictures of matrices with class names (SST associations)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _colormap(values: np.ndarray) -> np.ndarray:
  """Maps [0, 1] to a dark-blue -> yellow ramp (uint8 RGB)."""
  v = np.clip(values, 0.0, 1.0)[..., None]
  lo = np.array([20, 24, 82], np.float32)
  mid = np.array([33, 145, 140], np.float32)
  hi = np.array([253, 231, 37], np.float32)
  rgb = np.where(v < 0.5, lo + (mid - lo) * (v * 2), mid + (hi - mid) *
                 (v * 2 - 1))
  return rgb.astype(np.uint8)


def heatmap(matrix: np.ndarray, row_names: Sequence[str],
            col_names: Sequence[str], title: str = '', cell: int = 14,
            normalize_rows: bool = False) -> np.ndarray:
  """Renders ``matrix [R, C]`` with row and (vertical) column labels.

  Values are scaled by the matrix maximum (or per row when
  ``normalize_rows``); each row's largest entry is outlined.

  Returns:
    uint8 RGB image.
  """
  m = np.asarray(matrix, np.float32)
  if normalize_rows:
    m = m / np.maximum(m.max(axis=1, keepdims=True), 1e-12)
  else:
    m = m / max(float(m.max()), 1e-12)
  font = ImageFont.load_default()
  left = 8 + 6 * max(len(n) for n in row_names)
  top = 18 + 6 * max(len(n) for n in col_names)
  r, c = m.shape
  img = Image.new('RGB', (left + c * cell + 4, top + r * cell + 4), 'white')
  draw = ImageDraw.Draw(img)
  draw.text((4, 2), title, fill='black', font=font)
  cells = np.repeat(np.repeat(_colormap(m), cell, 0), cell, 1)
  img.paste(Image.fromarray(cells), (left, top))
  for i, name in enumerate(row_names):
    draw.text((4, top + i * cell + 1), name, fill='black', font=font)
    j = int(np.argmax(m[i]))
    draw.rectangle([left + j * cell, top + i * cell,
                    left + (j + 1) * cell - 1, top + (i + 1) * cell - 1],
                   outline='red')
  for j, name in enumerate(col_names):
    label = Image.new('RGB', (top - 18, cell), 'white')
    ImageDraw.Draw(label).text((2, 1), name, fill='black', font=font)
    img.paste(label.rotate(90, expand=True), (left + j * cell, 16))
  return np.asarray(img)


def tile(images: Sequence[np.ndarray], columns: int = 3,
         pad: int = 6) -> np.ndarray:
  """Tiles RGB images of different sizes on a white canvas, row-major."""
  columns = max(min(columns, len(images)), 1)
  rows = [images[i:i + columns] for i in range(0, len(images), columns)]
  heights = [max(im.shape[0] for im in row) for row in rows]
  widths = [max(rows[r][c].shape[1] for r in range(len(rows))
                if c < len(rows[r])) for c in range(columns)]
  out = np.full((sum(heights) + pad * (len(rows) + 1),
                 sum(widths) + pad * (columns + 1), 3), 255, np.uint8)
  y = pad
  for row, h in zip(rows, heights):
    x = pad
    for im, w in zip(row, widths):
      out[y:y + im.shape[0], x:x + im.shape[1]] = im
      x += w + pad
    y += h + pad
  return out
