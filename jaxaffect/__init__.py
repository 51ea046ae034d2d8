"""jaxaffect: video facial-affect recognition in JAX/Flax."""
__version__ = "0.1.0"
