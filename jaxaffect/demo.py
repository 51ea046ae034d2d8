"""`jaxaffect demo`: synthetic face videos → Former-DFER (smoke) on the CPU → held-out UAR/WAR,
TensorBoard logs, a confusion-matrix PNG, a checkpoint and a PyTorch export, one JSON summary line."""
from __future__ import annotations

import json
import os
import time

import numpy as np


def run(workdir: str, config_spec: str, overrides: list[str] | None = None) -> dict:
  from absl import flags
  from ml_collections import config_flags

  from jaxaffect import interop, plots
  from jaxaffect.data import pipeline
  from jaxaffect.train import loop

  fl = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fl, lock_config=True)
  fl(["demo", f"--config={config_spec}", *(overrides or [])])
  config = fl.config
  os.makedirs(workdir, exist_ok=True)
  t0 = time.time()
  sources = pipeline.build_sources(config.data)    # held-out clips: another generator seed
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
      "steps": int(step), "seconds": round(time.time() - t0, 1),
      "data_seconds": round(gen_seconds, 1), "train_seconds": round(train_seconds, 1),
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
