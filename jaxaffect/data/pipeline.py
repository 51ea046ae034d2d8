"""grain input pipelines: per-host split, shuffle, sampling, augmentation, batching.

What is read and how an example is made are the two parts of `config.data` (jaxaffect/data/
parts.py): `data.source` gives the records (data_prep `shards`, in-memory `synthetic` videos,
Former-DFER `list_file`s, per-frame `features`; data/source_parts.py), `data.sampler` makes one
example of a record, augmented in training (data/sampler_parts.py). Only the sampled frames of a
record are decoded. Two train readers:
  * `index` (default): random access (the shards' manifest byte offsets); a global shuffle,
    reshuffled every epoch, then a per-host split of each global batch (any host count sees the
    same global batches);
  * `stream` (`data.source.reader`, shards only): pod-scale reading: shard files are shuffled per
    epoch and split per host by process index, each host interleaves its files (`cycle_length`
    open at once) and shuffles records in a window (`shuffle_window`); no random access needed
    (gcsfuse, slow disks).

The training iterator is a grain `DatasetIterator`: its state goes into the Orbax checkpoint and a
restored run continues with the identical next batch.
"""
from __future__ import annotations

from typing import Any, Iterator

import grain
import jax
import ml_collections
import numpy as np

from jaxaffect.data import parts
# Re-exported: these were defined here (the training loop, data_prep, bench and tests use them).
from jaxaffect.data.clips import (FrameSampler, VideoClip, crop_and_resize,  # noqa: F401
                                  frame_labels, sample_resized_crop_box)
from jaxaffect.data.records import (ShardFileRecords, ShardRecords, parse_select,  # noqa: F401
                                    parse_stream_record, record_to_example, select_records,
                                    shard_files)
from jaxaffect.data.sources import InMemoryVideos, ListFileVideos  # noqa: F401
from jaxaffect.errors import UserError


def make_clip(cfg: ml_collections.ConfigDict, train: bool):
  """The sampler + augmentation of `config.data` (train or eval): its `sampler` part."""
  return parts.sampler(cfg).make(train)


# ---------------------------------------------------------------------------------------- builders
def build_sources(cfg: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """(train source, eval source) of `config.data`: the records of its `source` part, as items of
  its `sampler` part (videos, frames or windows)."""
  src, smp = parts.check(cfg)
  return smp.items(*src.build())


def local_batch_size(global_batch: int) -> int:
  pc = jax.process_count()
  if global_batch % pc:
    raise UserError(f"batch_size={global_batch} is not divisible by {pc} processes")
  return global_batch // pc


def train_iterator(source, cfg: ml_collections.ConfigDict, global_batch: int, seed: int):
  """Infinite, reshuffled every epoch, this host's share of each global batch; checkpointable."""
  clip = make_clip(cfg, train=True)
  if parts.source(cfg).reader() == "stream":
    if not isinstance(source, ShardRecords):
      raise UserError("config.data.source.reader='stream' streams whole shard records (a clip or "
                      "window sampler); use reader='index' for "
                      f"{type(source).__name__} (e.g. the frame_views sampler's frames)")
    return stream_iterator(source, cfg, clip, global_batch, seed)
  if hasattr(source, "map_dataset"):          # a source that orders itself (data/mixture.py)
    ds = source.map_dataset(seed)
  else:
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
                    f"processes; write more shards (data_prep --shards) or use "
                    f"config.data.source.reader='index'")
  sc = cfg.source
  kind, value = parse_select(source.select)
  label_vocab = source.label_vocab

  def keep(ex):
    rec = ex["record"]
    return rec.split == value if kind == "split" else value in rec.folds

  ds = grain.MapDataset.source(files).seed(seed).shuffle().repeat(None)[pi::pc]
  ds = ds.map(ShardFileRecords)
  ds = grain.experimental.InterleaveIterDataset(ds, cycle_length=min(sc.cycle_length,
                                                                     len(files)))
  ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=sc.shuffle_window,
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
  a model without reading data): the samplers' outputs do not depend on the video length, so the
  source part gives a black video long enough for the sampler (feature windows: the streams'
  configured `dim`s)."""
  src, smp = parts.check(cfg)
  return src.spec(smp)


def batch_spec(source, cfg: ml_collections.ConfigDict, global_batch: int):
  """Global shapes/dtypes of one batch (for `eval_shape` and sharded init)."""
  clip = make_clip(cfg, train=False)
  ex = clip(source[0])
  return {k: jax.ShapeDtypeStruct((global_batch,) + np.shape(v), np.asarray(v).dtype)
          for k, v in ex.items()}
