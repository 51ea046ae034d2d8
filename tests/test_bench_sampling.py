"""`jaxaffect bench sampling` at a tiny size: one JSON line with a row per (stage, implementation),
every timing positive, torch's ratio exactly 1, the table on stderr, torch's thread count restored.
No timing assertions (speed is read from the bench's table, not asserted)."""
import json

import pytest
import torch

from jaxaffect import bench
from jaxaffect.bench import sampling


def test_bench_sampling_json(capsys):
  threads = torch.get_num_threads()
  assert bench.main(["sampling", "--batch", "1", "--repeats", "1", "--json"]) == 0
  out, err = capsys.readouterr()
  lines = [l for l in out.splitlines() if l.strip()]
  assert len(lines) == 1
  r = json.loads(lines[0])
  assert r["stages"] == [3, 4] and r["batch"] == 1
  got = [(row["stage"], row["shape"], row["impl"]) for row in r["rows"]]
  impls = ["gather (custom_vjp)", "gather (autodiff)", "matmul", "torch"]
  assert got == ([(3, "(3,14,14,128) @196", i) for i in impls]
                 + [(4, "(6,7,7,128) @49", i) for i in impls])
  for row in r["rows"]:
    for key in ("fwd", "fwd+bwd", "ratio fwd", "ratio fwd+bwd"):
      assert row[key] > 0, (row["impl"], key)
    if row["impl"] == "torch":
      assert row["ratio fwd"] == row["ratio fwd+bwd"] == 1.0 and row["mem MiB"] is None
    else:
      assert row["mem MiB"] > 0
  assert "| stage (B·g,H,W,C/g) @points" in err and "matmul" in err        # table on stderr
  assert torch.get_num_threads() == threads                                 # restored


def test_bench_sampling_inputs_are_the_dat_layout():
  x, grid, cot = sampling._inputs(2, 3)
  assert x.shape == cot.shape == (6, 14, 14, 128) and grid.shape == (6, 14, 14, 2)
  x, grid, cot = sampling._inputs(2, 4)
  assert x.shape == (12, 7, 7, 128) and grid.shape == (12, 7, 7, 2)
  assert abs(grid).max() > 1.0                     # some points partly outside, as deformed ones


@pytest.mark.parametrize("argv", [["--stages", "2"], ["--stages", "x"], ["--batch", "0"]])
def test_bench_sampling_bad_flags(argv, capsys):
  with pytest.raises(SystemExit):
    sampling.main(argv)
  assert "--" in capsys.readouterr().err
