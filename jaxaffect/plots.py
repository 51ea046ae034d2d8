"""Plots a user looks at: confusion matrices (PNG and TensorBoard images), valence/arousal over a
video, and TDLS's sampling points on faces (Fig. 8)."""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np


def _figure_confusion(cm: np.ndarray, class_names: Sequence[str], title: str = ""):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cm = np.asarray(cm, np.float64)
  rows = cm.sum(1, keepdims=True)
  norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
  k = len(cm)
  fig, ax = plt.subplots(figsize=(1.0 + 0.8 * k, 0.8 + 0.8 * k), dpi=100)
  ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
  for i in range(k):
    for j in range(k):
      ax.text(j, i, f"{int(cm[i, j])}\n{100 * norm[i, j]:.0f}%", ha="center", va="center",
              fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
  names = list(class_names) if class_names and len(class_names) == k else [str(i) for i in range(k)]
  ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
  ax.set_yticks(range(k), names, fontsize=8)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  return fig


def save_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: str, title: str = ""):
  """Counts and row-normalised recall per cell, written as a PNG."""
  import matplotlib.pyplot as plt
  fig = _figure_confusion(cm, class_names, title)
  fig.savefig(path)
  plt.close(fig)


def confusion_matrix_image(cm: np.ndarray, class_names: Sequence[str], title: str = "") -> np.ndarray:
  """The same plot as an RGB uint8 array (HWC), for TensorBoard."""
  import matplotlib.pyplot as plt
  fig = _figure_confusion(cm, class_names, title)
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  plt.close(fig)
  buf.seek(0)
  import matplotlib.image as mpimg
  img = mpimg.imread(buf, format="png")
  return (img[..., :3] * 255).astype(np.uint8)


