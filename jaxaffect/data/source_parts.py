"""The sources of `config.data.source` (data config by parts: jaxaffect/data/parts.py).

  shards     data_prep face shards (TFRecord + manifest), selected by split or fold; index or
             stream reader                                          (data/records.py)
  mixture    several shard directories mixed with weights          (data/mixture.py)
  synthetic  procedural face videos generated in memory             (data/synthetic.py)
  list_file  Former-DFER annotation lists over folders of frames    (data/sources.py)
  features   per-frame feature streams + labels, for sequence models (data/features.py)
"""
from __future__ import annotations

import os

import numpy as np

from jaxaffect.data import parts, vocab
from jaxaffect.errors import MissingFile, UserError


class Shards(parts.Source):
  """`python -m data_prep` output: records of `train_select` / `eval_select` ("train", "1:test":
  split name or fold membership), clip labels converted to `data.label_vocab`."""
  NAME = "shards"
  PATHS = ("shards",)
  FIELDS = dict(
      shards="",                  # a data_prep output directory (manifest.json + shards)
      train_select="train",       # split name ('train') or fold membership ('1:train')
      eval_select="test",         # the held-out selection
      reader="index",             # 'index' (random access, global shuffle) or 'stream' (per-host files)
      cycle_length=4,             # stream reader: shard files read concurrently per host
      shuffle_window=64,          # stream reader: record shuffle window
  )

  def build(self):
    from jaxaffect.data.records import ShardRecords
    c = self.cfg
    if not c.shards:
      raise UserError(f"data.source 'shards' needs {self.field('shards')} (a data_prep output "
                      f"directory)")
    kw = dict(label_vocab=self.data.get("label_vocab", ""))
    out = (ShardRecords(c.shards, c.train_select, **kw), ShardRecords(c.shards, c.eval_select, **kw))
    for src in out:
      src.check_label_maps(self.data.get("expr_vocab", ""))
    return out

  def reader(self) -> str:
    r = self.cfg.reader
    if r not in ("index", "stream"):
      raise UserError(f"{self.field('reader')}={r!r}: expected 'index' or 'stream'")
    return r


class Mixture(parts.Source):
  """Several data_prep shard directories as one source (`data/mixture.py`): training interleaves
  them in the proportions of their weights, evaluation reads every component's held-out records.
  `sources`: [{"shards": DIR, "weight": w, "train_select": "train", "eval_select": "val"}, ...]
  (weight default 1, selects default to this part's `train_select` / `eval_select`)."""
  NAME = "mixture"
  FIELDS = dict(
      sources=[],                 # components: {shards, weight?, train_select?, eval_select?}
      train_select="train",       # default selection of a component
      eval_select="val",
      labels="keep",              # 'keep' (converted to data.label_vocab) or 'drop' (none)
  )
  KEYS = ("shards", "weight", "train_select", "eval_select")

  def components(self) -> list[dict]:
    c, out = self.cfg, []
    if not c.sources:
      raise UserError(f"data.source 'mixture' needs {self.field('sources')} (a list of "
                      f"{{shards, weight}} components)")
    if c.labels not in ("keep", "drop"):
      raise UserError(f"{self.field('labels')}={c.labels!r}: expected 'keep' or 'drop'")
    for i, comp in enumerate(c.sources):
      comp = dict(comp) if hasattr(comp, "keys") else None
      where = f"{self.field('sources')}[{i}]"
      if comp is None or not comp.get("shards"):
        raise UserError(f"{where}: expected a dict with 'shards' (a data_prep output directory)")
      unknown = sorted(set(comp) - set(self.KEYS))
      if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown} (keys: {list(self.KEYS)})")
      out.append(dict(shards=comp["shards"], weight=float(comp.get("weight", 1.0)),
                      train_select=comp.get("train_select", c.train_select),
                      eval_select=comp.get("eval_select", c.eval_select)))
    return out

  def build(self):
    from jaxaffect.data import mixture
    from jaxaffect.data.records import ShardRecords
    comps = self.components()
    vocab_name, drop = self.data.get("label_vocab", ""), self.cfg.labels == "drop"
    kw = dict(label_vocab="" if drop else vocab_name)
    tr = [ShardRecords(x["shards"], x["train_select"], **kw) for x in comps]
    ev = [ShardRecords(x["shards"], x["eval_select"], **kw) for x in comps]
    for src in tr + ev:
      src.check_label_maps(self.data.get("expr_vocab", ""))
    if not drop and not vocab_name:
      mixture.check_vocabularies(tr, [x["shards"] for x in comps])
    return (mixture.MixtureRecords(tr, [x["weight"] for x in comps], drop_labels=drop),
            mixture.ConcatRecords(ev, drop_labels=drop, name="mixture-eval"))

  def absolute_paths(self, absolute) -> None:
    self.cfg.sources = [dict(x, shards=absolute(x.get("shards", ""))) if hasattr(x, "keys") else x
                        for x in self.cfg.sources]


