"""Initialise a run from other weights, merged into its fresh initialisation (issue 11, item 5).

Two sources, one merge:
  * a JAX checkpoint: `config.init_from = {workdir, step, best, keep, drop}` (the step, the best
    by that run's metric, or the latest) — e.g. MAE-pretrained encoder weights for fine-tuning;
  * a PyTorch state dict in the official layout (`jaxaffect import --partial`).

`merge(fresh, loaded, keep=, drop=)` walks the fresh variables (`params` and the non-parameter
collections, '/'-joined paths): a path takes the loaded value when the loaded weights have it, its
shape matches, it matches a `keep` regex (all when `keep` is empty) and no `drop` regex; otherwise
it stays fresh, with the reason in the report. Loaded paths the model does not have are listed as
unused. The optimizer state is always fresh. The report is logged and written to
`<workdir>/init_from.json`.

Layer layouts are matched, not assumed: a run with scanned blocks (one stacked `blocks` /
`decoder_blocks` / `layers` subtree with a leading layer axis) initialises a looped model
(`blocks_0 …`, `decoder_blocks_0 …`, `layer_0 …`) and the reverse, exactly (slices or stacks; the
report lists the conversions under `relayout`). Without this an MAE run pretrained with
`scan=True` would leave every block of a looped fine-tune fresh while "something loaded".
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np
from flax import traverse_util

from jaxaffect.errors import UserError

log = logging.getLogger("jaxaffect.train")


def _compile(patterns: Sequence[str], field: str) -> list[re.Pattern]:
  out = []
  for p in patterns or ():
    try:
      out.append(re.compile(p))
    except re.error as e:
      raise UserError(f"{field}: regex {p!r}: {e}") from None
  return out


# (looped prefix, scanned name) of the stacked-layer layouts (nn/vit.py, models/mae.py, nn/attention.py)
LAYOUTS = (("blocks_", "blocks"), ("decoder_blocks_", "decoder_blocks"), ("layer_", "layers"))


def _relayout(fresh: Mapping[str, Any], src: dict[str, Any]
              ) -> tuple[dict[str, Any], list[str], set[str]]:
  """`src` (flat) with the fresh paths it lacks made from the other layer layout, when it has it:
  fresh `…/blocks/…` from loaded `…/blocks_0/…, …/blocks_1/…` (stacked), fresh `…/blocks_i/…`
  from loaded `…/blocks/…` (row i). Returns (extended src, conversions); the consumed source
  paths are not reported as unused."""
  src = dict(src)
  notes, consumed = [], set()
  for path in fresh:
    if path in src:
      continue
    segs = path.split("/")
    for j, seg in enumerate(segs):
      for prefix, stacked in LAYOUTS:
        if seg == stacked:                       # fresh stacked <- loaded looped
          parts, names = [], []
          while True:
            q = "/".join(segs[:j] + [f"{prefix}{len(parts)}"] + segs[j + 1:])
            if q not in src:
              break
            parts.append(np.asarray(src[q]))
            names.append(q)
          if parts and all(p.shape == parts[0].shape for p in parts):
            src[path] = np.stack(parts)
            consumed.update(names)
            notes.append(f"{path} <- stack of {len(parts)} {prefix}i")
        elif seg.startswith(prefix) and seg[len(prefix):].isdigit():   # fresh looped <- stacked
          i = int(seg[len(prefix):])
          q = "/".join(segs[:j] + [stacked] + segs[j + 1:])
          if q in src and np.ndim(src[q]) >= 1 and np.shape(src[q])[0] > i:
            src[path] = np.asarray(src[q])[i]
            consumed.add(q)
            notes.append(f"{path} <- {q}[{i}]")
        if path in src:
          break
      if path in src:
        break
  return src, notes, consumed


def merge(fresh: Mapping[str, Any], loaded: Mapping[str, Any], *, keep: Sequence[str] = (),
          drop: Sequence[str] = (), field: str = "config.init_from"
          ) -> tuple[dict[str, Any], dict[str, Any]]:
  """(merged variables shaped like `fresh`, report {loaded, dropped, not_kept, shape_mismatch,
  absent, unused, relayout})."""
  keep_re, drop_re = _compile(keep, f"{field}.keep"), _compile(drop, f"{field}.drop")
  f = traverse_util.flatten_dict(dict(fresh), sep="/")
  src0 = traverse_util.flatten_dict(dict(loaded), sep="/")
  src, relayout, consumed = _relayout(f, src0)
  out, rep = {}, {k: [] for k in ("loaded", "dropped", "not_kept", "shape_mismatch", "absent",
                                  "unused", "relayout")}
  rep["relayout"] = relayout
  for path, value in f.items():
    if path not in src:
      rep["absent"].append(path)
    elif any(r.search(path) for r in drop_re):
      rep["dropped"].append(path)
    elif keep_re and not any(r.search(path) for r in keep_re):
      rep["not_kept"].append(path)
    elif tuple(np.shape(src[path])) != tuple(np.shape(value)):
      rep["shape_mismatch"].append(f"{path}: {tuple(np.shape(src[path]))} -> "
                                   f"{tuple(np.shape(value))}")
    else:
      out[path] = np.asarray(src[path]).astype(np.asarray(value).dtype)
      rep["loaded"].append(path)
      continue
    out[path] = value
  rep["unused"] = sorted(set(src0) - set(f) - consumed)
  for r in keep_re + drop_re:                    # a rule that matches nothing is a mistake
    if not any(r.search(p) for p in f):
      raise UserError(f"{field}: regex {r.pattern!r} matches no variable of the model (e.g. "
                      f"{sorted(f)[:3]})")
  if not rep["loaded"]:
    raise UserError(f"{field}: nothing loaded ({len(rep['absent'])} absent, "
                    f"{len(rep['shape_mismatch'])} shape mismatches, {len(rep['dropped'])} "
                    f"dropped): the weights do not fit this model")
  return traverse_util.unflatten_dict(out, sep="/"), rep


def summary(rep: Mapping[str, list]) -> str:
  return ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in rep.items() if v)


def load_checkpoint_variables(spec) -> tuple[dict[str, Any], dict[str, Any]]:
  """({'params', ...collections} on the host, description) of `config.init_from`'s checkpoint."""
  from jaxaffect.train import loop
  workdir = spec.get("workdir", "")
  if not os.path.isdir(workdir):
    raise UserError(f"config.init_from.workdir={workdir!r}: no such directory")
  step = spec.get("step", -1)
  step = loop.resolve_step(workdir, None if step is None or step < 0 else int(step),
                           bool(spec.get("best", False)))
  config, _, variables, step = loop.restore_state(workdir, step)
  return variables, {"workdir": os.path.abspath(workdir), "step": int(step),
                     "model_name": config.model_name}


def write_report(workdir: str, source: dict, rep: dict) -> None:
  log.info("init_from %s: %s", source, summary(rep))
  with open(os.path.join(workdir, "init_from.json"), "w") as f:
    json.dump({"source": source, **rep}, f, indent=1)
