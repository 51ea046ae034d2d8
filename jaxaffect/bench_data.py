"""`jaxaffect bench data [--json]`: input-pipeline throughput, ours beside a PyTorch-style loader.

Per core (one process, one thread each, measured in the same run, rounds interleaved):
  * reader: decoded + augmented clips/s from data_prep shards (manifest random access, JPEG decode of
    the sampled frames only, torchvision-style RandomResizedCrop + flip, the same for every frame)
    vs. a PyTorch-style loader (a `torch.utils.data.Dataset` opening the same JPEG bytes as files in
    per-video folders with PIL, torchvision `RandomResizedCrop.get_params` + `resized_crop` per
    frame, `pil_to_tensor`), for Former-DFER clips (8x2 frames at 112 px) and EST clips (7x5 frames
    at 224 px) with the official samplers;
  * prep: frames/s of `data_prep` (1 worker) for three paths: synthetic videos aligned with their
    own landmarks (includes rendering), folders of dataset-provided crops (`--detector none`, the
    DFEW path), and an mp4 through BlazeFace + FaceMesh (`--detector blazeface`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

from jaxaffect.errors import UserError

CLIPS = {  # name: (crop size, sampler)
    "former_dfer 16x112^2": (112, "former_dfer"),
    "est 35x224^2": (224, "est"),
}


def _log(msg: str) -> None:
  print(f"[bench data] {msg}", file=sys.stderr, flush=True)


def _prep(argv: list[str]) -> tuple[float, dict]:
  """Runs the preprocessing job as users do (`python -m data_prep ...`, 1 worker: jaxaffect reaches
  data_prep only through its command line); the time includes the process start (~1 s)."""
  import subprocess
  from jaxaffect.data import schema
  cmd = [sys.executable, "-m", "data_prep", *argv, "--quiet", "--workers", "1"]
  t = time.perf_counter()
  r = subprocess.run(cmd, capture_output=True, text=True)
  dt = time.perf_counter() - t
  if r.returncode:
    raise UserError(f"bench data: `{' '.join(cmd)}` failed: {r.stderr.strip()[-2000:]}")
  return dt, schema.read_manifest(argv[argv.index("--out") + 1])


def _indices(sampler: str, n: int, rng: np.random.Generator) -> np.ndarray:
  from jaxaffect.data import samplers
  if sampler == "former_dfer":
    return samplers.former_dfer_indices(n, num_segments=8, duration=2, train=True, rng=rng)
  return samplers.est_indices(n, train=True, rng=rng).ravel()


class OurReader:
  def __init__(self, shard_dir: str, size: int, sampler: str):
    from jaxaffect.data import pipeline
    self.src = pipeline.ShardRecords(shard_dir, "train")
    self.size, self.sampler = size, sampler

  def clip(self, i: int, rng: np.random.Generator) -> np.ndarray:
    from jaxaffect.data import augment, schema
    rec = self.src[i % len(self.src)]["record"]
    frames = schema.decode_frames(rec.jpegs, _indices(self.sampler, rec.num_frames, rng))
    video, _ = augment.augment_clip(frames, rng, size=self.size, crop="resized_crop")
    return video


class TorchStyleReader:
  """What PyTorch DFER code does: PIL frames from folders, torchvision transforms per frame."""

  def __init__(self, folder_root: str, size: int, sampler: str):
    import torch
    from torchvision.transforms import RandomResizedCrop
    from torchvision.transforms import functional as F
    self.torch, self.F, self.RRC = torch, F, RandomResizedCrop
    self.videos = sorted(os.path.join(folder_root, d) for d in os.listdir(folder_root))
    self.files = [sorted(os.listdir(v), key=lambda s: int(s.split(".")[0])) for v in self.videos]
    self.size, self.sampler = size, sampler

  def clip(self, i: int, rng: np.random.Generator):
    from PIL import Image
    k = i % len(self.videos)
    idx = _indices(self.sampler, len(self.files[k]), rng)
    imgs = [Image.open(os.path.join(self.videos[k], self.files[k][j])).convert("RGB") for j in idx]
    top, left, h, w = self.RRC.get_params(imgs[0], (0.08, 1.0), (3 / 4, 4 / 3))
    flip = self.torch.rand(1).item() < 0.5
    out = []
    for im in imgs:
      im = self.F.resized_crop(im, top, left, h, w, [self.size, self.size])
      if flip:
        im = self.F.hflip(im)
      out.append(self.F.pil_to_tensor(im))
    return self.torch.stack(out)


def _time_interleaved(readers: list, clips: int, rounds: int) -> list[list[float]]:
  """Seconds per clip of each reader, per round; rounds alternate between readers."""
  out = [[] for _ in readers]
  rng = [np.random.default_rng(0) for _ in readers]
  for r in readers:                      # warm-up: imports, file cache, first decode
    r.clip(0, np.random.default_rng(1))
  for rd in range(rounds):
    for j, r in enumerate(readers):
      t = time.perf_counter()
      for i in range(clips):
        r.clip(rd * clips + i, rng[j])
      out[j].append((time.perf_counter() - t) / clips)
  return out


def _export_folders(shard_dir: str, root: str) -> int:
  """The shards' JPEG bytes as `<root>/<video>/<i>.jpg` files (identical bytes)."""
  from jaxaffect.data import schema
  m = schema.read_manifest(shard_dir)
  n = 0
  for r in m["records"]:
    with open(os.path.join(shard_dir, r["file"]), "rb") as f:
      rec = schema.decode(schema.read_record_at(f, r["offset"]))
    d = os.path.join(root, f"{r['split']}_{rec.video_id}")
    os.makedirs(d, exist_ok=True)
    for i, b in enumerate(rec.jpegs):
      with open(os.path.join(d, f"{i + 1}.jpg"), "wb") as f:
        f.write(b)
      n += 1
  return n


