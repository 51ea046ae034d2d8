"""`jaxaffect bench former_dfer`: the official Former-DFER (zengqunzhao/Former-DFER) as the reference
and the paper's Table 3."""
from __future__ import annotations

from typing import Any

import numpy as np

from jaxaffect.bench.core import BenchModel, Reference, _import_official
from jaxaffect.errors import UserError


# ----------------------------------------------------------------------------------- Former-DFER


def _former_dfer_reference(path: str, config) -> Reference:
  """The official `models.ST_Former.GenerateModel` (zengqunzhao/Former-DFER) from a checkout."""
  import torch
  d, m = config.data, config.model
  t = d.sampler.num_segments * d.sampler.duration
  if (t, d.image_size) != (16, 112):
    raise UserError(f"bench --reference: the official Former-DFER only runs 16×112² clips "
                    f"(`view(-1,3,112,112)`, `view(-1,16,512)`); the config gives {t}×"
                    f"{d.image_size}² (use --config former_dfer:dfew)")
  if (m.num_spatial_layers, m.num_temporal_layers, m.width, m.num_classes) != (1, 3, 64, 7):
    raise UserError(f"bench --reference: the official GenerateModel is N=1, M=3, width 64, 7 "
                    f"classes; the config has N={m.num_spatial_layers}, "
                    f"M={m.num_temporal_layers}, width {m.width}, {m.num_classes} classes")
  GenerateModel = _import_official(path, "models/ST_Former.py", "zengqunzhao/Former-DFER",
                                   "models.ST_Former", "GenerateModel")

  def to_inputs(batch):
    # (B,T,H,W,3) uint8 → (B,T,3,H,W) float in [0,1] (official loader: /255, no normalisation).
    v = torch.from_numpy(np.ascontiguousarray(batch["video"]))
    return (v.permute(0, 1, 4, 2, 3).float().div_(255.0).contiguous(),)

  return Reference("official Former-DFER (PyTorch)", GenerateModel(), to_inputs)


def _former_dfer_table(xla: bool) -> tuple[str, Any]:
  from jaxaffect import flops
  rows = flops.former_dfer_table3(xla=xla)
  return flops.format_table3(rows), {"table3": rows, "paper_source": flops.PAPER_TABLE3_SOURCE}


FORMER_DFER = BenchModel("former_dfer", "former_dfer:dfew", _former_dfer_reference,
                         _former_dfer_table)
