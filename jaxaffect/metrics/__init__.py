"""Evaluation metrics of video facial-affect recognition, mergeable, jittable.

One module per protocol, every public name re-exported here (`from jaxaffect import metrics as jm;
jm.CCC`):

* `classification`: clip / frame expression classification (DFEW, AFEW: 7 classes; ABAW EXPR:
  8 classes per frame) from a confusion matrix: UAR, WAR, macro-F1 (the ABAW EXPR score);
  `ConfusionMatrix`, `UAR`, `WAR`, `MacroF1` and numpy functions for offline evaluation.
* `multilabel`: ABAW AU detection (12 AUs): per-AU TP/FP/FN/TN counts and the mean per-AU F1 (the
  ABAW AU score); `MultiLabelCounts`, `AUF1`, `au_f1`.
* `regression`: valence / arousal, Lin's concordance correlation coefficient from mergeable centred
  statistics, concatenated (ABAW, `CCC`) or per-sequence mean (RECOLA/SEWA, `PerSequenceCCC`,
  `ccc_per_sequence`); P_VA.
* `base`: shared helpers and `allgather_merge`.

Empty-input conventions (no valid sample after masking): UAR, WAR and CCC are
nan (undefined, 0/0); macro-F1 and AU-F1 are 0 (every per-class F1 falls under
zero_division=0).

Distributed use: in the global-view `jax.jit` eval step every metric built
with `from_model_output` on global `jax.Array`s already covers the whole
global batch (all devices and hosts); merging those across steps on the host
needs no communication. `allgather_merge` exists only for metrics
accumulated from *process-local* data (e.g. a host-side loop over local
predictions); it refuses global arrays, which would be counted once per
process.

Counts are int32 (jax without x64): exact up to 2**31 - 1 samples per cell.
"""

from jaxaffect.metrics.base import allgather_merge
from jaxaffect.metrics.classification import (
    MacroF1, UAR, WAR, ConfusionMatrix, abaw_expr_score, confusion_matrix, macro_f1,
    macro_f1_from_confusion, per_class_f1_from_confusion, per_class_recall_from_confusion, uar,
    uar_from_confusion, war, war_from_confusion)
from jaxaffect.metrics.multilabel import AUF1, MultiLabelCounts, abaw_au_score, au_f1
from jaxaffect.metrics.regression import (
    CCC, MeanCCC, PerSequenceCCC, ccc, ccc_per_sequence, p_va)

__all__ = [
    "AUF1", "CCC", "ConfusionMatrix", "MacroF1", "MeanCCC", "MultiLabelCounts", "PerSequenceCCC",
    "UAR", "WAR", "abaw_au_score", "abaw_expr_score", "allgather_merge", "au_f1", "ccc",
    "ccc_per_sequence", "confusion_matrix", "macro_f1", "macro_f1_from_confusion", "p_va",
    "per_class_f1_from_confusion", "per_class_recall_from_confusion", "uar", "uar_from_confusion",
    "war", "war_from_confusion",
]