def _write_mp4(path: str, frames: np.ndarray, fps: int = 25) -> None:
  import av
  with av.open(path, "w") as c:
    s = c.add_stream("libx264", rate=fps)
    s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    s.options = {"crf": "18"}
    for fr in frames:
      for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(fr), format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)


def run(videos: int = 8, frames: int = 48, clips: int = 8, rounds: int = 5,
        workdir: str | None = None) -> dict[str, Any]:
  import torch
  torch.set_num_threads(1)
  import cv2
  cv2.setNumThreads(1)
  if workdir and os.path.isdir(workdir) and os.listdir(workdir):
    raise UserError(f"jaxaffect bench data: --workdir {workdir} is not empty (a reused directory "
                    f"would time resumed, finished prep jobs)")
  tmp = workdir or tempfile.mkdtemp(prefix="jaxaffect_bench_data_")
  result: dict[str, Any] = {"videos": videos, "frames_per_video": frames, "clips_per_round": clips,
                            "rounds": rounds, "threads": 1, "readers": {}, "prep": {}}
  try:
    for name, (size, sampler) in CLIPS.items():
      shard_dir = os.path.join(tmp, f"shards_{size}")
      _log(f"{name}: prep {videos} synthetic videos x {frames} frames at {size} px")
      dt, m = _prep(["synthetic", "--src", "-", "--out", shard_dir, "--num-videos", str(videos),
                     "--num-frames", str(frames), "--render-size", str(size), "--size", str(size)])
      nf = m["totals"]["frames"]
      result["prep"][f"synthetic {size}px (render + align, precomputed landmarks)"] = {
          "frames": nf, "seconds": dt, "frames_per_s": nf / dt}
      folders = os.path.join(tmp, f"folders_{size}")
      _export_folders(shard_dir, folders)
      dt, m = _prep(["folder", "--src", folders, "--out", os.path.join(tmp, f"refold_{size}"),
                     "--precomputed", "--detector", "none", "--size", str(size)])
      result["prep"][f"folder of {size}px crops -> {size}px (--detector none)"] = {
          "frames": m["totals"]["frames"], "seconds": dt, "frames_per_s": m["totals"]["frames"] / dt}
      readers = [OurReader(shard_dir, size, sampler), TorchStyleReader(folders, size, sampler)]
      _log(f"{name}: timing {rounds} rounds x {clips} clips per reader, interleaved")
      times = _time_interleaved(readers, clips, rounds)
      ours, ref = statistics.median(times[0]), statistics.median(times[1])
      result["readers"][name] = {
          "ours_clips_per_s": 1 / ours, "torch_style_clips_per_s": 1 / ref,
          "ours_over_torch_style": ref / ours,
          "ours_s_per_clip_rounds": times[0], "torch_style_s_per_clip_rounds": times[1]}
    # Raw video with the detector: BlazeFace + FaceMesh + alignment on an mp4.
    from jaxaffect.data import synthetic
    vid = synthetic.generate_video(7, expression=0, num_frames=frames, size=256, pose_amount=0.5)
    vdir = os.path.join(tmp, "videos")
    os.makedirs(vdir)
    _write_mp4(os.path.join(vdir, "face.mp4"), vid["frames"])
    _log("prep: mp4 through BlazeFace + FaceMesh")
    dt, m = _prep(["video", "--src", vdir, "--out", os.path.join(tmp, "vshards"),
                   "--detector", "blazeface", "--size", "112"])
    nf = m["totals"]["frames"]
    result["prep"]["mp4 256px -> 112px (--detector blazeface)"] = {
        "frames": nf, "seconds": dt, "frames_per_s": nf / dt,
        "face_found": m["splits"][next(iter(m["splits"]))]["face_found"]}
  finally:
    if workdir is None:
      shutil.rmtree(tmp, ignore_errors=True)
  return result


def format_table(r: dict[str, Any]) -> str:
  lines = [f"jaxaffect bench data  (one process, 1 thread each; {r['rounds']} interleaved rounds of "
           f"{r['clips_per_round']} clips, median)", "",
           f"{'clips':<24}{'ours clips/s':>14}{'torch-style':>14}{'ours/torch':>12}"]
  for name, v in r["readers"].items():
    lines.append(f"{name:<24}{v['ours_clips_per_s']:>14.1f}{v['torch_style_clips_per_s']:>14.1f}"
                 f"{v['ours_over_torch_style']:>11.2f}x")
  lines += ["", f"{'prep path (1 worker)':<62}{'frames':>8}{'frames/s':>10}"]
  for name, v in r["prep"].items():
    extra = f"  faces {v['face_found']}/{v['frames']}" if "face_found" in v else ""
    lines.append(f"{name:<62}{v['frames']:>8}{v['frames_per_s']:>10.1f}{extra}")
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="jaxaffect bench data", description=__doc__.split("\n")[0])
  p.add_argument("--json", action="store_true", help="one JSON line on stdout (table to stderr)")
  p.add_argument("--videos", type=int, default=8, help="synthetic videos per clip type")
  p.add_argument("--frames", type=int, default=48, help="frames per video")
  p.add_argument("--clips", type=int, default=8, help="clips per timed round")
  p.add_argument("--rounds", type=int, default=5, help="timed rounds per reader")
  p.add_argument("--workdir", default=None, help="keep the shards/folders here")
  a = p.parse_args(argv)
  r = run(a.videos, a.frames, a.clips, a.rounds, a.workdir)
  text = format_table(r)
  if a.json:
    print(text, file=sys.stderr)
    print(json.dumps(r), flush=True)
  else:
    print(text, flush=True)
  return 0
