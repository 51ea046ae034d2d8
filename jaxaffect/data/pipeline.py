"""grain input pipelines: per-host split, shuffle, clip sampling, augmentation, batching.

Sources (one record = one video):
  - `shards`: TFRecord shards written by `python -m data_prep` (schema: `jaxaffect.data.schema`),
    selected by split or fold membership ("train", "1:test", ...). Two readers:
      * `index` (default): random access through the manifest's byte offsets; a global shuffle,
        reshuffled every epoch, then a per-host split of each global batch (any host count sees
        the same global batches);
      * `stream`: pod-scale reading: shard files are shuffled per epoch and split per host by
        process index, each host interleaves its files (`cycle_length` open at once) and shuffles
        records in a window (`shuffle_window`); no random access needed (gcsfuse, slow disks).
  - `synthetic`: procedural face videos from `jaxaffect.data.synthetic`, generated in memory;
  - `list_file`: Former-DFER's annotation lists (`<frame dir> <num_frames> <label>` per line) over
    folders of JPEG frames (DFEW/AFEW/FERV39K as the official code reads them).
Only the sampled frames of a record are decoded.

The training iterator is a grain `DatasetIterator`: its state goes into the Orbax checkpoint and a
restored run continues with the identical next batch.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

import grain
import jax
import ml_collections
import numpy as np

from jaxaffect.data import features, frames, vocab
# Re-exported: these were defined here (the training loop, data_prep, bench and tests use them).
from jaxaffect.data.clips import (FrameSampler, VideoClip, crop_and_resize,  # noqa: F401
                                  frame_labels, sample_resized_crop_box)
from jaxaffect.data.records import (ShardFileRecords, ShardRecords, parse_select,  # noqa: F401
                                    parse_stream_record, record_to_example, select_records,
                                    shard_files)
from jaxaffect.data.sources import InMemoryVideos, ListFileVideos  # noqa: F401
from jaxaffect.errors import MissingFile, UserError


def make_clip(cfg: ml_collections.ConfigDict, train: bool):
  """The sampler + augmentation of `config.data` (train or eval)."""
  if cfg.get("source", "") == "features":       # per-frame feature windows (data/features.py)
    return features.make_clip(cfg, train)
  kind = cfg.get("sampler", "former_dfer")
  if kind == "frame_views":                     # single frames + landmarks (+ 2nd view; frames.py)
    return frames.make_views(cfg, train)
  if kind == "former_dfer":
    if train:
      return VideoClip(cfg.num_segments, cfg.duration, cfg.image_size, train=True, hflip=cfg.hflip,
                       random_resized_crop=cfg.get("random_resized_crop", False))
    return VideoClip(cfg.num_segments, cfg.duration, cfg.image_size, train=False)
  return FrameSampler(kind, cfg.image_size, train, window=cfg.get("window", 300),
                      stride=cfg.get("stride", 200), crop=cfg.get("crop", None) or None,
                      flip_prob=0.5 if cfg.get("hflip", True) else 0.0,
                      color_jitter=cfg.get("color_jitter", 0.0),
                      expr_vocab=cfg.get("expr_vocab", ""))


# ---------------------------------------------------------------------------------------- builders
def build_sources(cfg: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """(train source, eval source) from `config.data`."""
  if cfg.source == "features":                  # per-frame feature windows (data/features.py)
    return features.build_sources(cfg)
  if cfg.get("sampler", "") == "frame_views" and cfg.source != "shards":
    raise UserError(f"config.data.sampler='frame_views' reads the landmarks of data_prep shards "
                    f"(field 'frame/landmarks'): data.source={cfg.source!r} has none")
  if cfg.source == "synthetic":
    from jaxaffect.data import synthetic
    common = dict(num_frames=cfg.video_frames, size=cfg.image_size,
                  pose_amount=cfg.get("synthetic_pose", 1.0),
                  occlusion_prob=cfg.get("synthetic_occlusion", 0.2))
    tr = synthetic.generate_dataset(cfg.num_train, seed=cfg.seed, **common)
    ev = synthetic.generate_dataset(cfg.num_eval, seed=cfg.seed + 1_000_003, **common)

    def labels(y):   # the synthetic videos' classes are in `dfew7`, as in their data_prep shards:
      target = cfg.get("label_vocab", "")        # converted exactly as `ShardRecords` converts them
      if not target or target == synthetic.VOCAB:
        return y
      try:
        return vocab.convert(np.asarray(y), synthetic.VOCAB, target)
      except ValueError as e:
        raise UserError(f"config.data.label_vocab={target!r} with data.source='synthetic' "
                        f"(classes in {synthetic.VOCAB!r}): {e}") from None
    return (InMemoryVideos(tr["frames"], labels(tr["label"]), "synthetic-train"),
            InMemoryVideos(ev["frames"], labels(ev["label"]), "synthetic-eval"))
  if cfg.source == "shards":
    if not cfg.get("shards"):
      raise UserError("config.data.source='shards' needs data.shards (a data_prep output directory)")
    kw = dict(label_vocab=cfg.get("label_vocab", ""))
    out = (ShardRecords(cfg.shards, cfg.get("train_select", "train"), **kw),
           ShardRecords(cfg.shards, cfg.get("eval_select", "test"), **kw))
    for src in out:
      src.check_label_maps(cfg.get("expr_vocab", ""))
    if cfg.get("sampler", "") == "frame_views":   # items are frames (data/frames.py)
      k = frames.check_frames_per_video(cfg)
      out = (frames.FrameRecords(out[0], k), frames.FrameRecords(out[1], 0))
    return out
  if cfg.source == "list_file":
    if not cfg.train_list or not cfg.eval_list:
      raise UserError("config.data.source='list_file' needs data.train_list and data.eval_list")
    for field in ("train_list", "eval_list"):
      if not os.path.isfile(cfg[field]):
        raise MissingFile(f"config.data.{field}={cfg[field]!r}: no such file (a Former-DFER "
                          f"annotation list: `<frame dir> <num_frames> <label>` lines)")
    kw = dict(root=cfg.root or None, image_size=cfg.image_size, num_classes=cfg.num_classes)
    return ListFileVideos(cfg.train_list, **kw), ListFileVideos(cfg.eval_list, **kw)
  raise UserError(f"config.data.source={cfg.source!r}: expected 'shards', 'synthetic' or 'list_file'")


def local_batch_size(global_batch: int) -> int:
  pc = jax.process_count()
  if global_batch % pc:
    raise UserError(f"batch_size={global_batch} is not divisible by {pc} processes")
  return global_batch // pc


def train_iterator(source, cfg: ml_collections.ConfigDict, global_batch: int, seed: int):
  """Infinite, reshuffled every epoch, this host's share of each global batch; checkpointable."""
  clip = make_clip(cfg, train=True)
  reader = cfg.get("reader", "index")
  if reader not in ("index", "stream"):
    raise UserError(f"config.data.reader={reader!r}: expected 'index' or 'stream'")
  if reader == "stream":
    if not isinstance(source, ShardRecords):
      raise UserError("data.reader='stream' streams whole shard records (data.source='shards' "
                      "with a clip or window sampler); use data.reader='index' for "
                      f"{type(source).__name__} (e.g. frame-level or feature sources)")
    return stream_iterator(source, cfg, clip, global_batch, seed)
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
  # Random transforms are seeded by the position in the global order, before the per-host split,
  # so any number of hosts sees the same clips (and augmentations) in each global batch.
  ds = ds.random_map(lambda r, rng: clip(r, rng))
  ds = ds[jax.process_index()::jax.process_count()]
  ds = ds.batch(local_batch_size(global_batch), drop_remainder=True)
  # Elements are batches here: bound the read-ahead (grain's default is 500 elements).
  opts = grain.ReadOptions(num_threads=cfg.get("read_threads", 4),
                           prefetch_buffer_size=cfg.get("prefetch_batches", 4))
  return iter(ds.to_iter_dataset(opts))


