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
    `image_location` is `<video>/<frame:05d>.jpg` with the dataset's own frame numbers (Aff-Wild2:
    1-based, as its crops); `--frames-from EXAMPLE` writes exactly the frames an ABAW example
    submission lists (trailing frames without a face included, from the nearest frame).
  `metrics.json`  over the labelled frames: CCC per dimension over all frames concatenated (ABAW)
      and the mean of per-video CCCs, P_VA; EXPR macro-F1 (ABAW, all classes of the vocabulary);
      AU mean F1 (frames with any unlabelled unit dropped); null where nothing is labelled (test
      sets); no-face counts.
  `va_<video>.png`  predicted vs true valence and arousal over time for the first `--plot` videos.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from jaxaffect import metrics as jm
from jaxaffect.data import vocab
from jaxaffect.errors import MissingFile, UserError


def _expr_names(config) -> tuple[str, ...]:
  return vocab.names(config.data.get("expr_vocab", "") or "abaw8")


def _windows_fn(task, variables):
  """jit of the task's evaluation forward on a batch of windows → the raw per-frame outputs."""
  params = variables["params"]
  extra = {k: v for k, v in variables.items() if k != "params"}

  keys = tuple(task.outputs)

  @jax.jit
  def run(batch):
    forward = getattr(task, "forward", None)     # a task's own evaluation forward (MGCT's clips)
    if forward is not None:
      out = forward(params, extra, batch)
    else:
      x, kw, _ = task.inputs(batch)
      out = task.module.apply({"params": params, **extra}, x, train=False, **kw)
    return {k: v for k, v in out.items() if k in keys}   # the per-frame outputs only
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


def read_frame_list(path: str) -> dict[str, list[int]]:
  """The frames a submission must have, from an ABAW example / template file (a header line, then
  `<video>/<frame>.jpg[,...]` per line): `{video: [frame numbers in file order]}`. The challenge
  wants one line per listed frame, including frames without a face (no crop, no feature)."""
  out: dict[str, list[int]] = {}
  if not os.path.isfile(path):
    raise MissingFile(f"--frames-from {path}: no such file")
  with open(path) as f:
    rows = f.read().splitlines()
  for n, line in enumerate(rows[1:], start=2):
    if not line.strip():
      continue
    loc = line.split(",", 1)[0].strip()
    vid, _, name = loc.rpartition("/")
    stem = name.rsplit(".", 1)[0]
    if not vid or not stem.isdigit():
      raise UserError(f"{path}:{n}: image_location {loc!r}: expected <video>/<frame number>.jpg")
    out.setdefault(vid, []).append(int(stem))
  if not out:
    raise UserError(f"{path}: no frame listed (a header line, then <video>/<frame>.jpg lines)")
  return out


def _listed_rows(frame_index: np.ndarray, listed: list[int]) -> np.ndarray:
  """For each listed frame number, the row of the nearest frame the reader has (the frame itself
  when present: beyond the last face frame the prediction of the nearest one is repeated)."""
  fi = np.asarray(frame_index, np.int64)
  order = np.argsort(fi, kind="stable")
  srt = fi[order]
  want = np.asarray(listed, np.int64)
  j = np.clip(np.searchsorted(srt, want), 0, len(srt) - 1)
  prev = np.clip(j - 1, 0, len(srt) - 1)
  take_prev = np.abs(srt[prev] - want) <= np.abs(srt[j] - want)
  return order[np.where(take_prev & (prev != j), prev, j)]


