"""Test-wide set-up: 8 simulated CPU devices before JAX starts, float32 matmuls."""
import os

os.environ.setdefault("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jaxaffect  # noqa: E402,F401  (its XLA:CPU flags, jaxaffect/xla_flags.py, before JAX starts)
import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

# Tests build the same step functions many times (every `train()` call re-jits): the persistent
# compilation cache turns the repeats into cache hits.
import tempfile  # noqa: E402

jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("JAXAFFECT_TEST_JAX_CACHE",
                                 os.path.join(tempfile.gettempdir(), "jaxaffect-test-jax-cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def frame_encoder(tmp_path_factory):
  """Synthetic face videos prepped into shards (`frame_resnet:smoke` data: 1,008 + 140 held-out
  videos × 48 frames, 64 px) and the smoke frame encoder trained on them (ResNet-18 width 16, the
  three per-frame tasks). Shared by the learning tests that start from it: the ABAW sequence model
  reads its features, EST starts from its trunk (the official EST starts from a FER ResNet-18)."""
  from configs import frame_resnet
  from jaxaffect import demo
  from jaxaffect.train import loop
  root = tmp_path_factory.mktemp("frame_encoder")
  cfg = frame_resnet.get_config("smoke")
  shards = demo.prep_synthetic(cfg.data, str(root / "shards"))["out"]
  cfg = frame_resnet.get_config(f"smoke,shards={shards}")
  cfg.unlock()
  cfg.checkpoint.async_save = False
  workdir = str(root / "frame")
  metrics = loop.train(cfg, workdir)
  return {"shards": shards, "workdir": workdir, "metrics": metrics, "root": root}


@pytest.fixture(scope="session")
def mae_smoke(tmp_path_factory):
  """`mae:smoke` pretraining, once per session: its synthetic face videos (400 + 64 held-out
  videos × 8 frames, 32 px) prepped into shards and the tiny MAE (ViT width 96 × 4 blocks, patch
  8) trained on their training split. Shared by the MAE learning test (8a) and the ABAW6 tests
  that fine-tune its encoder with `vit_frames:smoke,init=<workdir>` (8b, 8c)."""
  import time
  from configs import mae
  from jaxaffect import demo
  from jaxaffect.train import loop
  root = tmp_path_factory.mktemp("mae_smoke")
  t0 = time.time()
  shards = demo.prep_synthetic(mae.get_config("smoke").data, str(root / "shards"))["out"]
  cfg = mae.get_config(f"smoke,shards={shards}")
  cfg.unlock()
  cfg.checkpoint.async_save = False
  workdir = str(root / "run")
  t1 = time.time()
  metrics = loop.train(cfg, workdir)
  # a SIGTERM makes loop.train save and return early: later tests must not fine-tune from that
  assert "preempted" not in metrics, metrics["preempted"]
  return {"shards": shards, "workdir": workdir, "metrics": metrics, "config": cfg,
          "prep_seconds": t1 - t0, "train_seconds": time.time() - t1}
