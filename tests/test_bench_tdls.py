"""`jaxaffect bench tdls` through the CLI at toy size (32², one stage of a window and a deformable
block, width 8, batch 2, one round): one JSON line with a row per variant, every timing, ratio,
FLOP and memory figure finite and positive, the parameter counts equal to `jax.eval_shape` of the
same models built here by hand, the parts decomposition adding up, the table on stderr.
No timing assertions. Compiles 10 toy train steps / forwards and 5 parts: ~45 s of compile on a
cold cache, a few seconds warm (the tests' persistent compilation cache)."""
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxaffect import cli
from jaxaffect.bench import tdls

TOY = ["--batch", "2", "--size", "32", "--embed-dim", "8", "--depths", "2", "--heads", "1",
       "--stages", "1", "--window", "4", "--classes", "3", "--steps", "1", "--warmup", "0",
       "--fl-points", "9"]
ROWS = ["swin", "tdls (matmul)", "tdls (gather)", "rp (matmul)", "fl (matmul)"]


def _eval_shape_params() -> dict[str, int]:
  """Parameters of each variant from `jax.eval_shape` of models built here, not by the bench."""
  from jaxaffect.nn import deformable, swin
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  base = swin.swin("swin_t", img_size=32, embed_dim=8, depths=(2,), num_heads=(1,), window_size=4,
                   num_classes=3)

  def count(mode=None, **call):
    model = base
    if mode:
      factory = functools.partial(deformable.DeformableBlock, mode=mode)
      model = base.clone(block_kinds=(("window", "deformable"),),
                         block_types=(("deformable", factory),))
    v = jax.eval_shape(functools.partial(model.init, **call), jax.random.key(0), x)
    return int(sum(math.prod(a.shape) for a in jax.tree.leaves(v["params"])))
  tdls_n = count("tdls")
  rp_n = count("rp")
  return {"swin": count(), "tdls (matmul)": tdls_n, "tdls (gather)": tdls_n, "rp (matmul)": rp_n,
          "fl (matmul)": count("fl", context=jnp.zeros((1, 9, 2)))}


def _finite_pos(v) -> bool:
  return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_bench_tdls_toy_cli(capsys):
  assert cli.main(["bench", "tdls", *TOY, "--json"]) == 0
  out, err = capsys.readouterr()
  lines = [l for l in out.splitlines() if l.strip()]
  assert len(lines) == 1
  r = json.loads(lines[0])
  assert list(r["rows"]) == ROWS
  assert r["block_kinds"] == [["window", "deformable"]] and r["steps"] == 1
  expect = _eval_shape_params()
  assert expect["tdls (matmul)"] > expect["swin"] and expect["rp (matmul)"] == expect["fl (matmul)"]
  for name, row in r["rows"].items():
    assert row["params"] == expect[name], (name, row["params"], expect[name])
    for k in ("forward_s", "train_s", "train_img_s", "forward_img_s", "train_over_swin",
              "forward_over_swin"):
      assert _finite_pos(row[k]), (name, k, row[k])
    assert abs(row["train_img_s"] - 2 / row["train_s"]) < 1e-9 * row["train_img_s"]
    assert len(row["train_ratio_per_round"]) == len(row["train_s_all"]) == 1
    assert all(_finite_pos(v) for v in row["compile_s"].values()) and len(row["compile_s"]) == 2
    assert _finite_pos(row["gflop_per_image"]["forward"])
    assert row["gflop_per_image"]["train step"] > row["gflop_per_image"]["forward"]
    assert row["memory_bytes"] is None or _finite_pos(row["memory_bytes"])
    assert row["logits_finite"]
  assert r["rows"]["swin"]["train_over_swin"] == r["rows"]["swin"]["forward_over_swin"] == 1.0
  # tdls = rp + the offset network and a second sampling: strictly more arithmetic
  gf = {n: row["gflop_per_image"]["train step"] for n, row in r["rows"].items()}
  assert gf["tdls (matmul)"] > gf["rp (matmul)"]
  # parts: one deformable stage; attention & rest is the block minus the measured pieces
  parts = r["parts"]
  (st,) = parts["stages"]
  assert st["stage"] == 1 and st["blocks"] == 1 and st["shape"] == "(2,8,8,8) @64"
  for k in tdls.PARTS:
    assert _finite_pos(st[k]), (k, st[k])
  rest = st["tdls block"] - st["window block"] - st["sampling (matmul)"] - st["offset network"]
  assert abs(st["attention & rest"] - rest) < 1e-9
  assert abs(parts["total_ms"]["overhead"] - (st["tdls block"] - st["window block"])) < 1e-9
  assert abs(sum(parts["shares"].values()) - 1.0) < 1e-9
  # the readable table went to stderr: header, one line per variant, the overhead lines
  assert "jaxaffect bench tdls" in err and "goal <= +25%" in err
  table = err[err.index("jaxaffect bench tdls"):].splitlines()
  assert [l.split("  ")[0] for l in table[2:7]] == ROWS
  assert "deformable blocks' overhead by parts" in err and "stage 1 (2,8,8,8) @64 x1" in err


def test_block_kinds_default_placement_is_dat():
  assert tdls.block_kinds((2, 2, 6, 2), (3, 4)) == (
      ("window",) * 2, ("window",) * 2, ("window", "deformable") * 3, ("window", "deformable"))
  assert tdls.block_kinds((2, 3), (2,)) == (("window",) * 2, ("window", "deformable", "window"))
  assert tdls._kind_summary(tdls.block_kinds((2, 2, 6, 2), (3, 4))) == ["", "", "(W,D)*3",
                                                                          "(W,D)"]


def test_fl_points_are_per_image_and_image_normalised():
  p = tdls.fl_points(3, 68)
  assert p.shape == (3, 68, 2) and p.dtype == np.float32
  assert np.abs(p).max() < 1.1 and not np.allclose(p[0], p[1])


@pytest.mark.parametrize("argv, msg", [(["--stages", "5"], "--stages"),
                                       (["--depths", "2,2,1,1"], "no deformable block"),
                                       (["--batch", "0"], "--batch"),
                                       (["--depths", "2", "--heads", "1,2"], "--depths"),
                                       (["--fl-points", "0"], "--fl-points"),
                                       (["--offset-hidden", "0"], "--offset-hidden")])
def test_bench_tdls_bad_flags(argv, msg, capsys):
  with pytest.raises(SystemExit):
    tdls.main(argv)
  assert msg in capsys.readouterr().err
