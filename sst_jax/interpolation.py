"""Linear-interpolation weight matrices, the one place they are built.

Numpy only, so that the models (``models/layers.py``), the input pipeline
(``data/transforms.py``) and the parsing API (``api.py``) share them.
"""

from __future__ import annotations

import numpy as np


def linear_weights(src: np.ndarray, limit: int, num_cols: int | None = None,
                   num_rows: int | None = None) -> np.ndarray:
  """``[num_rows, num_cols]`` float32 weights; row ``i`` samples ``src[i]``.

  Row ``i`` holds ``1 - f`` at column ``lo = min(floor(src[i]), limit - 1)``
  and ``f = src[i] - lo`` at column ``min(lo + 1, limit - 1)``: linear
  interpolation between the first ``limit`` entries of an axis, clamped at
  the last of them. Positions below 0 are the caller's to clip.

  Args:
    src: sample positions (pixel-centre units of the input axis), ``>= 0``.
    limit: entries of the input axis that may be read.
    num_cols: the input axis's length (default ``limit``; more columns are
      padding that is never read).
    num_rows: rows of the result (default ``len(src)``; rows past it, e.g.
      label padding, are zero).
  """
  src = np.asarray(src)
  lo = np.minimum(np.floor(src).astype(np.int64), limit - 1)
  hi = np.minimum(lo + 1, limit - 1)
  frac = (src - lo).astype(np.float32)
  m = np.zeros((len(src) if num_rows is None else num_rows,
                limit if num_cols is None else num_cols), np.float32)
  rows = np.arange(len(src))
  np.add.at(m, (rows, lo), 1 - frac)
  np.add.at(m, (rows, hi), frac)
  return m
