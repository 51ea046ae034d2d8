"""`jaxaffect bench encoder`: a tiny looped-vs-scanned run prints one JSON line with both layouts'
compile and step figures and equal losses; bad sizes are user errors. No timing assertions."""
import json

import jax
import pytest

from jaxaffect import bench
from jaxaffect.errors import UserError

TINY = ["encoder", "--layers", "2", "--d", "16", "--heads", "2", "--mlp", "32", "--batch", "2",
        "--seq", "4", "--steps", "2", "--json"]


@pytest.mark.parametrize("remat", ["none", "full"])
def test_bench_encoder_json_reports_both_layouts(capsys, remat):
  cache_before = jax.config.jax_enable_compilation_cache
  assert bench.main(TINY + ["--remat", remat]) == 0
  assert jax.config.jax_enable_compilation_cache == cache_before   # switched off only inside
  out = capsys.readouterr()
  lines = [line for line in out.out.splitlines() if line.strip()]
  assert len(lines) == 1
  r = json.loads(lines[0])
  assert (r["layers"], r["d"], r["heads"], r["mlp"], r["remat"]) == (2, 16, 2, 32, remat)
  for layout in ("looped", "scanned"):
    v = r[layout]
    for k in ("lower_s", "compile_s", "first_step_s", "step_s"):
      assert v[k] > 0, (layout, k)
    assert len(v["step_s_all"]) == 2
  # the same parameters in both layouts: the same loss after the same steps (up to rounding)
  assert r["scanned"]["loss"] == pytest.approx(r["looped"]["loss"], rel=1e-4)
  assert r["compile_speedup"] > 0 and r["step_ratio"] > 0
  assert "compile looped/scanned" in out.err


def test_bench_encoder_rejects_bad_sizes():
  with pytest.raises(UserError, match="divisible"):
    bench.main(["encoder", "--d", "30", "--heads", "4"])
  with pytest.raises(UserError, match="--layers must be positive"):
    bench.main(["encoder", "--layers", "0"])
  with pytest.raises(UserError, match="--remat"):
    bench.main(["encoder", "--remat", "dots"])