class Synthetic(parts.Source):
  """Procedural face videos (`data/synthetic.py`) generated in memory; the eval videos come from
  other generator seeds (unseen identities). Classes are in `synthetic.VOCAB` and converted to
  `data.label_vocab` exactly as `ShardRecords` converts the same videos written as shards."""
  NAME = "synthetic"
  FIELDS = dict(
      num_train=0,                # training videos
      num_eval=0,                 # held-out videos
      video_frames=0,             # frames per video
      seed=0,                     # generator seed (eval: seed + 1000003)
      pose=1.0,                   # head-pose variation (0 frontal/static, 1 full)
      occlusion=0.2,              # probability of an occluded span of frames
  )

  def build(self):
    from jaxaffect.data import synthetic
    from jaxaffect.data.sources import InMemoryVideos
    c, size = self.cfg, int(self.data.image_size)
    common = dict(num_frames=c.video_frames, size=size, pose_amount=c.pose,
                  occlusion_prob=c.occlusion)
    tr = synthetic.generate_dataset(c.num_train, seed=c.seed, **common)
    ev = synthetic.generate_dataset(c.num_eval, seed=c.seed + 1_000_003, **common)
    target = self.data.get("label_vocab", "")

    def labels(y):
      if not target or target == synthetic.VOCAB:
        return y
      try:
        return vocab.convert(np.asarray(y), synthetic.VOCAB, target)
      except ValueError as e:
        raise UserError(f"config.data.label_vocab={target!r} with data.source 'synthetic' "
                        f"(classes in {synthetic.VOCAB!r}): {e}") from None
    return (InMemoryVideos(tr["frames"], labels(tr["label"]), "synthetic-train"),
            InMemoryVideos(ev["frames"], labels(ev["label"]), "synthetic-eval"))


class ListFile(parts.Source):
  """Former-DFER's annotation lists (`<frame dir> <num_frames> <label>` per line) over folders of
  JPEG frames, as the official code reads DFEW / AFEW / FERV39K."""
  NAME = "list_file"
  PATHS = ("train_list", "eval_list", "root")
  FIELDS = dict(
      train_list="",              # official list file, train split
      eval_list="",               # official list file, test split
      root="",                    # replaces the absolute frame-dir prefix in the lists ('' = as is)
  )

  def build(self):
    from jaxaffect.data.sources import ListFileVideos
    c = self.cfg
    if not c.train_list or not c.eval_list:
      raise UserError(f"data.source 'list_file' needs {self.field('train_list')} and "
                      f"{self.field('eval_list')}")
    for f in ("train_list", "eval_list"):
      if not os.path.isfile(c[f]):
        raise MissingFile(f"{self.field(f)}={c[f]!r}: no such file (a Former-DFER annotation "
                          f"list: `<frame dir> <num_frames> <label>` lines)")
    kw = dict(root=c.root or None, image_size=self.data.image_size,
              num_classes=self.data.num_classes)
    return ListFileVideos(c.train_list, **kw), ListFileVideos(c.eval_list, **kw)


class Features(parts.Source):
  """Per-frame feature streams joined with per-frame labels (`data/features.py`: ABAW teams'
  `.npy` folders, feature shards, audio arrays), one timeline per video; the `feature_windows`
  sampler cuts them into windows."""
  NAME = "features"
  SAMPLERS = ("feature_windows",)
  PATHS = ("labels", "fps_csv")
  FIELDS = dict(
      features=[],                # streams: [{name, kind, path, dim?, rate_hz?, key?, stream?}]
      labels="",                  # Aff-Wild2 annotation folder or face/feature shards
      train_select="train",
      eval_select="val",
      fps=0.0,                    # frame rate when the labels do not give frame times
      fps_csv="",                 # per-video frame rates (`video,fps` lines; '' = none)
      num_au=12,                  # AU columns of the labels
      label_tasks=(),             # annotation files read: the tasks trained (() = all)
  )

  def build(self):
    from jaxaffect.data import features
    reader = features.FeatureReader(self.data)
    out = []
    for sel in (self.cfg.train_select, self.cfg.eval_select):
      vids = list(reader.videos(sel))
      if not vids:
        raise UserError(f"data.source 'features': no video for select={sel!r}")
      out.append(vids)
    return tuple(out)

  def spec(self, sampler):
    from jaxaffect.data import features
    return features.spec_source(self.data)

  def absolute_paths(self, absolute) -> None:
    super().absolute_paths(absolute)
    self.cfg.features = [dict(f, path=absolute(f.get("path", ""))) if isinstance(f, dict) else f
                         for f in self.cfg.features]
