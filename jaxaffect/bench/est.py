"""`jaxaffect bench est`: the official EST (DreamMr/EST) as the reference and the paper's Table 6."""
from __future__ import annotations

from typing import Any

import numpy as np

from jaxaffect.bench.core import BenchModel, Reference, _import_official
from jaxaffect.errors import UserError


# ------------------------------------------------------------------------------------------- EST


def _est_reference(path: str, config) -> Reference:
  """The official `models.Model.resnet18_EST` (DreamMr/EST) from a checkout, as `main.py` builds it
  (3 + 3 layers). Its `PosEncoding.forward` calls `.cuda()`: `torch.Tensor.cuda` is replaced by
  the identity while it runs (CPU only). Both losses as the official `train()` does it: CE(class)
  + 0.1428 CE(order) on the shuffled input, the positional encoding following the snippets."""
  import torch
  from jaxaffect.models import est
  m = config.model
  official = (m.width, m.d_model, m.num_heads, m.num_encoder_layers, m.num_decoder_layers,
              m.dim_feedforward, m.num_snippets, m.frames_per_snippet, m.num_classes,
              m.use_aasfe, m.use_ssop)
  if official != (64, 512, 4, 3, 3, 2048, 7, 5, 7, True, True):
    raise UserError(f"bench --reference: the official resnet18_EST is width 64, d 512, 4 heads, "
                    f"3+3 layers, FF 2048, 7x5 frames, 7 classes, AA-SFE + SSOP; the config "
                    f"gives {official} (use --config est:dfew)")
  resnet18_EST = _import_official(path, "models/Model.py", "DreamMr/EST", "models.Model",
                                  "resnet18_EST")
  torch.Tensor.cuda = lambda self, *a, **k: self          # CPU: the official PE calls .cuda()
  module = resnet18_EST(clips=7, img_num_per_clip=5, d_model=512, nhead=4, encoder_nums=3,
                        decoder_nums=3, use_norm=True, per_classes=10, draw_weight=False)
  rng = np.random.default_rng(config.seed)
  state: dict[str, Any] = {}

  def to_inputs(batch):
    b = len(batch["label"])
    p = rng.integers(0, 10, b)
    perm = est.PERMUTATIONS_10[p]
    v = np.asarray(batch["video"]).reshape(b, 7, 5, *np.shape(batch["video"])[2:])
    v = np.take_along_axis(v, perm[:, :, None, None, None, None], axis=1)   # position i: snippet perm[i]
    state["p"] = torch.from_numpy(p.astype(np.int64))
    x = torch.from_numpy(np.ascontiguousarray(v)).permute(0, 1, 2, 5, 3, 4).float().div_(255.0)
    return x.contiguous(), torch.from_numpy(perm.astype(np.int64))

  ce = torch.nn.CrossEntropyLoss()

  def loss_fn(out, labels):
    logits, perm_logits = out
    return ce(logits, labels) + 0.1428 * ce(perm_logits, state["p"])

  return Reference("official EST (PyTorch)", module, to_inputs, loss_fn)


def _est_table(xla: bool) -> tuple[str, Any]:
  from jaxaffect import flops
  rows = flops.est_table6_rows()
  return flops.format_table6(rows), {"table6": rows}


EST = BenchModel("est", "est:dfew", _est_reference, _est_table)
