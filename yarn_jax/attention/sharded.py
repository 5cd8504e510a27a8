"""Self-attention under a device mesh: the backend runs per shard inside `jax.shard_map`.

Kernels (Pallas splash / GPU flash) cannot be partitioned by XLA, and the blockwise loop should not be:
each device runs the backend on its own block of the batch and of the heads (KV heads with their query
groups, when the tensor axis divides the KV heads; otherwise heads stay whole on every device).

Sequence axis: *all-gather attention*. Each device keeps its T/P queries and gathers the keys and values
of the whole sequence ([B, T, K, D] per device, linear in T), put back in sequence order. Under a
load-balanced layout (`sharding/balance.py`; `dual_chunk` by default: device r holds chunks r and 2P-1-r
of 2P; `striped`: every P-th token from r) every device does the same causal work; contiguous, the last
device sees every key and the first almost none. A device's queries carry their true positions into one
attention call (one kernel over both chunks or the whole stripe, the gathered K/V held once): the
blockwise backend takes them traced and skips key tiles outside the mask; splash evaluates its mask at
them in-kernel, and as its masks are static, one kernel per device is built and `lax.switch` picks it.
The gathered K/V are O(T) per device — fine up to the lengths the paper uses; ring for longer.

`context_parallel: ulysses` (DeepSpeed-Ulysses): an all-to-all trades the sequence split for a head split —
each device attends over the whole sequence (in order, from position 0: any backend, no per-shard kernels)
for 1/P of the heads, and a second all-to-all trades back. Needs the per-device heads divisible by P; KV
heads fewer than that are repeated to one per query head (K/V then as large as Q).

`context_parallel: ring` (`attention/ring.py`): K/V blocks travel around the axis with `ppermute`, O(T/P)
per device; blockwise tiles on every platform (no Pallas kernel).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from yarn_jax.attention import CAUSAL, Mask, attention, resolve_backend
from yarn_jax.attention.ring import ring_attention
from yarn_jax.errors import ConfigError
from yarn_jax.sharding.balance import shard_positions, to_sequence_order
from yarn_jax.sharding.rules import Sharder


def self_attention(q, k, v, *, backend: str, mask: Mask = CAUSAL, segment_ids=None, splash_blocks=None,
                   sharder: Sharder | None = None):
    """Self-attention q [B, T, H, D], k/v [B, T, K, D] -> [B, T, H, D] under a causal `mask` (plain, a
    sliding window or chunks), sharded over `sharder`'s mesh (plain `attention` without one). The backend
    and its compile/interpret choice follow the mesh's platform (a TPU topology's devices on a CPU host:
    splash through Mosaic)."""
    if sharder is None:
        return attention(q, k, v, backend=backend, mask=mask, q_segment_ids=segment_ids,
                         kv_segment_ids=segment_ids, splash_blocks=splash_blocks)
    kv_spec = sharder.spec(("batch", "length", "kv_heads", "head_dim"), k.shape)
    q_spec = sharder.spec(("batch", "length", "heads", "head_dim"), q.shape)
    if q_spec[2] != kv_spec[2]:  # GQA groups must stay whole on a device: shard heads only if both divide
        kv_spec = P(kv_spec[0], kv_spec[1], None, None)
    q_spec = P(kv_spec[0], kv_spec[1], kv_spec[2], None)
    seg_spec = P(kv_spec[0], kv_spec[1])
    seq_axis = kv_spec[1]
    platform = sharder.platform
    name = resolve_backend(backend, platform)

    t = q.shape[1]
    shards = sharder.sequence_shards(t)
    layout = sharder.load_balance if seq_axis is not None and sharder.sequence_order(t) is not None else "none"
    table = shard_positions(t, shards, layout)  # [P, T/P]: the true positions of each device's tokens
    run = functools.partial(attention, backend=name, mask=mask, platform=platform, splash_blocks=splash_blocks)

    def in_order(x, inverse=False):
        """Gathered from the shards' blocks -> sequence order (inverse: back)."""
        return x if x is None or layout == "none" else to_sequence_order(x, shards, layout, inverse)

    def ulysses(q, k, v, seg):
        """All-to-all: [B, T/P, heads, D] -> [B, T, heads/P, D], attention over the whole sequence for a 1/P
        share of the heads, and back. KV heads fewer than P (per device) are repeated to one per query head
        first, so every device's query heads find theirs."""
        heads, kv_heads = q.shape[2], k.shape[2]
        if heads % shards:
            raise ConfigError(f"context_parallel ulysses: {heads} attention heads per device cannot be split over "
                              f"the {shards}-way sequence axis; use all_gather or another mesh")
        if kv_heads % shards:
            k, v = (jnp.repeat(x, heads // kv_heads, axis=2) for x in (k, v))
        q, k, v = (in_order(lax.all_to_all(x, seq_axis, 2, 1, tiled=True)) for x in (q, k, v))  # [B, T, heads/P, D]
        seg_all = None if seg is None else in_order(lax.all_gather(seg, seq_axis, axis=1, tiled=True))
        o = run(q, k, v, q_segment_ids=seg_all, kv_segment_ids=seg_all)
        return lax.all_to_all(in_order(o, inverse=True), seq_axis, 1, 2, tiled=True)  # [B, T/P, heads, D]

    def local(q, k, v, seg):
        if seq_axis is None:
            return run(q, k, v, q_segment_ids=seg, kv_segment_ids=seg)
        if sharder.context_parallel == "ulysses":
            return ulysses(q, k, v, seg)
        if sharder.context_parallel == "ring":
            return ring_attention(q, k, v, seg, axis=seq_axis, positions=table, mask=mask)
        # all-gather: every key and value, in sequence order; this device's queries at their true positions
        k, v = (in_order(lax.all_gather(x, seq_axis, axis=1, tiled=True)) for x in (k, v))  # [B, T, K, D]
        kv_seg = None if seg is None else in_order(lax.all_gather(seg, seq_axis, axis=1, tiled=True))
        attend = functools.partial(run, q, k, v, q_segment_ids=seg, kv_segment_ids=kv_seg)
        r = lax.axis_index(seq_axis)
        if name == "splash":  # its masks are static: one kernel per device, lax.switch picks this device's
            return lax.switch(r, [functools.partial(attend, q_positions=table[i]) for i in range(shards)])
        return attend(q_positions=jnp.asarray(table)[r])

    if segment_ids is None:
        fn = jax.shard_map(lambda q, k, v: local(q, k, v, None), mesh=sharder.mesh,
                           in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec, check_vma=False)
        return fn(q, k, v)
    fn = jax.shard_map(local, mesh=sharder.mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                       out_specs=q_spec, check_vma=False)
    return fn(q, k, v, segment_ids)

