"""`jaxaffect bench MODEL --plan` at toy size: the figures are consistent (sharded kernels' bytes
fall ~1/fsdp, collectives appear only with fsdp > 1, FLOPs from the depth extrapolation equal the
looped step's own count), the HLO collective parser counts loop trip counts, and the table prints."""
from __future__ import annotations

import json

import numpy as np

from jaxaffect import bench
from jaxaffect.bench import plan

TOY = "vit_frames:b16,shards=/nowhere"
OV = ["--config.data.image_size=16", "--config.model.patch_size=4", "--config.model.embed_dim=64",
      "--config.model.depth=3", "--config.model.num_heads=2", "--config.model.dtype=float32"]


def test_collective_parser_multiplies_while_trip_counts():
  hlo = """HloModule m

%body (p: (s32[], f32[8,4])) -> (s32[], f32[8,4]) {
  %ag = f32[8,16]{1,0} all-gather(f32[8,4]{1,0} %x), channel_id=1, replica_groups=[1,4]<=[4], dimensions={1}
  %rs = f32[8,4]{1,0} reduce-scatter(f32[8,16]{1,0} %y), channel_id=2, replica_groups={{0,1,2,3}}, dimensions={1}
}

ENTRY %main (a: f32[8,4]) -> f32[8,4] {
  %w = (s32[], f32[8,4]) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
  %ar = f32[10]{0} all-reduce(f32[10]{0} %z), channel_id=3, replica_groups=[1,4]<=[4], to_apply=%add
}
"""
  c = plan.collectives(hlo, 4)
  assert c["ops"]["all-gather"] == {"count": 5, "bytes": 5 * 512, "ring_bytes": 5 * 512 * 0.75}
  assert c["ops"]["reduce-scatter"]["bytes"] == 5 * 512
  assert c["ops"]["all-reduce"] == {"count": 1, "bytes": 40, "ring_bytes": 2 * 40 * 0.75}


def test_collective_parser_reads_optimized_hlo_and_all_reduce_slice_as_reduce_scatter():
  """The optimized HLO's form: operands without shapes (bytes from the results), `mesh[...]`
  replica groups (sub-axes too), and XLA:CPU's reduce-scatter lowering (an all-reduce whose
  result, or one element of a combined tuple, is dynamic-sliced, here inside a fusion) counted as a
  reduce-scatter of the full operand while the other elements stay all-reduces."""
  hlo = """HloModule m

%fused_slice (p0: f32[32,32], p1: s32[]) -> f32[8,32] {
  %ds = f32[8,32]{1,0} dynamic-slice(f32[32,32]{1,0} %p0, s32[] %p1, s32[] %c), dynamic_slice_sizes={8,32}
}

ENTRY %main (a: f32[8,32]) -> f32[8,32] {
  %ar = (f32[32,32]{1,0}, f32[32]{0}) all-reduce(%x, %y), channel_id=1, replica_groups=mesh['data'=2,'fsdp'=4] {'fsdp'}, use_global_device_ids=true, to_apply=%add
  %g0 = f32[32,32]{1,0} get-tuple-element(%ar), index=0
  %g1 = f32[32]{0} get-tuple-element(%ar), index=1
  %f = f32[8,32]{1,0} fusion(%g0, %pid), kind=kLoop, calls=%fused_slice
  %ag = f32[16,32]{1,0} all-gather(%f), channel_id=2, replica_groups=mesh['data'=2,'fsdp'=4] {'fsdp':(1)2}, dimensions={0}
  %a2a = (f32[2,4]{1,0}, f32[2,4]{1,0}) all-to-all(%u, %v), channel_id=3, replica_groups=mesh['data'=2,'fsdp'=4] {'data','fsdp'}
}
"""
  c = plan.collectives(hlo, 8)["ops"]
  assert c["reduce-scatter (all-reduce+slice)"] == {"count": 1, "bytes": 4096,
                                                    "ring_bytes": 4096 * 3 / 4}
  assert c["all-reduce"] == {"count": 1, "bytes": 128, "ring_bytes": 2 * 128 * 3 / 4}
  assert c["all-gather"] == {"count": 1, "bytes": 2048, "ring_bytes": 2048 / 2}    # group of 2
  assert c["all-to-all"] == {"count": 1, "bytes": 64, "ring_bytes": 64 * 7 / 8}


def test_plan_cells_are_consistent(capsys):
  r = plan.run([TOY], OV, [1, 4], per_device_batch=2, log=lambda m: None)
  one, four = r["cells"]
  assert (one["fsdp"], four["fsdp"], one["batch"], four["batch"]) == (1, 4, 2, 8)
  assert one["param_bytes"] == one["param_bytes_replicated"] == four["param_bytes_replicated"]
  # kernels shard 4 ways, small vectors stay: between 1/4 and 1/3 of replicated
  for k in ("param", "opt"):
    ratio = four[f"{k}_bytes"] / four[f"{k}_bytes_replicated"]
    assert 0.25 < ratio < 0.33, (k, ratio)
  assert one["collectives"]["bytes"] == 0 and not one["collectives"]["ops"]
  ops = four["collectives"]["ops"]
  assert ops.get("all-gather", {}).get("bytes", 0) > 0, ops
  # FSDP gathers at least every sharded parameter once per step (forward)
  sharded = one["param_bytes"] - (four["param_bytes"] - one["param_bytes"] / 4) * 4 / 3
  assert ops["all-gather"]["bytes"] >= 0.9 * sharded
  # ... weights, not activations (train/step.py fsdp_gather): their gradients are reduce-scattered
  # once (XLA:CPU: all-reduce + slice) and nothing moves (global batch, tokens, width) tensors
  assert np.isclose(ops["reduce-scatter (all-reduce+slice)"]["bytes"], sharded), ops
  assert "all-to-all" not in ops and "collective-permute" not in ops, ops
  # depth-extrapolated FLOPs: per device, equal across fsdp (fixed per-device batch), and the
  # scanned step's own count is below (XLA counts the while body once)
  assert four["hw_flops_per_device"] == one["hw_flops_per_device"] > one["xla_flops_per_device"]
  assert one["model_flops_per_device"] < one["hw_flops_per_device"]     # full remat recomputes
  p = four["projection"]["TPU v5e"]
  assert np.isclose(p["step_s"], max(p["compute_s"], p["comm_s"]))
  assert 0 < p["mfu"] <= 1 and one["projection"]["H100"]["comm_s"] == 0
  text = plan.format_table(r)
  assert "TPU v5e" in text and "formula" in text and TOY in text


def test_bench_main_plan_json(capsys):
  assert bench.main(["vit_frames", "--plan", "--plan-configs", TOY, "--plan-fsdp", "2",
                     "--plan-batch", "1", "--json", *OV]) == 0
  out = capsys.readouterr()
  r = json.loads(out.out.strip().splitlines()[-1])
  assert [c["fsdp"] for c in r["cells"]] == [2] and "formula" in r
  assert "params+opt MiB/dev" in out.err
