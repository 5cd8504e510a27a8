"""Meshes, logical sharding rules, sharded parameter loading and multi-process setup."""

from yarn_jax.sharding.mesh import AXES, PRESETS, MeshConfig, make_mesh
from yarn_jax.sharding.rules import DEFAULT_RULES, Sharder, constrain

__all__ = ["AXES", "PRESETS", "MeshConfig", "make_mesh", "DEFAULT_RULES", "Sharder", "constrain"]
