"""Load-balanced causal sequence sharding: which tokens each device of the `sequence` axis holds.

Contiguous shards make causal attention lopsided: of P shards, the last attends to every key and the first
to almost none, so the step waits on the slowest device (about 2x the mean at P = 8). `dual_chunk` cuts the
sequence into 2P chunks and gives device r chunks r and 2P-1-r (an early and a late one); `striped` gives
device r every P-th token from r (Brandon et al. 2023, "Striped Attention"). Either way every device does
(nearly) the same attention work. The model applies the permutation once, to its inputs (ids, positions,
segment ids), and undoes it once, on its output hidden states; rotary uses each token's true position (the
permuted positions), and attention masks by true positions (`attention/sharded.py`: each device's queries
carry their positions). Everything else in a layer is per token, indifferent to the order.
"""

from __future__ import annotations

import numpy as np

LOAD_BALANCE = ("dual_chunk", "striped", "none")
# how attention meets a sharded sequence (`attention/sharded.py`): gather every key and value, trade the
# sequence split for a head split (DeepSpeed-Ulysses all-to-all), or pass K/V blocks around a ring
CONTEXT_PARALLEL = ("all_gather", "ulysses", "ring")


def _dual_chunks(shards: int) -> list[int]:
    """The chunk (of 2P) at each slot of the shards' blocks laid end to end: shard r holds chunks r and
    2P-1-r — [0, 2P-1, 1, 2P-2, ...]."""
    return [c for r in range(shards) for c in (r, 2 * shards - 1 - r)]


def balanced_order(t: int, shards: int, layout: str) -> np.ndarray | None:
    """[t] int: x_balanced = x[order] lays the shards' tokens end to end (shard r's block is
    order.reshape(shards, -1)[r], its tokens' true positions, increasing); None keeps the sequence contiguous
    (one shard, no balancing, or t not divisible: 2P chunks for dual_chunk, P for striped)."""
    if layout not in LOAD_BALANCE:
        raise ValueError(f"load_balance {layout!r}: choose from {list(LOAD_BALANCE)}")
    if layout == "none" or shards <= 1 or t % (2 * shards if layout == "dual_chunk" else shards):
        return None
    if layout == "striped":  # shard r: r, r + P, r + 2P, ...
        return np.arange(t).reshape(t // shards, shards).T.reshape(-1)
    chunk = t // (2 * shards)
    return np.concatenate([np.arange(c * chunk, (c + 1) * chunk) for c in _dual_chunks(shards)])


def shard_positions(t: int, shards: int, layout: str) -> np.ndarray:
    """[shards, t / shards] int: the true positions of each shard's tokens (contiguous when unbalanced)."""
    order = balanced_order(t, shards, layout)
    return (np.arange(t) if order is None else order).reshape(shards, t // shards)


def to_sequence_order(x, shards: int, layout: str, inverse: bool = False):
    """x [B, T, ...] holding the shards' blocks end to end (as gathered from a balanced layout) -> the
    sequence's order (inverse: back to the shards'). A reshape and a chunk gather or transpose, not a
    per-token gather. `layout` must be the one `balanced_order` applied (not None for this length)."""
    b, t, rest = x.shape[0], x.shape[1], x.shape[2:]
    if layout == "striped":  # shard r's i-th token is position r + P i: [B, P, T/P] <-> [B, T/P, P]
        grid = (shards, t // shards) if not inverse else (t // shards, shards)
        return x.reshape(b, *grid, *rest).swapaxes(1, 2).reshape(x.shape)
    held = _dual_chunks(shards)  # the chunk at each gathered slot
    chunks = x.reshape(b, 2 * shards, t // (2 * shards), *rest)
    return chunks[:, held if inverse else np.argsort(held)].reshape(x.shape)


def causal_work(t: int, shards: int, layout: str) -> np.ndarray:
    """[shards] query-key pairs each shard's causal attention computes (the balance figure: max / mean)."""
    return np.array([int(np.sum(block + 1)) for block in shard_positions(t, shards, layout)])


def attention_imbalance(t: int, shards: int, layout: str, context_parallel: str = "all_gather") -> float:
    """The busiest device's causal attention work over the mean (1.0 = balanced): a modeled figure. Ulysses
    gives every device the whole sequence for a share of the heads: balanced."""
    if shards <= 1 or context_parallel == "ulysses":
        return 1.0
    work = causal_work(t, shards, layout)
    return float(work.max() / work.mean())
