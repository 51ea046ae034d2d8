"""`jaxaffect predict`: per-frame predictions of a sequence model over whole videos, the ABAW
submission files, the protocol metrics and a valence/arousal plot.

For every video of the selection (`config.data` of the checkpoint, `--select` to change it):
  1. all windows `w` with stride `s` (default: the training window and stride, e.g. ABAW 300 / 200;
     the tail window is padded), run through the model in evaluation mode;
  2. overlapping windows merged per frame by averaging their outputs (`features.merge`);
  3. frames without a face already carry the features of the nearest frame with one (the reader's
     `fill_nearest`, ABAW5), so every frame gets a prediction; they are counted per video.
Outputs in `--out`:
  `<task>/predictions.txt`  one line per frame of every video, no-face frames included:
      VA    `image_location,valence,arousal` (clipped to [-1, 1]),
      EXPR  `image_location,Neutral,...,Other` then one class index per line,
      AU    `image_location,AU1,...,AU26` then 12 0/1 values (logit > 0);
    `image_location` is `<video>/<frame:05d>.jpg` (the Aff-Wild2 crop names).
  `metrics.json`  over the labelled frames: CCC per dimension over all frames concatenated (ABAW)
      and the mean of per-video CCCs, P_VA; EXPR macro-F1 (ABAW, all classes of the vocabulary);
      AU mean F1 (frames with any unlabelled unit dropped); no-face counts.
  `va_<video>.png`  predicted vs true valence and arousal over time for the first `--plot` videos.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from jaxaffect import metrics as jm

AU_NAMES_12 = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25",
               "AU26")


def _expr_names(config) -> tuple[str, ...]:
  from jaxaffect.data import vocab
  return vocab.names(config.data.get("expr_vocab", "") or "abaw8")


def _windows_fn(task, variables):
  """jit of the task's evaluation forward on a batch of windows → the raw per-frame outputs."""
  params = variables["params"]
  extra = {k: v for k, v in variables.items() if k != "params"}

  @jax.jit
  def run(batch):
    x, kw, _ = task._inputs(batch)
    return task.module.apply({"params": params, **extra}, x, train=False, **kw)
  return run


def predict_video(run, vf, window: int, stride: int, batch_size: int) -> dict[str, np.ndarray]:
  """Per-frame outputs `{name: (T, n)}` of one video: all windows, batched (the last batch padded
  with copies so the compiled shape stays fixed), merged by averaging overlaps."""
  from jaxaffect.data import features
  wb, wins = features.video_windows(vf, window, stride)
  n = len(wins)
  outs: dict[str, list[np.ndarray]] = {}
  for b0 in range(0, n, batch_size):
    sl = {k: v[b0:b0 + batch_size] for k, v in wb.items()}
    m = len(next(iter(sl.values())))
    if m < batch_size:
      sl = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - m, axis=0)]) for k, v in
            sl.items()}
    res = jax.device_get(run(sl))
    for k, v in res.items():
      outs.setdefault(k, []).append(np.asarray(v, np.float32)[:m])
  return {k: features.merge(vf.num_frames, wins, np.concatenate(v)) for k, v in outs.items()}


def _image_locations(vf) -> list[str]:
  return [f"{vf.video_id}/{int(i):05d}.jpg" for i in vf.frame_index]


