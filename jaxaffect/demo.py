"""`jaxaffect demo`: the whole real path on the CPU, from an embedded default dataset.

synthetic face videos → `python -m data_prep synthetic` (face alignment from the videos' landmarks,
JPEG crops in TFRecord shards + manifest, train and held-out splits) → grain shard reader →
Former-DFER (smoke) training → held-out UAR/WAR re-evaluated from the checkpoint, TensorBoard logs,
a confusion-matrix PNG and a PyTorch export; one JSON summary line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np


def _check_workdir(workdir: str, config) -> None:
  """A workdir holding another run is refused before the data are prepared (the trainer would
  refuse it only after the shards were written into it)."""
  import json
  from jaxaffect.errors import UserError
  from jaxaffect.train import loop
  saved = os.path.join(workdir, "config.json")
  if not os.path.exists(saved):
    return
  with open(saved) as f:
    old = json.load(f)
  diffs = loop.config_differences(old, json.loads(config.to_json_best_effort()),
                                  ("model_name", "model", "task", "batch_size", "seed"))
  if diffs:
    raise UserError(f"demo --workdir {workdir} holds another run ({'; '.join(diffs[:4])}); use a "
                    f"new --workdir")


def run(workdir: str, config_spec: str, overrides: list[str] | None = None) -> dict:
  from jaxaffect import config_loader, interop, plots
  from jaxaffect.data import parts, pipeline
  from jaxaffect.train import loop

  config = config_loader.load(config_spec, list(overrides or []))
  _check_workdir(workdir, config)            # before minutes of data preparation
  os.makedirs(workdir, exist_ok=True)
  t0 = time.time()
  prep_info = None
  if config.data.source.name == "synthetic":
    prep_info = prep_synthetic(config.data, os.path.join(workdir, "shards"))
    with config.ignore_type():                # another generator seed: unseen identities
      config.data.source = parts.source_config("shards", shards=prep_info["out"],
                                               train_select="train", eval_select="test")
  sources = pipeline.build_sources(config.data)
  gen_seconds = time.time() - t0
  metrics = loop.train(config, workdir, sources=sources)
  train_seconds = time.time() - t0 - gen_seconds

  final = loop.evaluate_workdir(workdir, sources=sources)   # re-evaluated from the checkpoint
  cm = np.asarray(final["confusion_matrix"])
  png = os.path.join(workdir, "confusion_matrix.png")
  plots.save_confusion_matrix(cm, list(config.data.class_names), png,
                              title=f"held-out UAR {final['uar']:.3f} WAR {final['war']:.3f}")

  cfg, s, variables, step = loop.restore_state(workdir)
  export_path = os.path.join(workdir, "export", f"{cfg.model_name}.safetensors")
  os.makedirs(os.path.dirname(export_path), exist_ok=True)
  info = interop.export(cfg.model_name, s.task.module, variables, export_path)

  summary = {
      "model": cfg.model_name, "variant": cfg.get("variant", ""),
      "uar": float(final["uar"]), "war": float(final["war"]),
      "macro_f1": float(final.get("macro_f1", float("nan"))),
      # task-specific held-out metrics (e.g. EST's snippet-order accuracy)
      **{k: float(v) for k, v in final.items()
         if np.ndim(v) == 0 and k not in ("uar", "war", "macro_f1", "loss", "step")},
      "steps": int(step), "seconds": round(time.time() - t0, 1),
      "data_seconds": round(gen_seconds, 1), "train_seconds": round(train_seconds, 1),
      "shards": None if prep_info is None else prep_info["out"],
      "prep_frames": None if prep_info is None else prep_info["frames"],
      "first_step_seconds": round(float(metrics.get("first_step_seconds", float("nan"))), 1),
      "num_train_videos": len(sources[0]), "num_heldout_videos": len(sources[1]),
      "workdir": os.path.abspath(workdir),
      "tensorboard": os.path.join(os.path.abspath(workdir), "tensorboard"),
      "confusion_matrix_png": os.path.abspath(png),
      "checkpoint": os.path.join(os.path.abspath(workdir), "checkpoints", str(step)),
      "export_path": os.path.abspath(export_path),
      "verify_path": os.path.abspath(info["verify"]),
  }
  with open(os.path.join(workdir, "demo_summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def prep_synthetic(d, out: str, workers: int | None = None) -> dict:
  """Writes the synthetic videos of `config.data` (source `synthetic`) as shards with the
  preprocessing job (a subprocess, so its workers fork before JAX starts); a rerun finds the
  shards done."""
  workers = workers or min(2, os.cpu_count() or 1)
  s = d.source
  cmd = [sys.executable, "-m", "data_prep", "synthetic", "--src", "-", "--out", out,
         "--num-videos", str(s.num_train), "--heldout-videos", str(s.num_eval),
         "--num-frames", str(s.video_frames), "--render-size", str(d.image_size),
         "--size", str(d.image_size), "--pose", str(s.pose),
         "--occlusion", str(s.occlusion), "--seed", str(s.seed),
         "--workers", str(workers), "--shards", str(max(2, workers))]
  t = time.time()
  subprocess.run(cmd, check=True)
  with open(os.path.join(out, "manifest.json")) as f:
    m = json.load(f)
  return {"out": os.path.abspath(out), "frames": m["totals"]["frames"], "seconds": time.time() - t}