def save_va_timeseries(pred: np.ndarray, true: np.ndarray, labelled: np.ndarray, path: str,
                       title: str = "", face: np.ndarray | None = None, fps: float | None = None):
  """Predicted vs true valence and arousal over one video (two panels), PNG. Unlabelled frames
  leave gaps in the true curve; frames without a face are shaded."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from jaxaffect import metrics as jm
  pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
  labelled = np.asarray(labelled, bool)
  t = np.arange(len(pred)) / (fps or 1.0)
  fig, axes = plt.subplots(2, 1, figsize=(9, 4.5), dpi=100, sharex=True)
  for d, (ax, name) in enumerate(zip(axes, ("valence", "arousal"))):
    y = np.where(labelled, true[:, d], np.nan)
    ax.plot(t, y, color="black", lw=1.2, label="true")
    ax.plot(t, pred[:, d], color="tab:red", lw=1.0, label="predicted")
    if face is not None and (~np.asarray(face, bool)).any():
      nf = ~np.asarray(face, bool)
      ax.fill_between(t, -1, 1, where=nf, color="0.85", step="mid", label="no face")
    c = float(jm.ccc(pred[labelled, d], true[labelled, d])) if labelled.sum() > 1 else float("nan")
    ax.set_ylabel(f"{name}\nCCC {c:.3f}", fontsize=8)
    ax.set_ylim(-1.05, 1.05)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7, loc="upper right", ncol=3)
  axes[1].set_xlabel("seconds" if fps else "frame")
  if title:
    axes[0].set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


# Fig. 8 of TDLS: one colour per column (regular grid, reference points p, deformed points p + Δp)
POINT_COLORS = ((0, 200, 255), (255, 48, 48), (255, 220, 0), (64, 255, 64), (255, 64, 255))


def sampling_points_sheet(images: np.ndarray, points_sets: Sequence, labels: Sequence[str], *,
                          colors: Sequence[tuple[int, int, int]] | None = None,
                          radius: float = 2.0, outline: tuple[int, int, int] | None = (0, 0, 0),
                          scale: int = 1, pad: int = 4, font_size: int = 12,
                          path: str | None = None) -> np.ndarray:
  """TDLS Fig. 8: the sampling points of each kind drawn as dots on the faces; one row per image,
  one column per kind (e.g. the Swin regular grid, the landmark reference points p, the deformed
  points p + Δp), the column's label above it. Returns the sheet as uint8 (H, W, 3) and, with
  `path`, writes it as a PNG.

  images: uint8 (N, H, W, 3). points_sets: one entry per column, (P, 2) points shared by every
  image or (N, P, 2) per image, image-normalised (x, y) in [-1, 1]: -1 the left/top EDGE of the
  image, +1 the right/bottom edge (torch `grid_sample` at align_corners=False, the convention of
  `jaxaffect.nn.deformable`); the centre of pixel column px is (2 px + 1) / W - 1. A regular
  n × n grid of map cell centres: `g = (np.arange(n) + 0.5) / n * 2 - 1;
  np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)`.

  Drawing (pure numpy; PIL only for the labels and the PNG): each image enlarged `scale`× by pixel
  repetition; a point lands at pixel coordinate (x + 1)/2 · W·scale − 0.5 (column; the same for
  rows with H) of the enlarged image and colours every pixel whose centre lies within `radius`
  pixels of it, over a ring of `outline` colour out to `radius + 1` (None: no ring) so that the
  dots stand out on any face; points outside the image show only their part inside, NaN points
  none. Layout: a white sheet, a label band of `font_size + 2·pad` rows on top, then cell (row r,
  column k) with its top-left corner at (y, x) = (band + pad + r·(H·scale + pad),
  pad + k·(W·scale + pad)).
  """
  imgs = np.asarray(images)
  if imgs.ndim != 4 or imgs.shape[-1] != 3 or imgs.dtype != np.uint8:
    raise ValueError(f"sampling_points_sheet: images must be uint8 (N, H, W, 3), got "
                     f"{imgs.dtype} {imgs.shape}")
  n, h, w, _ = imgs.shape
  if len(points_sets) != len(labels) or not len(labels):
    raise ValueError(f"sampling_points_sheet: {len(points_sets)} point sets for {len(labels)} "
                     "labels (one each, at least one)")
  if int(scale) != scale or scale < 1:
    raise ValueError(f"sampling_points_sheet: scale must be a positive integer, got {scale}")
  scale = int(scale)
  colors = list(colors) if colors is not None else [POINT_COLORS[k % len(POINT_COLORS)]
                                                     for k in range(len(labels))]
  if len(colors) < len(labels):
    raise ValueError(f"sampling_points_sheet: {len(colors)} colours for {len(labels)} columns")
  sets = []
  for k, pts in enumerate(points_sets):
    p = np.asarray(pts, np.float64)
    if p.ndim == 2:
      p = np.broadcast_to(p[None], (n,) + p.shape)
    if p.ndim != 3 or p.shape[0] != n or p.shape[-1] != 2:
      raise ValueError(f"sampling_points_sheet: points of column {k} ({labels[k]!r}) must be "
                       f"(P, 2) or (N={n}, P, 2) (x, y), got {np.shape(pts)}")
    sets.append(p)
  ch, cw = h * scale, w * scale
  band = font_size + 2 * pad
  sheet = np.full((band + pad + n * (ch + pad), pad + len(labels) * (cw + pad), 3), 255, np.uint8)
  rows, cols = np.arange(ch, dtype=np.float64), np.arange(cw, dtype=np.float64)
  for r in range(n):
    face = np.repeat(np.repeat(imgs[r], scale, axis=0), scale, axis=1)
    y0 = band + pad + r * (ch + pad)
    for k, p in enumerate(sets):
      cell = face.copy()
      finite = np.all(np.isfinite(p[r]), axis=-1)
      px = (p[r][finite, 0] + 1.0) * 0.5 * cw - 0.5
      py = (p[r][finite, 1] + 1.0) * 0.5 * ch - 0.5
      for rad, color in ((radius + 1.0, outline), (radius, colors[k])):
        if color is None:
          continue
        for cx, cy in zip(px, py):
          ys = rows[max(int(np.floor(cy - rad)), 0):max(int(np.ceil(cy + rad)) + 1, 0)]
          xs = cols[max(int(np.floor(cx - rad)), 0):max(int(np.ceil(cx + rad)) + 1, 0)]
          if not len(ys) or not len(xs):
            continue
          iy, ix = np.nonzero((ys[:, None] - cy) ** 2 + (xs[None, :] - cx) ** 2 <= rad * rad)
          cell[ys[iy].astype(int), xs[ix].astype(int)] = color
      x0 = pad + k * (cw + pad)
      sheet[y0:y0 + ch, x0:x0 + cw] = cell
  from PIL import Image, ImageDraw, ImageFont
  pil = Image.fromarray(sheet)
  draw = ImageDraw.Draw(pil)
  font = ImageFont.load_default(size=font_size)
  for k, text in enumerate(labels):
    x0 = pad + k * (cw + pad)
    tw = draw.textlength(str(text), font=font)
    draw.text((x0 + max((cw - tw) / 2, 0), pad), str(text), fill=(0, 0, 0), font=font)
  out = np.asarray(pil, np.uint8).copy()
  out[band:] = sheet[band:]                 # labels never spill onto the faces
  if path:
    Image.fromarray(out).save(path, format="PNG")
  return out
