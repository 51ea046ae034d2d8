"""Test-wide set-up: 8 simulated CPU devices before JAX starts, float32 matmuls."""
import os

os.environ.setdefault("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

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
