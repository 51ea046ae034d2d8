"""`jaxaffect bench ops`: a tiny run prints one JSON line with a row per selected op and the
columns of the table (JAX and torch interleaved in one process). No timing assertions."""
import json

import torch

from jaxaffect import bench
from jaxaffect.bench import ops


def test_bench_ops_json(capsys):
  threads = torch.get_num_threads()
  assert bench.main(["ops", "--batch", "2", "--size", "32", "--repeats", "1", "--json",
                     "--only", "max-pool,layer2 down,layer4 conv 3x3/1,gelu tanh,tcn conv1d k5 d2"
                     ]) == 0
  out, err = capsys.readouterr()
  lines = [l for l in out.splitlines() if l.strip()]
  assert len(lines) == 1
  r = json.loads(lines[0])
  names = [row["op"] for row in r["rows"]]
  assert names == ["max-pool 3x3/2 64 @16", "layer2 down conv 1x1/2 64->128 @8",
                   "layer4 conv 3x3/1 512->512 @1", "gelu tanh 49x1024",
                   "tcn conv1d k5 d2 256->128 T300"]
  for row in r["rows"]:
    for key in ("jax fwd", "torch fwd", "jax grad", "torch fwd+bwd", "ratio"):
      assert row[key] > 0, (row["op"], key)
    assert ("jax fast" in row) == (row["op"].startswith(("max-pool", "layer")))
  assert "| op" in err and "ratio fast" in err                    # the table went to stderr
  assert torch.get_num_threads() == threads                       # restored


def test_every_op_builds_at_both_sizes():
  names = [op.name for s in (112, 224) for op in ops.resnet_ops(2, s)] + \
      [op.name for op in ops.other_ops(2)]
  assert len(names) == len(set(names))
  assert "stem conv 7x7/2 3->64 @224" in names and "layer4 conv 3x3/1 512->512 @7" in names
