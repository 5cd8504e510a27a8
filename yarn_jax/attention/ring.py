"""Ring attention over the sequence axis (inside `shard_map`): K/V blocks travel around the ring with
`ppermute`, so a device holds its own tokens' K/V and one visiting block — O(T/P), not the whole
sequence's. Each step attends the device's queries to the visiting keys with the blockwise backend's tiles,
both placed at their true positions (any layout: contiguous, two chunks, a stripe; masks causal, sliding
window, chunks; tiles outside the mask skipped, so under a load-balanced layout every device does the same
work), and merges the partial results by their log-sum-exp. The backward is the ring again (a custom VJP):
each visiting block's dK/dV travel with it and arrive home after P hops, dQ stays; only the local q, k, v,
output and log-sum-exp are saved.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from yarn_jax.attention.blockwise import MASK, _backward, _Dims, _forward, keep_for_backward
from yarn_jax.attention.masks import CAUSAL, Mask
from yarn_jax.shapes import pad_axis


def ring_attention(q, k, v, seg, *, axis, positions: np.ndarray, mask: Mask = CAUSAL, block_q: int = 512,
                   block_k: int = 512):
    """q [B, n, H, D], k/v [B, n, K, D], seg [B, n] or None: one device's tokens -> [B, n, H, D].
    positions [P, n]: the true positions of every device's tokens (nondecreasing along n). Call inside
    shard_map over `axis` (P devices)."""
    b, n, h, d = q.shape
    kh = k.shape[2]
    g = h // kh
    dims = _Dims(n, n, block_q, block_k, mask, segments=seg is not None)
    q_table = np.pad(positions, ((0, 0), (0, dims.tp - n)), mode="edge").astype(np.int32)  # [P, tp]
    k_table = np.pad(positions, ((0, 0), (0, dims.sp - n)), mode="edge").astype(np.int32)  # [P, sp]
    q = (q.astype(jnp.float32) * d ** -0.5).astype(q.dtype)  # the softmax scale folded into q
    qg = pad_axis(jnp.moveaxis(q.reshape(b, n, kh, g, d), 1, 3), 3, dims.tp)  # [B, K, G, tp, D]
    kk, vv = (pad_axis(jnp.moveaxis(x, 1, 2), 2, dims.sp) for x in (k, v))  # [B, K, sp, D]
    q_seg = k_seg = None
    if seg is not None:
        q_seg, k_seg = (pad_axis(seg.astype(jnp.int32), 1, size) for size in (dims.tp, dims.sp))
    out = _ring_core(axis, positions.shape[0], q_table, k_table, dims)(qg, kk, vv, q_seg, k_seg)
    return jnp.moveaxis(out[:, :, :, :n], 3, 1).reshape(b, n, h, d)


def _ring_core(axis, shards: int, q_table, k_table, dims: _Dims):
    """The custom-VJP ring: q [B, K, G, tp, D], k/v [B, K, sp, D], segment ids [B, tp] / [B, sp] or None ->
    out like q. Device r's queries sit at q_table[r]; the block visiting from device src at k_table[src]."""
    hop = [(i, (i + 1) % shards) for i in range(shards)]  # device i sends to i + 1: it receives from i - 1

    def rotate(x):
        return None if x is None else lax.ppermute(x, axis, hop)

    def placed(s):
        """The tiles' positions at step s: this device's queries, the block from device r - s (the tables are
        numpy, made constants in each trace: the forward's and the backward's)."""
        r = lax.axis_index(axis)
        return dims.at(jnp.asarray(q_table)[r], jnp.asarray(k_table)[(r - s) % shards])

    def forward(q, k, v, q_seg, k_seg):
        def attend(s, out, lse, k, v, k_seg):
            """Merge the visiting block into the running output by log-sum-exp."""
            o, l = _forward(q, k, v, q_seg, k_seg, placed(s))
            new = jnp.logaddexp(lse, l)
            return out * jnp.exp(lse - new)[..., None] + o.astype(jnp.float32) * jnp.exp(l - new)[..., None], new

        def step(s, carry):
            out, lse, k, v, k_seg = carry
            out, lse = attend(s, out, lse, k, v, k_seg)
            return out, lse, rotate(k), rotate(v), rotate(k_seg)

        lse = jnp.full(q.shape[:-1], MASK, jnp.float32)  # [B, K, G, tp]
        out = jnp.zeros(q.shape, jnp.float32)
        out, lse, k, v, k_seg = lax.fori_loop(0, shards - 1, step, (out, lse, k, v, k_seg))
        out, lse = attend(shards - 1, out, lse, k, v, k_seg)  # the last block needs no hop onwards
        return out.astype(q.dtype), lse

    @jax.custom_vjp
    def core(q, k, v, q_seg, k_seg):
        return forward(q, k, v, q_seg, k_seg)[0]

    def core_fwd(q, k, v, q_seg, k_seg):
        out, lse = keep_for_backward(*forward(q, k, v, q_seg, k_seg))  # `attention` remat: no second ring
        return out, (q, k, v, q_seg, k_seg, out, lse)

    def core_bwd(res, dout):
        q, k, v, q_seg, k_seg, out, lse = res

        def step(s, carry):
            dq, k, v, k_seg, dk, dv = carry
            dq_s, dk_s, dv_s = _backward(q, k, v, q_seg, k_seg, out, lse, dout, placed(s))
            dq = dq + dq_s.astype(jnp.float32)
            dk, dv = dk + dk_s.astype(jnp.float32), dv + dv_s.astype(jnp.float32)
            # the visiting block moves on with its gradients; after P hops both are home
            return dq, rotate(k), rotate(v), rotate(k_seg), rotate(dk), rotate(dv)

        zeros = jnp.zeros(k.shape, jnp.float32)
        dq, _, _, _, dk, dv = lax.fori_loop(0, shards, step, (jnp.zeros(q.shape, jnp.float32), k, v, k_seg,
                                                              zeros, zeros))
        return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None

    core.defvjp(core_fwd, core_bwd)
    return core
