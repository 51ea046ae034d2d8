"""Label vocabularies: one canonical class order per dataset, and explicit maps between them.

A record stores the vocabulary name next to every class label; readers convert with `convert`,
which refuses an unknown pair instead of relabelling silently.
"""
from __future__ import annotations

import numpy as np

from jaxaffect.errors import UserError

VOCABS: dict[str, tuple[str, ...]] = {
    # DFEW label CSVs: 1 Happy .. 7 Fear; stored 0-based (label - 1), as Former-DFER reads them.
    "dfew7": ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear"),
    # AFEW per-emotion folders, in Former-DFER's order (the DFEW order).
    "afew7": ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear"),
    # EST sorts the DFEW class names alphabetically (reference_impls.md §2).
    "dfew7_alpha": ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"),
    # BU-3DFE and MMI: the six basic expressions, in EST's alphabetical order.
    "basic6_alpha": ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise"),
    # Aff-Wild2 EXPR files, ABAW3+ (8 columns incl. Other) and ABAW1/2 (7, no Other).
    "abaw8": ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other"),
    "abaw7": ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"),
    # AffectNet `expression` column (8 None, 9 Uncertain, 10 Non-Face are not emotions).
    "affectnet11": ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt",
                    "None", "Uncertain", "Non-Face"),
    # RAF-DB basic `EmoLabel/list_patition_label.txt`: 1 Surprise .. 7 Neutral; stored 0-based
    # (label - 1). Maps by name: all 7 into abaw7/abaw8/dfew7/affectnet11/fer7/ferplus8.
    "rafdb7": ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"),
    # FER2013 `fer2013.csv` column `emotion` (0 Angry .. 6 Neutral), stored as it is.
    "fer7": ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"),
    # FER+ `fer2013new.csv` vote columns in file order (unknown / NF are not classes: the
    # ferplus source drops or masks them); Contempt has no counterpart in the 7-class orders.
    "ferplus8": ("Neutral", "Happiness", "Surprise", "Sadness", "Anger", "Disgust", "Fear",
                 "Contempt"),
}

# Names that denote the same emotion across vocabularies.
_SYNONYMS = {"Happiness": "Happy", "Sadness": "Sad", "Anger": "Angry"}

AU12 = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")
AU8_ABAW1 = ("AU1", "AU2", "AU4", "AU6", "AU12", "AU15", "AU20", "AU25")


def _canon(name: str) -> str:
  return _SYNONYMS.get(name, name)


class UnknownVocab(UserError, KeyError):
  """A vocabulary name that `VOCABS` does not have (a user error; also a `KeyError`)."""
  __str__ = Exception.__str__


def names(vocab: str) -> tuple[str, ...]:
  if vocab not in VOCABS:
    raise UnknownVocab(f"unknown label vocabulary {vocab!r}; known: {sorted(VOCABS)}")
  return VOCABS[vocab]


def index(vocab: str, name: str) -> int:
  """Class index of `name` (synonyms accepted) in `vocab`; KeyError naming both if absent."""
  canon = [_canon(n) for n in names(vocab)]
  try:
    return canon.index(_canon(name))
  except ValueError:
    raise KeyError(f"class {name!r} is not in vocabulary {vocab!r} {names(vocab)}") from None


def mapping(src: str, dst: str) -> np.ndarray:
  """`m[i]` = index in `dst` of class i of `src`; -1 where `dst` has no such class.

  Raises if a class that is an emotion in both could be confused (never happens by construction).
  """
  dst_canon = [_canon(n) for n in names(dst)]
  out = np.full(len(names(src)), -1, np.int32)
  for i, n in enumerate(names(src)):
    if _canon(n) in dst_canon:
      out[i] = dst_canon.index(_canon(n))
  return out


def convert(labels, src: str, dst: str, *, allow_missing: bool = False) -> np.ndarray:
  """Relabel `labels` (ints in `src`, negatives kept as masks) into `dst`.

  A class of `src` that `dst` lacks raises unless `allow_missing` (then it becomes -1, masked).
  """
  labels = np.asarray(labels)
  if src == dst:
    return labels.copy()
  m = mapping(src, dst)
  valid = labels >= 0
  if np.any(labels[valid] >= len(m)):
    raise UserError(f"label {int(labels[valid].max())} outside vocabulary {src!r} of {len(m)} classes")
  out = np.where(valid, m[np.where(valid, labels, 0)], labels)
  lost = valid & (out < 0)
  if lost.any() and not allow_missing:
    miss = sorted({names(src)[int(i)] for i in labels[lost]})
    raise UserError(f"classes {miss} of {src!r} have no counterpart in {dst!r}")
  return out.astype(np.int32)