def stream_iterator(source: ShardRecords, cfg: ml_collections.ConfigDict, clip, global_batch: int,
                    seed: int):
  """Pod-scale reader: per-epoch shuffled shard files, split per host by process index, interleaved
  (`data.cycle_length` files open), records window-shuffled (`data.shuffle_window`), filtered to
  `select`, sampled + augmented, batched. Hosts read disjoint files, so (unlike `index`) the global
  batch depends on the host count. Checkpointable like the index reader."""
  files = shard_files(source.dir, source.select)
  pi, pc = jax.process_index(), jax.process_count()
  if len(files) < pc:
    raise UserError(f"{source.dir}: {len(files)} shard files for {source.select!r} but {pc} "
                    f"processes; write more shards (data_prep --shards) or use data.reader='index'")
  kind, value = parse_select(source.select)
  label_vocab = source.label_vocab

  def keep(ex):
    rec = ex["record"]
    return rec.split == value if kind == "split" else value in rec.folds

  ds = grain.MapDataset.source(files).seed(seed).shuffle().repeat(None)[pi::pc]
  ds = ds.map(ShardFileRecords)
  ds = grain.experimental.InterleaveIterDataset(ds, cycle_length=min(cfg.get("cycle_length", 4),
                                                                     len(files)))
  ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=cfg.get("shuffle_window", 64),
                                                   seed=seed + 1)
  ds = ds.map(lambda b: parse_stream_record(b, label_vocab)).filter(keep)
  ds = ds.random_map(lambda r, rng: clip(r, rng), seed=seed + 2 + pi)
  return iter(ds.batch(local_batch_size(global_batch), drop_remainder=True))