def _write_atomic(path: str, lines: list[str]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(tmp, path)


def run(workdir: str, out_dir: str, **kw) -> dict[str, Any]:
  """`_predict` into a staging folder beside `out_dir`, moved into `out_dir` only when everything
  succeeded: a failure (bad --select, a truncated feature file mid-way) leaves no empty or partial
  output folder. Arguments: see `_predict`."""
  import shutil
  import tempfile
  final = os.path.abspath(out_dir)
  parent = os.path.dirname(final)
  try:
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=parent)
  except OSError as e:
    raise UserError(f"jaxaffect predict: --out {out_dir}: cannot write there "
                    f"({e.strerror or e})") from None
  try:
    summary = _predict(workdir, stage, **kw)
    os.makedirs(final, exist_ok=True)
    for root, _, names in os.walk(stage):
      dest = os.path.join(final, os.path.relpath(root, stage))
      os.makedirs(dest, exist_ok=True)
      for n in names:
        os.replace(os.path.join(root, n), os.path.join(dest, n))
  finally:
    shutil.rmtree(stage, ignore_errors=True)
  fix = lambda p: p.replace(stage, final) if isinstance(p, str) else p   # noqa: E731
  summary["files"] = {k: fix(v) for k, v in summary["files"].items()}
  for v in summary["per_video"]:
    if "plot" in v:
      v["plot"] = fix(v["plot"])
  with open(os.path.join(final, "metrics.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def _predict(workdir: str, out_dir: str, *, select: str | None = None, step: int | None = None,
        best: bool = False, window: int | None = None, stride: int | None = None,
        plot: int = 4, batch_size: int | None = None, progress: bool = True,
        frames_from: str | None = None, labels: str | None = None,
        stream_paths: dict[str, str] | None = None) -> dict[str, Any]:
  """See the module docstring. `frames_from`: an ABAW example submission file listing every
  frame of every test video; the submission then has exactly those lines, in that order (frames
  the reader lacks, e.g. trailing frames without a face, take the nearest frame's prediction).
  `labels` / `stream_paths` ({stream: path}) replace the run's `data.source.labels` / stream paths (the
  test set's features, with no labels: `labels=""`, `select="all"`)."""
  from jaxaffect import plots
  from jaxaffect.data import features
  from jaxaffect.train import loop

  step = loop.resolve_step(workdir, step, best)
  config, setup, variables, step = loop.restore_state(workdir, step)
  task = setup.task
  src = config.data.source
  if src.name != "features" or getattr(task, "input", "") != "features":
    raise UserError(f"jaxaffect predict: {workdir} holds a {config.model_name!r} run on "
                    f"data.source {src.name!r}; predict runs sequence models over feature "
                    f"streams (config.data.source.name='features', task.input='features')")
  if labels is not None or stream_paths:
    config.unlock()
    if labels is not None:
      src.labels = labels
    if stream_paths:
      specs = [dict(x) for x in src.features]
      names = [x["name"] for x in specs]
      unknown = sorted(set(stream_paths) - set(names))
      if unknown:
        raise UserError(f"jaxaffect predict: stream(s) {unknown} are not in the run's "
                        f"config.data.source.features {names}")
      for x in specs:
        x["path"] = stream_paths.get(x["name"], x["path"])
      src.features = specs
  select = select or src.eval_select
  smp = config.data.sampler
  features.check_window(int(window or smp.window), int(stride or smp.stride),
                        "--window" if window else "config.data.sampler.window",
                        "--stride" if stride else "config.data.sampler.stride")
  window = int(window or smp.window)
  stride = int(stride or smp.stride)
  bs = int(batch_size or config.batch_size)
  runner = _windows_fn(task, variables)
  outputs = tuple(task.outputs)
  os.makedirs(out_dir, exist_ok=True)

  header = {"va": "image_location,valence,arousal"}
  expr_names = _expr_names(config) if "expr" in outputs else ()
  if "expr" in outputs:
    header["expr"] = "image_location," + ",".join(expr_names)
  if "au" in outputs:
    if task.num_au != len(vocab.AU12):
      raise UserError(f"AU submission needs the 12 ABAW units; the model has {task.num_au}")
    header["au"] = "image_location," + ",".join(vocab.AU12)
  listed = read_frame_list(frames_from) if frames_from else None
  lines: dict[str, dict[str, list[str]]] = {o: {} for o in outputs}    # output -> video -> lines

  acc: dict[str, list[np.ndarray]] = {k: [] for k in ("va_p", "va_t", "va_m", "seq", "expr_p",
                                                      "expr_t", "expr_m", "au_p", "au_t")}
  per_video = []
  videos = features.iter_videos(config.data, select)
  if progress:
    from tqdm import tqdm
    videos = tqdm(videos, desc="predict", unit="video")
  plotted = 0
  for vi, vf in enumerate(videos):
    pred = predict_video(runner, vf, window, stride, bs)
    lab = vf.labels
    info = {"video": vf.video_id, "frames": vf.num_frames,
            "no_face_frames": int((~vf.face.astype(bool)).sum())}
    # The rows of the submission: every frame the reader has, or the listed frames.
    if listed is None:
      rows = np.arange(vf.num_frames)
      locs = _image_locations(vf)
    elif vf.video_id in listed:
      rows = _listed_rows(vf.frame_index, listed[vf.video_id])
      locs = [f"{vf.video_id}/{f:05d}.jpg" for f in listed[vf.video_id]]
      info["listed_frames"] = len(locs)
      info["listed_frames_filled"] = int(len(set(listed[vf.video_id]) -
                                             set(int(i) for i in vf.frame_index)))
    else:
      rows, locs = np.zeros(0, np.int64), []
      info["not_listed"] = True
    if "va" in outputs:
      va = np.clip(pred["va"], -1.0, 1.0)
      lines["va"][vf.video_id] = [f"{l},{v:.6f},{a:.6f}" for l, (v, a) in zip(locs, va[rows])]
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
      lines["expr"][vf.video_id] = [f"{l},{int(c)}" for l, c in zip(locs, cls[rows])]
      acc["expr_p"].append(cls)
      acc["expr_t"].append(lab["expr"])
      acc["expr_m"].append(lab["expr_mask"] > 0)
    if "au" in outputs:
      au = (pred["au"] > 0).astype(np.int64)
      lines["au"][vf.video_id] = [l + "," + ",".join(str(int(x)) for x in r)
                                  for l, r in zip(locs, au[rows])]
      acc["au_p"].append(au)
      acc["au_t"].append(np.where(lab["au_mask"] > 0, lab["au"], -1).astype(np.int64))
    per_video.append(info)
  if not per_video:
    raise UserError(f"jaxaffect predict: no video for select={select!r}")
  if listed is not None:
    have = {v["video"] for v in per_video}
    missing = [v for v in listed if v not in have]
    if missing:
      raise UserError(f"jaxaffect predict: {frames_from} lists {len(missing)} video(s) that "
                      f"select={select!r} does not have, e.g. {missing[:5]}")
  order = list(listed) if listed is not None else [v["video"] for v in per_video]

  files = {}
  for o in outputs:
    os.makedirs(os.path.join(out_dir, o), exist_ok=True)
    path = os.path.join(out_dir, o, "predictions.txt")
    _write_atomic(path, [header[o]] + [l for v in order for l in lines[o].get(v, [])])
    files[o] = path

  # Metrics over the labelled frames; None where the selection has no label of that kind (the
  # test set): an F1 or a CCC of nothing is undefined, not 0.
  m: dict[str, Any] = {}
  if "va" in outputs:
    p, t, k = (np.concatenate(acc[x]) for x in ("va_p", "va_t", "va_m"))
    seq = np.concatenate(acc["seq"])
    m["va_frames"] = int(k.sum())
    if m["va_frames"] > 1:
      c = np.asarray(jm.ccc(p, t, k[:, None]))
      ps = np.asarray(jm.ccc_per_sequence(p, t, seq, k[:, None]))
      m.update(ccc_valence=float(c[0]), ccc_arousal=float(c[1]), p_va=float(c.mean()),
               ccc_valence_per_video=float(ps[0]), ccc_arousal_per_video=float(ps[1]))
    else:
      m.update(ccc_valence=None, ccc_arousal=None, p_va=None, ccc_valence_per_video=None,
               ccc_arousal_per_video=None)
  if "expr" in outputs:
    p, t, k = (np.concatenate(acc[x]) for x in ("expr_p", "expr_t", "expr_m"))
    m["expr_frames"] = int(k.sum())
    m["expr_macro_f1"] = (float(jm.macro_f1(t[k], p[k], num_classes=len(expr_names)))
                          if k.any() else None)
  if "au" in outputs:
    p, t = np.concatenate(acc["au_p"]), np.concatenate(acc["au_t"])
    m["au_frames"] = int((t >= 0).all(-1).sum())
    m["au_f1"] = float(jm.au_f1(t, p)) if m["au_frames"] else None
  summary = {"workdir": os.path.abspath(workdir), "step": int(step), "select": select,
             "window": window, "stride": stride, "videos": len(per_video),
             "frames": int(sum(v["frames"] for v in per_video)),
             "no_face_frames": int(sum(v["no_face_frames"] for v in per_video)),
             "submission_lines": {o: sum(len(lines[o].get(v, [])) for v in order)
                                  for o in outputs},
             "frames_from": frames_from, "metrics": m, "files": files, "per_video": per_video}
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary
