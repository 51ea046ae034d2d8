"""`jaxaffect bench swin` at toy size: one JSON line with both rows (forward, train step), both
frameworks' images/s, the ratio, compile times, the parts table, and the two models agreeing on
the logits (same weights). No timing assertions."""
import json

import torch

from jaxaffect import bench


def test_bench_swin_toy_json(capsys):
  threads = torch.get_num_threads()
  assert bench.main(["swin", "--batch", "2", "--size", "32", "--embed-dim", "8", "--depths", "1,1",
                     "--heads", "1,2", "--window", "4", "--classes", "5", "--steps", "1",
                     "--warmup", "0", "--parts", "--reference", "--json", "--profile"]) == 0
  out, err = capsys.readouterr()
  lines = [l for l in out.splitlines() if l.strip()]
  assert len(lines) == 1
  r = json.loads(lines[0])
  assert set(r["rows"]) == {"forward", "train step"}
  for row in r["rows"].values():
    for k in ("jax_s", "torch_s", "jax_img_s", "torch_img_s", "jax_over_torch", "compile_s"):
      assert row[k] > 0, k
    assert abs(row["jax_over_torch"] - row["torch_s"] / row["jax_s"]) < 1e-9
  assert r["forward_max_abs_diff"] <= 1e-5 * max(1.0, r["logit_scale"])   # same weights
  assert [p["part"] for p in r["parts"]] == ["layernorm", "roll+partition+reverse",
                                             "relative-bias gather", "attention core (+mask)",
                                             "mlp fc1-gelu-fc2 4-D", "mlp fc1-gelu-fc2 2-D"]
  assert "jax/torch" in err and "block part" in err                 # the table went to stderr
  # --profile: XLA's thunks of the train step attributed to the HLO, torch's aten ops beside
  pj, pt = r["profile"]["jax"], r["profile"]["torch"]
  assert pj["ops_s"] > 0 and pj["unmatched_s"] <= 0.05 * pj["ops_s"]
  assert {g["pass"] for g in pj["groups"]} >= {"fwd", "bwd"} and pt["top"]
  assert "by kind and pass" in err and "PyTorch step" in err
  assert torch.get_num_threads() == threads                         # restored


def test_bench_swin_bad_flags(capsys):
  assert bench.main(["swin", "--depths", "2,2", "--heads", "1"]) == 2
  assert "--depths and --heads" in capsys.readouterr().err