def eval_batches(source, cfg: ml_collections.ConfigDict, global_batch: int) -> Iterator[dict]:
  """Every eval video exactly once: this host's videos, the last batch padded with `mask=0`.

  Every host yields the same number of batches (collectives need it).
  """
  clip = make_clip(cfg, train=False)
  pi, pc = jax.process_index(), jax.process_count()
  lb = local_batch_size(global_batch)
  mine = list(range(pi, len(source), pc))
  per_host = -(-len(source) // pc)
  n_batches = -(-per_host // lb)
  ds = grain.MapDataset.source(source)[pi::pc].map(clip)
  template = None
  for b in range(n_batches):
    rows = [ds[i] for i in range(b * lb, min((b + 1) * lb, len(mine)))]
    if rows:
      template = rows[0]
    elif template is None:
      template = clip(source[0])
    while len(rows) < lb:
      pad = dict(template)
      for k in pad:                      # a padding row carries no label of any kind
        if k == "mask" or k.endswith("_mask") or k in ("valid", "face"):
          pad[k] = np.zeros_like(pad[k])
      rows.append(pad)
    yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def spec_sources(cfg: ml_collections.ConfigDict):
  """A one-example stand-in source whose batches have the configured shapes (to build or restore
  a model without reading data): the samplers' outputs do not depend on the video length, so a
  black video long enough for the clip sampler stands in; feature windows come from the
  streams' configured `dim`s."""
  if cfg.get("source", "") == "features":
    return features.spec_source(cfg)
  t = max(cfg.get("video_frames", 0) or 0, cfg.get("num_segments", 1) * cfg.get("duration", 1),
          cfg.get("window", 1) if cfg.get("sampler", "") in ("window", "sequence") else 1)
  return InMemoryVideos(np.zeros((1, t, cfg.image_size, cfg.image_size, 3), np.uint8),
                        np.zeros((1,), np.int32), "spec")


def batch_spec(source, cfg: ml_collections.ConfigDict, global_batch: int):
  """Global shapes/dtypes of one batch (for `eval_shape` and sharded init)."""
  clip = make_clip(cfg, train=False)
  ex = clip(source[0])
  return {k: jax.ShapeDtypeStruct((global_batch,) + np.shape(v), np.asarray(v).dtype)
          for k, v in ex.items()}
