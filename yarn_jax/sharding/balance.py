"""Load-balanced causal sequence sharding: which tokens each device of the `sequence` axis holds.

Contiguous shards make causal attention lopsided: of P shards, the last attends to every key and the first
to almost none, so the step waits on the slowest device (about 2x the mean at P = 8). `dual_chunk` cuts the
sequence into 2P chunks and gives device r chunks r and 2P-1-r (an early and a late one: every device then
does the same attention work). The model applies the permutation once, to its inputs (ids, positions,
segment ids), and undoes it once, on its output hidden states; rotary uses each token's true position
(the permuted positions), and attention masks by true positions (`attention/sharded.py`). Everything else
in a layer is per token, indifferent to the order.
"""

from __future__ import annotations

import numpy as np

LOAD_BALANCE = ("dual_chunk", "none")
# how attention meets a sharded sequence (`attention/sharded.py`): gather every key and value, trade the
# sequence split for a head split (DeepSpeed-Ulysses all-to-all), or pass K/V blocks around a ring
CONTEXT_PARALLEL = ("all_gather", "ulysses", "ring")


def chunks_of(r, shards: int):
    """The two chunk indices (of 2P) shard r holds under `dual_chunk`: r and 2P-1-r (r may be traced)."""
    return r, 2 * shards - 1 - r


def shard_chunks(shards: int) -> list[int]:
    """The chunk at each slot of the shards' blocks laid end to end: [0, 2P-1, 1, 2P-2, ...]."""
    return [c for r in range(shards) for c in chunks_of(r, shards)]


def dual_chunk_order(t: int, shards: int) -> np.ndarray:
    """[t] int: x_balanced = x[order] puts chunks r and 2P-1-r (of 2P chunks) in shard r's block."""
    chunk = t // (2 * shards)
    return np.concatenate([np.arange(c * chunk, (c + 1) * chunk) for c in shard_chunks(shards)])


def balanced_order(t: int, shards: int, layout: str) -> np.ndarray | None:
    """The token order of a length-t sequence split over `shards` devices, or None to keep it contiguous
    (one shard, no balancing, or t not divisible into 2P chunks)."""
    if layout == "none" or shards <= 1 or t % (2 * shards):
        return None
    if layout == "dual_chunk":
        return dual_chunk_order(t, shards)
    raise ValueError(f"load_balance {layout!r}: choose from {list(LOAD_BALANCE)}")


def causal_work(t: int, shards: int, layout: str) -> np.ndarray:
    """[shards] query-key pairs each shard's causal attention computes (the balance figure: max / mean)."""
    order = balanced_order(t, shards, layout)
    positions = np.arange(t) if order is None else order
    return np.array([int(np.sum(block + 1)) for block in positions.reshape(shards, -1)])


def attention_imbalance(t: int, shards: int, layout: str, context_parallel: str = "all_gather") -> float:
    """The busiest device's causal attention work over the mean (1.0 = balanced): a modeled figure. Ulysses
    gives every device the whole sequence for a share of the heads: balanced."""
    if shards <= 1 or context_parallel == "ulysses":
        return 1.0
    work = causal_work(t, shards, layout if balanced_order(t, shards, layout) is not None else "none")
    return float(work.max() / work.mean())
