"""jaxaffect: video facial-affect recognition in JAX/Flax."""
__version__ = "0.1.0"

# XLA:CPU flags chosen by measurement (issue 12), set before JAX reads XLA_FLAGS; opt out with
# JAXAFFECT_XLA_CPU_FLAGS=0. See jaxaffect/xla_flags.py.
from jaxaffect import xla_flags as _xla_flags  # noqa: E402

_xla_flags.apply()
