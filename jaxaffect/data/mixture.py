"""Several shard directories read as one source (`config.data.source.name = "mixture"`): the
ABAW6 MAE corpus is AffectNet + RAF-DB + FER2013 + FER+ image shards, mixed with weights.

Training (`MixtureRecords`): every component is shuffled on its own (reshuffled at each of its
epochs) and repeated, and the components are interleaved by grain's `MapDataset.mix` in the exact
proportions of the weights, so a weight decides how often a dataset is seen, not its size. One
"epoch" of the mixture (for `num_epochs` and the schedule) is the sum of the components' sizes.
The training iterator takes the mixed dataset from `map_dataset(seed)`; its state is checkpointed
like any grain map dataset (a resumed run continues with the identical next batch).

Evaluation (`ConcatRecords`): every component's held-out records once, one after the other.

Labels: the components' clip labels are converted to `data.label_vocab`; with `label_vocab=''`
the components must share one vocabulary (else the labels would mean different classes: an error
naming them), unless `labels="drop"` (self-supervised pretraining: every clip label becomes
"none", `label_mask` 0). `index` is offset per component, so it is unique over the mixture.
"""
from __future__ import annotations

from typing import Any

import grain
import numpy as np

from jaxaffect.errors import UserError


class ConcatRecords(grain.sources.RandomAccessDataSource):
  """The records of several random-access sources, one after the other."""

  def __init__(self, sources: list, *, drop_labels: bool = False, name: str = "concat"):
    if not sources:
      raise UserError(f"{name}: no component source")
    self.sources, self.drop_labels, self.name = list(sources), drop_labels, name
    self.starts = np.concatenate([[0], np.cumsum([len(s) for s in sources])]).astype(np.int64)

  def __len__(self) -> int:
    return int(self.starts[-1])

  def locate(self, i: int) -> tuple[int, int]:
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f"{self.name}: item {i} of {len(self)}")
    k = int(np.searchsorted(self.starts, i, side="right") - 1)
    return k, i - int(self.starts[k])

  def item(self, k: int, j: int) -> dict[str, Any]:
    ex = dict(self.sources[k][j])
    ex["index"] = np.int32(int(self.starts[k]) + j)
    if self.drop_labels:
      ex["label"], ex["labelled"] = np.int32(-1), np.float32(0.0)
    return ex

  def __getitem__(self, i: int) -> dict[str, Any]:
    return self.item(*self.locate(i))

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.name}, {[repr(s) for s in self.sources]})"


class _Component(grain.sources.RandomAccessDataSource):
  """Component k of a mixture as its own source (labels and index as the mixture gives them)."""

  def __init__(self, mix: ConcatRecords, k: int):
    self.mix, self.k = mix, k

  def __len__(self) -> int:
    return len(self.mix.sources[self.k])

  def __getitem__(self, j: int) -> dict[str, Any]:
    return self.mix.item(self.k, int(j))


class MixtureRecords(ConcatRecords):
  """Training mixture: `map_dataset(seed)` interleaves the shuffled, repeated components in the
  proportions of `weights` (see the module doc); random access by index reads the concatenation
  (for shape specs and checks)."""

  def __init__(self, sources: list, weights: list[float], *, drop_labels: bool = False,
               name: str = "mixture"):
    super().__init__(sources, drop_labels=drop_labels, name=name)
    w = np.asarray(weights, np.float64)
    if w.shape != (len(sources),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
      raise UserError(f"{name}: weights {list(weights)} for {len(sources)} sources: expected one "
                      f"finite weight >= 0 per source, not all 0")
    self.weights = [float(x) for x in w / w.sum()]

  def map_dataset(self, seed: int) -> grain.MapDataset:
    parts = [grain.MapDataset.source(_Component(self, k)).seed(seed + 7919 * k).shuffle()
             .repeat(None) for k in range(len(self.sources)) if self.weights[k] > 0]
    weights = [w for w in self.weights if w > 0]
    return grain.MapDataset.mix(parts, weights)


def check_vocabularies(sources: list, names: list[str]) -> None:
  """Components whose clip labels are in different vocabularies cannot share `label_vocab=''`."""
  vocabs = {}
  for s, n in zip(sources, names):
    rec = s[0].get("record") if len(s) else None
    vocabs[n] = getattr(rec, "vocab", "") if rec is not None else ""
  if len(set(vocabs.values())) > 1:
    raise UserError(f"config.data.source (mixture): the components' clip labels are in different "
                    f"vocabularies {vocabs}; set config.data.label_vocab to a class order they all "
                    f"map into, or config.data.source.labels='drop' (self-supervised pretraining)")
