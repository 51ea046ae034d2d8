"""XLA:CPU flags that jaxaffect sets before JAX starts (issue 12), decided by measurement.

`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`: jaxlib 0.12's XLA:CPU hands every
convolution to YNNPACK (`ynn_fusion.N` in a profile). On the 2-core x86 box this project is
measured on, YNNPACK's convolutions were 2x slower than XLA's Eigen ones in the forward at small
spatial sizes and 2-3x slower in the weight gradient (`jaxaffect bench ops`, README "CPU speed"):
the Former-DFER train step went from 0.62x to 0.98x the official PyTorch one with this flag alone
(`jaxaffect bench former_dfer --reference ... --profile`). Dots stay with YNNPACK (measured no
worse). The flag only changes which CPU library runs a convolution: results agree to f32 rounding
(the same tests against torch pass at the same tolerances); GPU and TPU ignore CPU flags.

Applied by `import jaxaffect` (so by the CLI, the tests and any library use) when:
  * `JAXAFFECT_XLA_CPU_FLAGS` is not `0`/`off` (the opt-out, e.g. to measure XLA's own defaults);
  * the user's `XLA_FLAGS` does not already name the flag (theirs wins);
  * the installed jaxlib is one it was measured with (`MEASURED_JAXLIB`): the flag is experimental,
    and XLA aborts on flags it does not know, so a newer jaxlib gets nothing until re-measured.
If JAX's backends were already initialised (jax imported and used before jaxaffect), XLA_FLAGS is no
longer read: a warning says so.
"""
from __future__ import annotations

import os
import sys
import warnings

ENV = "JAXAFFECT_XLA_CPU_FLAGS"
FLAGS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}
MEASURED_JAXLIB = ("0.12.",)


def _jaxlib_version() -> str | None:
  try:
    from importlib.metadata import version
    return version("jaxlib")
  except Exception:                                   # noqa: BLE001 - not installed / odd env
    return None


def wanted(environ=None) -> list[str]:
  """The flags `apply` would add to `environ['XLA_FLAGS']` (none if opted out or unmeasured)."""
  environ = os.environ if environ is None else environ
  if environ.get(ENV, "").strip().lower() in ("0", "off", "false", "no"):
    return []
  v = _jaxlib_version()
  if v is None or not v.startswith(MEASURED_JAXLIB):
    return []
  current = environ.get("XLA_FLAGS", "")
  return [f"--{k}={v}" for k, v in FLAGS.items() if k not in current]


def apply(environ=None) -> list[str]:
  """Append `wanted()` to XLA_FLAGS; returns what was added."""
  environ = os.environ if environ is None else environ
  add = wanted(environ)
  if not add:
    return []
  if environ is os.environ and "jax" in sys.modules:
    try:
      from jax._src import xla_bridge
      if xla_bridge.backends_are_initialized():
        warnings.warn(f"jaxaffect: JAX was initialised before jaxaffect was imported, so its CPU "
                      f"flags {add} do not apply (set them in XLA_FLAGS, or import jaxaffect "
                      f"first); see jaxaffect/xla_flags.py", stacklevel=3)
        return []
    except Exception:                                 # noqa: BLE001 - private API moved
      pass
  environ["XLA_FLAGS"] = (environ.get("XLA_FLAGS", "") + " " + " ".join(add)).strip()
  return add
