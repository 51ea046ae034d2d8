"""`plots.sampling_points_sheet` (TDLS Fig. 8): a point at a known image-normalised coordinate
colours exactly the expected pixels, so a wrong coordinate convention fails (align_corners=True,
pixel = (g+1)/2·(W-1), puts the top-right test dot 3.6 enlarged pixels left; (g+1)/2·W without the
-0.5 half a pixel right); one colour per column, the outline ring, the layout the docstring
gives, per-image point sets, points outside, the PNG, clear errors."""
import numpy as np
import pytest
from PIL import Image

from jaxaffect import plots

H, W, S, PAD, FONT = 8, 10, 8, 4, 12
BAND = FONT + 2 * PAD


def _cell(sheet, row, col, h=H, w=W, s=S):
  y0, x0 = BAND + PAD + row * (h * s + PAD), PAD + col * (w * s + PAD)
  return sheet[y0:y0 + h * s, x0:x0 + w * s]


def _grid(px, py, w=W, h=H):
  """Image-normalised (x, y) of the centre of pixel (px, py) (align_corners=False)."""
  return [(2 * px + 1) / w - 1, (2 * py + 1) / h - 1]


def test_point_colours_the_expected_pixels():
  images = np.zeros((2, H, W, 3), np.uint8)
  images[1] = 40
  red, yellow = (255, 0, 0), (255, 255, 0)
  # column 0: the centre of original pixel (9, 0) (top-right corner pixel) -> enlarged centre
  # ((9 + 0.5)·8 - 0.5, (0 + 0.5)·8 - 0.5) = (75.5, 3.5); radius 1 covers x 75-76, y 3-4.
  # column 1: the image's top-left EDGE (-1, -1) -> (-0.5, -0.5): only pixel (0, 0).
  sheet = plots.sampling_points_sheet(images, [np.array([_grid(9, 0)]), np.array([[-1.0, -1.0]])],
                                      ["p", "edge"], colors=[red, yellow], radius=1.0,
                                      outline=None, scale=S, pad=PAD, font_size=FONT)
  assert sheet.dtype == np.uint8
  assert sheet.shape == (BAND + PAD + 2 * (H * S + PAD), PAD + 2 * (W * S + PAD), 3)
  for row, bg in ((0, 0), (1, 40)):
    c0 = _cell(sheet, row, 0)
    hit = np.all(c0 == red, axis=-1)
    assert sorted(zip(*np.nonzero(hit))) == [(3, 75), (3, 76), (4, 75), (4, 76)], \
        sorted(zip(*np.nonzero(hit)))
    assert np.all(c0[~hit] == bg)                     # the face is untouched elsewhere
    c1 = _cell(sheet, row, 1)
    hit = np.all(c1 == yellow, axis=-1)
    assert list(zip(*np.nonzero(hit))) == [(0, 0)]
    assert np.all(c1[~hit] == bg)
  # white gutters between cells, the label band above them is not all white (text drawn)
  assert np.all(sheet[BAND + PAD + H * S:BAND + 2 * PAD + H * S] == 255)
  assert np.any(sheet[:BAND] < 128)


def test_scale_one_and_per_image_sets_and_regular_grid():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 200, (3, H, W, 3)).astype(np.uint8)
  pix = [(2, 5), (7, 1), (0, 7)]                         # (px, py) per image
  per_image = np.array([[_grid(px, py)] for px, py in pix])           # (3, 1, 2)
  green = (0, 255, 0)
  sheet = plots.sampling_points_sheet(images, [per_image], ["p'"], colors=[green], radius=0.3,
                                      outline=None, scale=1, pad=PAD, font_size=FONT)
  assert sheet.shape == (BAND + PAD + 3 * (H + PAD), PAD + W + PAD, 3)
  for r, (px, py) in enumerate(pix):
    hit = np.all(_cell(sheet, r, 0, s=1) == green, axis=-1)
    assert list(zip(*np.nonzero(hit))) == [(py, px)]
  # a regular 4x4 grid of cell centres at 2x: x = (k + 0.5)·20/4 - 0.5 = 2, 7, 12, 17 (on pixel
  # centres), y = (j + 0.5)·16/4 - 0.5 = 1.5, 5.5, 9.5, 13.5 (between two rows): radius 0.6 takes
  # the two pixels above and below each point
  g = (np.arange(4) + 0.5) / 4 * 2 - 1
  regular = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
  sheet = plots.sampling_points_sheet(images, [per_image, regular], ["p'", "grid"], radius=0.6,
                                      outline=None, scale=2, pad=PAD, font_size=FONT)
  hit = np.all(_cell(sheet, 0, 1, s=2) == plots.POINT_COLORS[1], axis=-1)
  expect = sorted((y, x) for x in (2, 7, 12, 17) for y in (1, 2, 5, 6, 9, 10, 13, 14))
  assert sorted(zip(*np.nonzero(hit))) == expect


def test_outline_ring_around_the_dot():
  images = np.full((1, H, W, 3), 90, np.uint8)
  sheet = plots.sampling_points_sheet(images, [np.array([_grid(4, 3)])], ["p"],
                                      colors=[(255, 0, 0)], radius=1.0, outline=(0, 0, 0),
                                      scale=S, pad=PAD, font_size=FONT)
  cell = _cell(sheet, 0, 0)
  cy, cx = 3.5 * S - 0.5, 4.5 * S - 0.5                     # (27.5, 35.5)
  yy, xx = np.mgrid[:H * S, :W * S]
  d2 = (yy - cy) ** 2 + (xx - cx) ** 2
  np.testing.assert_array_equal(np.all(cell == (255, 0, 0), -1), d2 <= 1.0)
  np.testing.assert_array_equal(np.all(cell == 0, -1), (d2 > 1.0) & (d2 <= 4.0))
  assert np.all(cell[d2 > 4.0] == 90)


def test_points_outside_are_clipped_and_png_written(tmp_path):
  images = np.full((1, H, W, 3), 90, np.uint8)
  path = tmp_path / "fig8.png"
  pts = np.array([[3.0, 3.0], [-1.2, 0.0], [np.nan, 0.0]])
  sheet = plots.sampling_points_sheet(images, [pts], ["outside"], radius=2.0, scale=S,
                                      path=str(path), pad=PAD, font_size=FONT)
  cell = _cell(sheet, 0, 0)
  # (-1.2, 0): x = -0.1·80 - 0.5 = -8.5 -> farther than radius + ring 3 off the left edge
  assert np.all(cell == 90)
  png = np.asarray(Image.open(path).convert("RGB"))
  np.testing.assert_array_equal(png, sheet)


def test_errors():
  img = np.zeros((2, H, W, 3), np.uint8)
  with pytest.raises(ValueError, match="uint8"):
    plots.sampling_points_sheet(img.astype(np.float32), [np.zeros((1, 2))], ["a"])
  with pytest.raises(ValueError, match="labels"):
    plots.sampling_points_sheet(img, [np.zeros((1, 2))], ["a", "b"])
  with pytest.raises(ValueError, match=r"\(N=2, P, 2\)"):
    plots.sampling_points_sheet(img, [np.zeros((3, 1, 2))], ["a"])
