"""Metric writing on process 0: TensorBoard event files, a JSONL log and a progress line."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "/"))
    else:
      out[key] = v
  return out


def scalars_of(d: dict[str, Any]) -> dict[str, float]:
  """The scalar entries of a (nested) metrics dict, as floats."""
  out = {}
  for k, v in _flatten(d).items():
    a = np.asarray(v)
    if a.ndim == 0 and np.issubdtype(a.dtype, np.number):
      out[k] = float(a)
  return out


class MetricWriter:
  """TensorBoard (tensorboardX, no TensorFlow needed) + `metrics.jsonl`; no-op off process 0."""

  def __init__(self, logdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.logdir = logdir
    self._tb = None
    if self.enabled:
      os.makedirs(logdir, exist_ok=True)
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(logdir, flush_secs=10)
      self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a")

  def scalars(self, step: int, values: dict[str, float]):
    if not self.enabled:
      return
    for k, v in values.items():
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
    self._jsonl.flush()

  def image(self, step: int, tag: str, image_hwc: np.ndarray):
    """TensorBoard image and a PNG `<logdir>/images/<tag with '/' -> '_'>_<step>.png` (uint8)."""
    if self.enabled:
      self._tb.add_image(tag, image_hwc, step, dataformats="HWC")
      from PIL import Image
      d = os.path.join(self.logdir, "images")
      os.makedirs(d, exist_ok=True)
      Image.fromarray(np.asarray(image_hwc, np.uint8)).save(
          os.path.join(d, f"{tag.replace('/', '_')}_{int(step):08d}.png"))

  def text(self, step: int, tag: str, text: str):
    if self.enabled:
      self._tb.add_text(tag, text, step)

  def flush(self):
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self):
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


class Progress:
  """One-line progress: step, loss, steps/s, clips/s, ETA (process 0, stderr)."""

  def __init__(self, total_steps: int, start_step: int, batch_size: int, stream=None):
    self.total, self.batch = total_steps, batch_size
    self.stream = stream or sys.stderr
    self.t0, self.s0 = time.time(), start_step
    self.enabled = jax.process_index() == 0

  def rates(self, step: int) -> tuple[float, float]:
    dt = max(time.time() - self.t0, 1e-9)
    sps = (step - self.s0) / dt
    return sps, sps * self.batch

  def reset(self, step: int):
    self.t0, self.s0 = time.time(), step

  def update(self, step: int, extra: dict[str, float]):
    if not self.enabled:
      return
    sps, cps = self.rates(step)
    eta = (self.total - step) / sps if sps > 0 else float("nan")
    m, s = divmod(int(eta), 60) if np.isfinite(eta) else (0, 0)
    h, m = divmod(m, 60)
    fields = " ".join(f"{k}={v:.4g}" for k, v in extra.items())
    print(f"[train] step {step}/{self.total} ({100.0 * step / self.total:.1f}%) {fields} "
          f"| {sps:.2f} steps/s {cps:.1f} clips/s | ETA {h:d}:{m:02d}:{s:02d}",
          file=self.stream, flush=True)
