"""`jaxaffect bench MODEL --profile` (bench/profile.py) and the XLA:CPU flags of jaxaffect/xla_flags.py.
No timing assertions: the profile must attribute the traced thunks to the compiled HLO, name their
kind and pass, and the flag must change which library XLA:CPU compiles a convolution into."""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxaffect import bench, xla_flags
from jaxaffect.bench import profile
from tests.test_bench import TINY, _last_json, _tiny_reference


def _conv_step():
  def loss(w, x):
    y = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = lax.reduce_window(jax.nn.relu(y), -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")
    return jnp.sum(jnp.tanh(y) ** 2)
  w = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 16, 32)), jnp.float32) * 0.1
  x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 32, 32, 16)), jnp.float32)
  f = jax.jit(lambda w, x: w - 0.01 * jax.grad(loss)(w, x))
  return f.lower(w, x).compile(), w, x


def test_pass_of_reads_the_transforms_of_op_name():
  assert profile.pass_of("jit(step)/transpose(jvp(M))/Conv_0/conv_general_dilated") == "bwd"
  assert profile.pass_of("jit(step)/jvp(M)/Conv_0/conv_general_dilated") == "fwd"
  assert profile.pass_of("jit(step)/optax/mul") == "other"
  assert profile.pass_of("") == "n/a"


def test_hlo_index_names_fusions_by_their_heaviest_op():
  compiled, _, _ = _conv_step()
  index = profile.hlo_index(compiled.as_text())
  convs = [n for n, d in index.items() if d["kind"] == "convolution"]
  assert convs, "no convolution found in the compiled step"
  # forward and backward convolutions, told apart by their metadata
  passes = {profile.pass_of(index[n]["op_name"]) for n in convs}
  assert "fwd" in passes and "bwd" in passes, passes
  for d in index.values():
    assert d["kind"] and d["opcode"]


def test_profile_attributes_the_traced_thunks_to_the_hlo():
  compiled, w, x = _conv_step()
  state = {"w": w}

  def run():
    state["w"] = compiled(state["w"], x)
    jax.block_until_ready(state["w"])

  run()
  p = profile.profile_jax(compiled, run, steps=2, top=10)
  assert p["ops_s"] > 0 and p["step_s"] > 0 and p["n_ops"] >= 3
  assert p["unmatched_s"] <= 0.05 * p["ops_s"], p["unmatched_s"]
  assert sum(g["s"] for g in p["groups"]) == pytest.approx(p["ops_s"])
  kinds = {(g["kind"], g["pass"]) for g in p["groups"]}
  assert ("convolution", "fwd") in kinds, kinds
  index = profile.hlo_index(compiled.as_text())
  for r in p["top"]:
    assert r["name"] in index and r["kind"] == index[r["name"]]["kind"]
  assert [r["s"] for r in p["top"]] == sorted((r["s"] for r in p["top"]), reverse=True)
  text = profile.format_profile(p)
  assert "by kind and pass" in text and "convolution" in text


def test_bench_main_profile_reports_both_frameworks(capsys, monkeypatch):
  from jaxaffect.models import former_dfer
  spec = dataclasses.replace(bench.FORMER_DFER, reference=_tiny_reference)
  monkeypatch.setattr(former_dfer, "bench_model", lambda: spec)
  assert bench.main(["former_dfer", *TINY, "--json", "--reference", "/nowhere", "--profile",
                     "--profile-top", "200"]) == 0
  captured = capsys.readouterr()
  r = _last_json(captured.out)
  pj, pt = r["profile"]["jax"], r["profile"]["torch"]
  assert 5 <= len(pj["top"]) <= 200 and pj["groups"] and pj["ops_s"] > 0
  assert any(g["kind"] == "convolution" for g in pj["groups"])
  # the tiny torch model is Flatten + Linear: its matmul is among torch's ops (all of them listed:
  # in so small a model the optimizer's elementwise ops may take more time than the matmul)
  assert len(pt["top"]) < 200 and any("addmm" in t["name"] for t in pt["top"])
  assert [t["s"] for t in pt["top"]] == sorted((t["s"] for t in pt["top"]), reverse=True)
  assert "by kind and pass" in captured.err and "PyTorch step" in captured.err


# ------------------------------------------------------------------------------------ xla_flags


def test_xla_flags_wanted_respects_opt_out_user_flags_and_jaxlib(monkeypatch):
  monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: "0.12.3")
  assert xla_flags.wanted({}) == ["--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"]
  assert xla_flags.wanted({"JAXAFFECT_XLA_CPU_FLAGS": "0"}) == []
  assert xla_flags.wanted({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}) == []
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert xla_flags.apply(env) and env["XLA_FLAGS"].split() == [
      "--xla_force_host_platform_device_count=8",
      "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"]
  assert xla_flags.apply(env) == []                                 # idempotent
  monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: "0.13.0")  # not measured: nothing
  assert xla_flags.wanted({}) == []


_PROBE = """
import jax, jax.numpy as jnp
from jax import lax
import jaxaffect
f = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
t = f.lower(jnp.ones((8, 28, 28, 64)), jnp.ones((3, 3, 64, 64))).compile().as_text()
conv_lines = [l for l in t.splitlines() if ' convolution(' in l]
print('YNN' if '__ynn_fusion' in t else 'EIGEN', len(conv_lines))
"""


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU flag")
def test_the_cpu_flag_moves_convolutions_off_ynnpack():
  """With jaxaffect's flag the convolution is XLA's own (Eigen) `convolution` instruction; opted out
  (XLA's default on jaxlib 0.12) it is a YNNPACK fusion. Each in a fresh process (XLA_FLAGS is
  read once per process)."""
  if not xla_flags.wanted({}) and "ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
    pytest.skip("jaxlib not among the measured versions: no flag applied")
  out = {}
  for name, extra in (("on", {}), ("off", {"JAXAFFECT_XLA_CPU_FLAGS": "0"})):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", **extra)
    r = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                       timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr[-2000:]
    out[name] = r.stdout.split()
  assert out["on"][0] == "EIGEN" and int(out["on"][1]) >= 1, out
  assert out["off"][0] == "YNN", out
