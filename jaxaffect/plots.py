"""Plots a user looks at: confusion matrices (PNG and TensorBoard images)."""
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
