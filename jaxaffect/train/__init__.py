"""Trainer: mesh and sharding rules, optimizer, step functions, loop and checkpoints.

The trainer knows no paper: a `Task` from `jaxaffect.models` binds a module to its losses and metrics.
"""
