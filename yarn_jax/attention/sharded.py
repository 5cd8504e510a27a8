"""Self-attention under a device mesh: the backend runs per shard inside `jax.shard_map`.

Kernels (Pallas splash / GPU flash) cannot be partitioned by XLA, and the blockwise loop should not be:
each device runs the backend on its own block of the batch and of the heads (KV heads with their query
groups, when the tensor axis divides the KV heads; otherwise heads stay whole on every device).

Sequence axis: *all-gather attention*. Each device keeps its block of T/P queries and gathers the keys and
values of the whole sequence ([B, T, K, D] per device, linear in T); its queries sit at key position
r * T/P (r = its index on the axis), so causal masking is exact. The blockwise backend takes that
offset traced and skips key blocks past the diagonal; splash's mask is static, so one kernel per offset is
built and `lax.switch` picks it. Not ring attention: the gathered K/V are O(T) per device, and the work
is not load-balanced (the last query block sees every key) — both fine up to the lengths the paper uses.
"""

from __future__ import annotations

import functools
import math

import jax
from jax import lax
from jax.sharding import PartitionSpec as P

from yarn_jax.attention import CAUSAL, Mask, attention, resolve_backend
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

    def local(q, k, v, seg):
        t_local = q.shape[1]
        offset = None
        if seq_axis is not None:
            k = lax.all_gather(k, seq_axis, axis=1, tiled=True)  # [B, T, K, D]
            v = lax.all_gather(v, seq_axis, axis=1, tiled=True)
            kv_seg = None if seg is None else lax.all_gather(seg, seq_axis, axis=1, tiled=True)
            offset = lax.axis_index(seq_axis) * t_local
        else:
            kv_seg = seg
        run = functools.partial(attention, backend=name, mask=mask, platform=platform,
                                splash_blocks=splash_blocks)
        if offset is not None and name == "splash":
            shards = math.prod(sharder.size(a) for a in ((seq_axis,) if isinstance(seq_axis, str) else seq_axis))
            branches = [functools.partial(run, q_offset=r * t_local) for r in range(shards)]
            return lax.switch(offset // t_local, [
                (lambda b: lambda q, k, v, s, ks: b(q, k, v, q_segment_ids=s, kv_segment_ids=ks))(b)
                for b in branches], q, k, v, seg, kv_seg)
        return run(q, k, v, q_segment_ids=seg, kv_segment_ids=kv_seg, q_offset=offset)

    if segment_ids is None:
        fn = jax.shard_map(lambda q, k, v: local(q, k, v, None), mesh=sharder.mesh,
                           in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec, check_vma=False)
        return fn(q, k, v)
    fn = jax.shard_map(local, mesh=sharder.mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                       out_specs=q_spec, check_vma=False)
    return fn(q, k, v, segment_ids)
