"""Data parallelism, FSDP and multi-host give the single-device result; checkpoints resume exactly."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxaffect.train import checkpoint as ckpt_lib
from jaxaffect.train import loop, mesh as mesh_lib
from tests.train.helpers import random_sources, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_steps(config, mesh, sources, n_steps=3):
  s = loop.build(config, mesh=mesh, sources=sources)
  init_rng, step_rng = loop._rngs(config)
  it = iter(loop.pipeline.train_iterator(s.train_source, config.data, config.batch_size,
                                         config.seed))
  losses = []
  with jax.set_mesh(mesh):
    state = s.init_fn(init_rng)
    for _ in range(n_steps):
      batch = mesh_lib.global_batch_from_local(next(it), mesh)
      state, m = s.train_step(state, batch, step_rng)
      losses.append(float(mesh_lib.to_host(m).compute()["loss"]))
  return mesh_lib.to_host(state), losses, s


def _assert_trees_close(a, b, atol=1e-5, rtol=1e-5):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb)
  for (path, x), y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol,
                               err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def single_device_run():
  config = tiny_config()
  sources = random_sources(config)
  mesh = mesh_lib.make_mesh(1, 1, devices=jax.devices()[:1])
  return config, sources, _run_steps(config, mesh, sources)


def test_data_parallel_equals_single_device(single_device_run):
  config, sources, (state1, losses1, _) = single_device_run
  assert jax.device_count() == 8
  state8, losses8, s = _run_steps(config, mesh_lib.make_mesh(8, 1), sources)
  # SGD with momentum: a wrongly scaled gradient (e.g. pmean of an already summed grad) shows here.
  _assert_trees_close(state1["params"], state8["params"])
  _assert_trees_close(state1["extra"], state8["extra"])      # BatchNorm stats over the global batch
  np.testing.assert_allclose(losses1, losses8, rtol=1e-5)
  assert losses1[0] != losses1[-1]                            # the steps really moved the params


def test_fsdp_rules_equal_single_device(single_device_run):
  config, sources, (state1, losses1, _) = single_device_run
  config = tiny_config()
  config.mesh.data, config.mesh.fsdp = 2, 4
  config.sharding_rules = ((".*", "fsdp:256"),)
  mesh = mesh_lib.make_mesh(2, 4)
  state_f, losses_f, s = _run_steps(config, mesh, sources)
  sharded = [sh for sh in jax.tree.leaves(s.state_shardings) if "fsdp" in str(sh.spec)]
  assert len(sharded) >= 10, "FSDP rules sharded (almost) nothing"
  _assert_trees_close(state1["params"], state_f["params"])
  np.testing.assert_allclose(losses1, losses_f, rtol=1e-5)


def _jsonl_losses(workdir):
  out = {}
  with open(os.path.join(workdir, "tensorboard", "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if "train/loss" in r:
        out[r["step"]] = r["train/loss"]
  return out


def test_kill_and_resume_gives_identical_losses(tmp_path):
  config = tiny_config()
  config.num_epochs = 3          # 12 steps, eval + checkpoint every 4
  sources = random_sources(config)
  full = str(tmp_path / "full")
  loop.train(config, full, sources=sources)
  cut = str(tmp_path / "cut")
  loop.train(config, cut, sources=sources, stop_after_steps=6)   # "killed" after step 6
  mngr = ckpt_lib.make_manager(os.path.join(cut, "checkpoints"), read_only=True, async_save=False)
  assert mngr.latest_step() == 6
  mngr.close()
  loop.train(config, cut, sources=sources)                       # rerun with the same workdir
  a, b = _jsonl_losses(full), _jsonl_losses(cut)
  assert sorted(a) == list(range(1, 13))
  assert sorted(b) == list(range(1, 13))                         # no step lost or repeated
  for step in range(7, 13):
    assert a[step] == pytest.approx(b[step], rel=1e-6, abs=1e-7), step


def test_restore_onto_a_different_mesh(tmp_path):
  config = tiny_config()
  config.num_steps = 2
  sources = random_sources(config)
  wd = str(tmp_path / "run")
  loop.train(config, wd, sources=sources)
  s8 = loop.build(config, sources=sources)                       # saved on (data=8, fsdp=1)
  config2 = tiny_config()
  config2.num_steps = 2
  config2.mesh.data, config2.mesh.fsdp = 2, 4
  config2.sharding_rules = ((".*", "fsdp:256"),)
  s24 = loop.build(config2, sources=sources)
  mngr = ckpt_lib.make_manager(os.path.join(wd, "checkpoints"), read_only=True, async_save=False)
  with jax.set_mesh(s8.mesh):
    a, _ = ckpt_lib.restore(mngr, 2, ckpt_lib.abstract_with_shardings(s8.abstract_state,
                                                                      s8.state_shardings))
  with jax.set_mesh(s24.mesh):
    b, _ = ckpt_lib.restore(mngr, 2, ckpt_lib.abstract_with_shardings(s24.abstract_state,
                                                                      s24.state_shardings))
  mngr.close()
  leaves = jax.tree.leaves(b)
  assert any("fsdp" in str(x.sharding.spec) for x in leaves if hasattr(x, "sharding"))
  _assert_trees_close(jax.device_get(a), jax.device_get(b), atol=0, rtol=0)


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@pytest.mark.multiprocess
def test_two_processes_equal_one(tmp_path, single_device_run):
  """Two JAX processes (4 CPU devices each, gloo) on 127.0.0.1 train like one process."""
  config, sources, (state1, losses1, _) = single_device_run
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env["PYTHONPATH"] = ROOT
  procs = []
  for pid in range(2):
    out = str(tmp_path / f"p{pid}.npz")
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "tests.train.mp_worker", str(pid), "2", str(port), out],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o[-3000:]
  for pid in range(2):
    got = np.load(str(tmp_path / f"p{pid}.npz"))
    np.testing.assert_allclose(got["losses"], losses1, rtol=1e-5)
    flat = {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(state1["params"])}
    assert set(flat) == {k for k in got.files if k != "losses"}
    # Each host contributes every other clip, so the rows of the global batch come in another
    # order than in one process: reductions (BatchNorm, the mean loss) sum in another order.
    for k, v in flat.items():
      np.testing.assert_allclose(got[k], v, atol=3e-5, rtol=3e-5, err_msg=k)