def _write_atomic(path: str, lines: list[str]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(tmp, path)


def run(workdir: str, out_dir: str, *, select: str | None = None, step: int | None = None,
        best: bool = False, window: int | None = None, stride: int | None = None,
        plot: int = 4, batch_size: int | None = None, progress: bool = True) -> dict[str, Any]:
  from jaxaffect import plots
  from jaxaffect.data import features
  from jaxaffect.train import checkpoint as ckpt_lib
  from jaxaffect.train import loop

  if best:
    cdir = os.path.join(workdir, "checkpoints")
    config, _ = ckpt_lib.read_config(cdir)
    mngr = ckpt_lib.make_manager(cdir, read_only=True, async_save=False,
                                 best_metric=config.checkpoint.best_metric or None,
                                 best_mode=config.checkpoint.best_mode)
    step = ckpt_lib.best_step(mngr, config.checkpoint.best_metric, config.checkpoint.best_mode)
    mngr.close()
    if step is None:
      raise FileNotFoundError(f"{cdir}: no checkpoint carries {config.checkpoint.best_metric!r}")
  config, setup, variables, step = loop.restore_state(workdir, step)
  task = setup.task
  if config.data.get("source", "") != "features" or getattr(task, "input", "") != "features":
    raise ValueError(f"jaxaffect predict: {workdir} holds a {config.model_name!r} run on "
                     f"data.source={config.data.get('source')!r}; predict runs sequence models "
                     f"over feature streams (data.source='features', task.input='features')")
  select = select or config.data.eval_select
  window = int(window or config.data.window)
  stride = int(stride or config.data.stride)
  bs = int(batch_size or config.batch_size)
  runner = _windows_fn(task, variables)
  outputs = tuple(task.outputs)
  os.makedirs(out_dir, exist_ok=True)

  lines: dict[str, list[str]] = {o: [] for o in outputs}
  if "va" in outputs:
    lines["va"].append("image_location,valence,arousal")
  expr_names = _expr_names(config) if "expr" in outputs else ()
  if "expr" in outputs:
    lines["expr"].append("image_location," + ",".join(expr_names))
  if "au" in outputs:
    if task.num_au != len(AU_NAMES_12):
      raise ValueError(f"AU submission needs the 12 ABAW units; the model has {task.num_au}")
    lines["au"].append("image_location," + ",".join(AU_NAMES_12))

  acc: dict[str, list[np.ndarray]] = {k: [] for k in ("va_p", "va_t", "va_m", "seq", "expr_p",
                                                      "expr_t", "expr_m", "au_p", "au_t", "au_m")}
  per_video = []
  videos = features.iter_videos(config.data, select)
  if progress:
    from tqdm import tqdm
    videos = tqdm(videos, desc="predict", unit="video")
  plotted = 0
  for vi, vf in enumerate(videos):
    pred = predict_video(runner, vf, window, stride, bs)
    locs = _image_locations(vf)
    lab = vf.labels
    info = {"video": vf.video_id, "frames": vf.num_frames,
            "no_face_frames": int((~vf.face.astype(bool)).sum())}
    if "va" in outputs:
      va = np.clip(pred["va"], -1.0, 1.0)
      lines["va"] += [f"{l},{v:.6f},{a:.6f}" for l, (v, a) in zip(locs, va)]
      acc["va_p"].append(va)
      acc["va_t"].append(lab["va"])
      acc["va_m"].append(lab["va_mask"] > 0)
      acc["seq"].append(np.full(vf.num_frames, vi, np.int64))
      if plotted < plot:
        png = os.path.join(out_dir, f"va_{vf.video_id.replace('/', '_')}.png")
        plots.save_va_timeseries(va, lab["va"], lab["va_mask"] > 0, png,
                                 title=f"{vf.video_id}", face=vf.face.astype(bool))
        info["plot"] = png
        plotted += 1
    if "expr" in outputs:
      cls = np.argmax(pred["expr"], axis=-1)
      lines["expr"] += [f"{l},{int(c)}" for l, c in zip(locs, cls)]
      acc["expr_p"].append(cls)
      acc["expr_t"].append(lab["expr"])
      acc["expr_m"].append(lab["expr_mask"] > 0)
    if "au" in outputs:
      au = (pred["au"] > 0).astype(np.int64)
      lines["au"] += [l + "," + ",".join(str(int(x)) for x in row) for l, row in zip(locs, au)]
      acc["au_p"].append(au)
      acc["au_t"].append(np.where(lab["au_mask"] > 0, lab["au"], -1).astype(np.int64))
      acc["au_m"].append(np.ones(vf.num_frames, bool))
    per_video.append(info)
  if not per_video:
    raise ValueError(f"jaxaffect predict: no video for select={select!r}")

  files = {}
  for o in outputs:
    os.makedirs(os.path.join(out_dir, o), exist_ok=True)
    path = os.path.join(out_dir, o, "predictions.txt")
    _write_atomic(path, lines[o])
    files[o] = path

  m: dict[str, Any] = {}
  if "va" in outputs:
    p, t, k = (np.concatenate(acc[x]) for x in ("va_p", "va_t", "va_m"))
    seq = np.concatenate(acc["seq"])
    c = np.asarray(jm.ccc(p, t, k[:, None]))
    ps = np.asarray(jm.ccc_per_sequence(p, t, seq, k[:, None]))
    m.update(ccc_valence=float(c[0]), ccc_arousal=float(c[1]), p_va=float(c.mean()),
             ccc_valence_per_video=float(ps[0]), ccc_arousal_per_video=float(ps[1]),
             va_frames=int(k.sum()))
  if "expr" in outputs:
    p, t, k = (np.concatenate(acc[x]) for x in ("expr_p", "expr_t", "expr_m"))
    m.update(expr_macro_f1=float(jm.macro_f1(t[k], p[k], num_classes=len(expr_names))),
             expr_frames=int(k.sum()))
  if "au" in outputs:
    p, t = np.concatenate(acc["au_p"]), np.concatenate(acc["au_t"])
    m.update(au_f1=float(jm.au_f1(t, p)), au_frames=int((t >= 0).all(-1).sum()))
  summary = {"workdir": os.path.abspath(workdir), "step": int(step), "select": select,
             "window": window, "stride": stride, "videos": len(per_video),
             "frames": int(sum(v["frames"] for v in per_video)),
             "no_face_frames": int(sum(v["no_face_frames"] for v in per_video)),
             "metrics": m, "files": files, "per_video": per_video}
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary
