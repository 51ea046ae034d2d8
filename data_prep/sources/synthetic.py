"""Procedural face videos (`jaxaffect.data.synthetic`) with exact per-frame labels and geometry.

Video k (k = `--start` .. `--start` + `--num-videos` - 1) is `synthetic.iter_videos(num_videos,
seed, start=...)`'s k-th video (`generate_video(video_seed(seed, k), expression=k % 7, num_frames,
size, pose_amount=--pose, occlusion_prob=--occlusion)`), so it depends only on (seed, k): separate
runs with different `--start` write disjoint, reproducible sets (e.g. train / val).

`--heldout-videos N` adds N videos of another generator seed (`--seed` + 1,000,003: other identities)
as split `--heldout-split` (default "test"), in the same job.

Each item: video_id `<k:06d>`, split `--split` (default "train"), fps 25 (t_sec = index / 25,
index 0-based), clip_label = the expression (vocab `dfew7`), per-frame `expr` (dfew7), `au` (12
units, `synthetic.AUS`), `va`, `landmarks` (68, "ibug68") and `boxes` (the face oval's tight box)
as precomputed geometry. Frames are whole synthetic images (`precomputed=False`): the face stage
crops them with the given landmarks. `meta` records the seeds and the occluded frame indices.
Listing is free: a video is rendered by `VideoItem.resolve()` in the worker that writes it, so
workers render in parallel and one video per worker is in memory at a time.
"""
from __future__ import annotations

import argparse
from typing import Iterator

import numpy as np

from data_prep.sources.base import Frame, Skip, VideoItem
from data_prep.sources import _util
from jaxaffect.data import synthetic

FPS = 25.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--num-videos", type=_util.int_arg(0), default=16)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--start", type=_util.int_arg(0), default=0, help="index of the first video")
  parser.add_argument("--num-frames", type=_util.int_arg(1), default=32)
  parser.add_argument("--render-size", type=_util.int_arg(1), default=112,
                      help="rendered frame height = width (px); the crop size is --size")
  parser.add_argument("--pose", type=_util.float_arg(0.0), default=0.3,
                      help="head-pose variation (0 = frontal)")
  parser.add_argument("--occlusion", type=_util.float_arg(0.0, 1.0), default=0.2,
                      help="probability of an occluder")
  parser.add_argument("--split", default="train")
  parser.add_argument("--heldout-videos", type=_util.int_arg(0), default=0,
                      help="also write this many videos of another seed (unseen identities)")
  parser.add_argument("--heldout-split", default="test")


def _frames(images: np.ndarray):
  def gen() -> Iterator[Frame]:
    for i, image in enumerate(images):
      yield Frame(index=i, t_sec=i / FPS, image=image)
  return gen


HELDOUT_SEED_OFFSET = 1_000_003


def _item(k: int, seed: int, split: str, kw: dict) -> VideoItem:
  num_frames = kw["num_frames"]

  def resolve() -> VideoItem:
    v = synthetic.generate_video(synthetic.video_seed(seed, k),
                                 expression=k % synthetic.NUM_EXPRESSIONS, **kw)
    return VideoItem(
        dataset="synthetic", video_id=f"{k:06d}", split=split, frames=_frames(v["frames"]),
        num_frames=num_frames, fps=FPS, source_path="", clip_label=int(v["label"]), vocab="dfew7",
        va=v["va"], expr=v["expr"], expr_vocab="dfew7", au=v["au"], au_names=tuple(synthetic.AUS),
        boxes=v["face_box"], landmarks=v["landmarks"], landmark_scheme="ibug68",
        meta=dict(seed=seed, index=k, video_seed=int(v["seed"]),
                  occluded_frames=[int(i) for i in np.flatnonzero(v["occluded"])]))

  def frames():
    return resolve().frames()

  return VideoItem(dataset="synthetic", video_id=f"{k:06d}", split=split, frames=frames,
                   num_frames=num_frames, fps=FPS, clip_label=k % synthetic.NUM_EXPRESSIONS,
                   vocab="dfew7", resolve=resolve)


def items(src: str, args: argparse.Namespace) -> Iterator[VideoItem | Skip]:
  """`--num-videos` synthetic videos (+ `--heldout-videos`); `src` is unused. Items are light:
  `resolve()` renders the video and its labels."""
  del src
  seed = int(_util.opt(args, "seed", 0))
  start = int(_util.opt(args, "start", 0))
  kw = dict(num_frames=int(_util.opt(args, "num_frames", 32)),
            size=int(_util.opt(args, "render_size", 112)),
            pose_amount=float(_util.opt(args, "pose", 0.3)),
            occlusion_prob=float(_util.opt(args, "occlusion", 0.2)))
  for k in range(start, start + int(_util.opt(args, "num_videos", 16))):
    yield _item(k, seed, _util.opt(args, "split", "train"), kw)
  for k in range(int(_util.opt(args, "heldout_videos", 0))):
    yield _item(k, seed + HELDOUT_SEED_OFFSET, _util.opt(args, "heldout_split", "test"), kw)
