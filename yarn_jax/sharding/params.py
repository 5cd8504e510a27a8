"""Shardings of parameter trees and of anything shaped like them (gradients, optimizer moments).

Parameters are `nnx.Param` variables carrying their logical names (`out_sharding` metadata); optax
moments built by `tree.map` over them keep the variables and hence the names. Leaves without names
(step counters, scalars) are replicated.
"""

from __future__ import annotations

import jax
from flax import nnx

from yarn_jax.sharding.rules import Sharder


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def tree_shardings(tree, sharder: Sharder):
    """A tree like `tree` (params from `nnx.split`, an optimizer state, or their abstract shapes) holding
    NamedShardings: variables by their logical names, every other leaf replicated."""

    def one(path, x):
        if _is_var(x):
            names = x.get_metadata().get("out_sharding") or (None,) * len(x.shape)
            return x.replace(sharder.named(names, x.shape, what=jax.tree_util.keystr(path, simple=True,
                                                                                       separator="/")))
        return sharder.replicated()

    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=_is_var)


def shard_state(state: nnx.State, sharder: Sharder) -> nnx.State:
    """Place host/single-device parameters onto the mesh (each device receives only its shards)."""
    return jax.tree.map(jax.device_put, state, tree_shardings(state, sharder))


def spec_table(state: nnx.State) -> dict[str, str]:
    """{param path: its PartitionSpec} of placed parameters, for logs and tests."""
    return {"/".join(map(str, path)): str(var.get_value().sharding.spec) for path, var in nnx.to_flat_state(state)}
