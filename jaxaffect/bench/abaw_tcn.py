"""`jaxaffect bench abaw_tcn`: the ABAW6/ABAW5 team's `Model` as the reference, feature-window
sources and the forward cost of a model fed several streams."""
from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from jaxaffect.bench.core import BenchModel, Reference, _import_official
from jaxaffect.errors import UserError


# -------------------------------------------------------------------------------------- ABAW TCN


def _abaw_sources(config, n: int):
  """n random windows (one `window`-frame video each) with the configured feature streams
  (`config.data.source.features[*].dim`) and every label valid: VA U(−1, 1), EXPR uniform classes, AU
  Bernoulli(½). Train source = eval source."""
  from jaxaffect.data import features
  d, m = config.data, config.model
  w = int(d.sampler.window)
  rng = np.random.default_rng(config.seed)
  dims = {}
  for s in d.source.features:
    s = dict(s)
    if int(s.get("dim", 0) or 0) <= 0:
      raise UserError(f"bench abaw_tcn: config.data.source.features entry {s.get('name')!r} needs `dim`")
    dims[s["name"]] = int(s["dim"])
  num_au = int(d.source.get("num_au", 12))
  videos = []
  for i in range(n):
    labels = {"va": rng.uniform(-1, 1, (w, 2)).astype(np.float32),
              "va_mask": np.ones(w, np.float32),
              "expr": rng.integers(0, m.num_expr_classes, w).astype(np.int32),
              "expr_mask": np.ones(w, np.float32),
              "au": rng.integers(0, 2, (w, num_au)).astype(np.float32),
              "au_mask": np.ones((w, num_au), np.float32)}
    streams = {k: rng.standard_normal((w, dd), dtype=np.float32) for k, dd in dims.items()}
    videos.append(features.VideoFeatures(f"bench-{i}", streams, np.ones(w, bool), np.arange(w),
                                         np.arange(w, dtype=np.float32) / 30.0, labels))
  src = features.FeatureWindows(videos, w, w, "bench-random")
  return src, src


def _abaw_cost(module, batch_shapes) -> dict[str, Any]:
  """Analytic forward MACs of one window (`abaw_tcn.forward_macs_per_frame` × T) and params."""
  from jaxaffect.models import abaw_tcn
  dims, t = {}, None
  for name, _ in module.streams:
    shape = batch_shapes[f"feat/{name}"].shape
    dims[name], t = int(shape[-1]), int(shape[1])
  macs = abaw_tcn.forward_macs_per_frame(module, t, dims)["total"] * t
  return {"input_shape": [t, "+".join(str(v) for v in dims.values())],
          "macs_per_example": macs, "params": abaw_tcn.param_count(module, dims)}


def _abaw_reference(path: str, config) -> Reference:
  """The ABAW team's `model.model.Model` from a checkout: upczww/abaw6 (`<path>/{EXPR,VA,AU}`,
  one 768-d stream, joint head) or, for the six-stream split-VA config, upczww/abaw5
  (`<path>/VA`). `munch` (imported, unused) is stubbed when missing. Trained with the paper's
  loss for the output (VA: (1−CCC_v)+(1−CCC_a), ddof 1; EXPR: CE ignoring −1; AU: BCE over
  fully-labelled rows) written here in torch, the official solvers' formulas."""
  import types
  import torch
  from jaxaffect.interop import abaw_tcn as abaw_map
  from jaxaffect.models import abaw_tcn, registry
  module = registry.build_module(config)
  if len(module.outputs) != 1:
    raise UserError(f"bench --reference: the official models have one output; the config has "
                    f"{module.outputs}")
  out = module.outputs[0]
  abaw5 = module.va_heads == "split"
  if abaw5:
    official = module.streams == abaw_tcn.ABAW5_VA_STREAMS and out == "va"
    repo, task = "upczww/abaw5", "VA"
  else:
    official = abaw_map.is_official_config(module)
    repo, task = "upczww/abaw6", {"va": "VA", "expr": "EXPR", "au": "AU"}[out]
  if not official:
    raise UserError("bench --reference: the config is not the official ABAW6 model (one 768-d "
                    "stream, TCN [768,256,128] k5 PReLU, d 512, 8x4 heads, FF 512) nor the "
                    "ABAW5 six-stream VA model (use --config abaw_tcn:expr / :va / :au / "
                    ":abaw5_va)")
  if "munch" not in sys.modules:
    try:
      import munch  # noqa: F401
    except ImportError:
      stub = types.ModuleType("munch")
      stub.DefaultMunch = object
      sys.modules["munch"] = stub
  Model = _import_official(os.path.join(path, task), "model/model.py", repo, "model.model",
                           "Model")
  ns = types.SimpleNamespace
  cfg = ns(Model=ns(kernel_size=module.kernel_size, num_head=module.num_heads,
                    num_layer=module.num_layers, out_dim=module.d_model, bin_num=1),
           Solver=ns(dropout=module.dropout))
  torch_model = Model(cfg)
  if abaw5:
    class FreshDict(torch.nn.Module):
      """ABAW5's `forward` overwrites the entries of its input dict: give it a copy each call."""

      def __init__(self, inner):
        super().__init__()
        self.inner = inner

      def forward(self, feats):
        return self.inner(dict(feats))
    torch_model = FreshDict(torch_model)
  names = [n for n, _ in module.streams]
  state: dict[str, Any] = {}

  def to_inputs(batch):
    for k in ("va", "va_mask", "expr", "expr_mask", "au", "au_mask"):
      state[k] = torch.from_numpy(np.asarray(batch[k]))
    feats = {n: torch.from_numpy(np.ascontiguousarray(batch[f"feat/{n}"])) for n in names}
    return (feats,) if abaw5 else (feats[names[0]],)

  def loss_fn(outputs, labels):
    if abaw5:
      outputs = torch.cat(outputs, dim=1)
    if out == "va":
      keep = state["va_mask"].reshape(-1) > 0
      y, p = state["va"].reshape(-1, 2)[keep], outputs[keep]
      loss = 0.0
      for i in range(2):
        x, z = p[:, i], y[:, i]
        vx, vz = x - x.mean(), z - z.mean()
        rho = (vx * vz).sum() / (vx.pow(2).sum().sqrt() * vz.pow(2).sum().sqrt() + 1e-8)
        sx, sz = x.std(), z.std()
        loss = loss + 1 - 2 * rho * sx * sz / (sx ** 2 + sz ** 2 + (x.mean() - z.mean()) ** 2)
      return loss
    if out == "expr":
      lab = torch.where(state["expr_mask"] > 0, state["expr"].long(), -1).reshape(-1)
      return torch.nn.functional.cross_entropy(outputs, lab, ignore_index=-1)
    keep = (state["au_mask"] > 0).all(dim=-1).reshape(-1)
    return torch.nn.functional.binary_cross_entropy_with_logits(
        outputs[keep], state["au"].reshape(-1, outputs.shape[1])[keep].float())

  return Reference(f"official {repo} {task} Model (PyTorch)", torch_model, to_inputs, loss_fn)


ABAW_TCN = BenchModel("abaw_tcn", "abaw_tcn:expr", _abaw_reference, None, _abaw_sources,
                      input_key="feat", cost=_abaw_cost, unit="windows", inference=True)
