"""Tests of label colouring, overlays, legends, grids and PNG output."""

from __future__ import annotations

import numpy as np
from PIL import Image
import pytest

from sst_jax import domains
from sst_jax import visualize


def _palette():
  return domains.get_domain('synthetic_cihp').palette


def test_colorize_maps_ids_to_palette_and_ignore_to_white():
  palette = _palette()
  label = np.array([[0, 1, 19], [5, 255, 20]], np.uint8)
  out = visualize.colorize(label, palette)
  assert out.shape == (2, 3, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[0, 0], palette[0])
  np.testing.assert_array_equal(out[0, 1], palette[1])
  np.testing.assert_array_equal(out[0, 2], palette[19])
  np.testing.assert_array_equal(out[1, 0], palette[5])
  np.testing.assert_array_equal(out[1, 1], [255, 255, 255])
  np.testing.assert_array_equal(out[1, 2], [255, 255, 255])
  grey = visualize.colorize(label, palette, ignore_color=(9, 9, 9))
  np.testing.assert_array_equal(grey[1, 1], [9, 9, 9])
  # int32 labels and negative values work too.
  out = visualize.colorize(np.array([[-1, 2]], np.int32), palette)
  np.testing.assert_array_equal(out[0], [[255, 255, 255], palette[2]])


def test_overlay_keeps_background_and_blends_classes():
  palette = _palette()
  image = np.full((4, 4, 3), 100, np.uint8)
  label = np.zeros((4, 4), np.uint8)
  label[1:3, 1:3] = 2
  out = visualize.overlay(image, label, palette, alpha=0.5)
  np.testing.assert_array_equal(out[label == 0], image[label == 0])
  expected = np.round(0.5 * 100 + 0.5 * palette[2].astype(float))
  np.testing.assert_array_equal(out[1, 1], expected)
  np.testing.assert_array_equal(
      visualize.overlay(image, label, palette, alpha=1.0)[1, 1], palette[2])
  with pytest.raises(ValueError, match='size'):
    visualize.overlay(image, label[:3], palette)


def test_legend_has_requested_width_and_swatches():
  classes = domains.get_domain('synthetic_cihp').classes
  out = visualize.legend(classes, _palette(), width=300)
  assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[1] == 300
  colours = {tuple(c) for c in out.reshape(-1, 3)}
  for c in _palette()[1:]:
    assert tuple(c) in colours
  narrow = visualize.legend(classes, _palette(), width=60)
  assert narrow.shape[0] > out.shape[0]  # one column is taller


def test_image_grid_pads_cells_of_different_sizes():
  a = np.zeros((10, 20, 3), np.uint8)
  b = np.full((30, 5), 7, np.uint8)  # grey images are accepted
  c = np.full((4, 4, 3), 50, np.uint8)
  grid = visualize.image_grid([[a, b], [c]], pad=2)
  # Row heights 30 and 4, column widths 20 and 5, plus padding.
  assert grid.shape == (2 + 30 + 2 + 4 + 2, 2 + 20 + 2 + 5 + 2, 3)
  np.testing.assert_array_equal(grid[2:12, 2:22], a)
  np.testing.assert_array_equal(grid[2:32, 24:29, 0], b)
  np.testing.assert_array_equal(grid[34:38, 2:6], c)
  assert np.all(grid[12:32, 2:22] == 255)  # padding below the small image
  titled = visualize.image_grid([[a, b], [c]], pad=2, row_titles=['x', 'y'],
                                col_titles=['p', 'q'])
  assert titled.shape[0] > grid.shape[0] and titled.shape[1] > grid.shape[1]
  with pytest.raises(ValueError):
    visualize.image_grid([[a]], row_titles=['x', 'y'])


def test_save_png_round_trips(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  visualize.save_png(tmp_path / 'sub' / 'a.png', rgb)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'sub' /
                                                      'a.png')), rgb)


def test_index_png_keeps_class_ids_exactly(tmp_path):
  palette = _palette()
  label = np.random.default_rng(0).integers(0, 20, (9, 11), dtype=np.uint8)
  label[0, 0] = 255  # the ignore id survives too
  path = tmp_path / 'label.png'
  visualize.save_index_png(path, label, palette)
  image = Image.open(path)
  assert image.mode == 'P'
  np.testing.assert_array_equal(np.asarray(image), label)
  rgb = np.asarray(image.convert('RGB'))
  np.testing.assert_array_equal(rgb, visualize.colorize(label, palette))
  with pytest.raises(ValueError):
    visualize.save_index_png(path, np.full((2, 2), 300), palette)
