"""Ring attention over the sequence axis (inside `shard_map`): K/V blocks travel around the ring with
`ppermute`, so a device holds its own tokens' K/V and one visiting block — O(T/P), not the whole
sequence's. Each step attends the device's query blocks to the visiting key blocks with the blockwise
backend's tiles (masked by true positions: causal, sliding window, chunks; tiles outside the mask skipped,
so under the load-balanced layout every device does the same work) and merges the partial results by
their log-sum-exp. The backward is the ring again (a custom VJP): each visiting block's dK/dV travel with
it and arrive home after P hops, dQ stays; only the local q, k, v, output and log-sum-exp are saved.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from yarn_jax.attention.blockwise import MASK, _backward, _Dims, _forward
from yarn_jax.attention.masks import CAUSAL, Mask
from yarn_jax.shapes import pad_axis

# (start, length, position(r)): a block of the tokens device r holds — its rows in the local arrays and
# the sequence position of its first token (r traced)
Block = tuple[int, int, Callable]


def ring_attention(q, k, v, seg, *, axis, shards: int, blocks: Sequence[Block], mask: Mask = CAUSAL,
                   block_q: int = 512, block_k: int = 512):
    """q [B, n, H, D], k/v [B, n, K, D], seg [B, n] or None: one device's tokens (the same for queries and
    keys, `blocks` of them) -> [B, n, H, D]. Call inside shard_map over `axis` (`shards` devices)."""
    b, n, h, d = q.shape
    kh = k.shape[2]
    g = h // kh
    length = blocks[0][1]
    if any(bl[1] != length for bl in blocks):
        raise ValueError("ring attention: every block of a device must have the same length")
    dims = _Dims(length, length, block_q, block_k, mask, segments=seg is not None)
    q = (q.astype(jnp.float32) * d ** -0.5).astype(q.dtype)  # the softmax scale folded into q

    def split_q(x):  # [B, n, H, D] -> [NB, B, K, G, tp, D]
        return jnp.stack([pad_axis(jnp.moveaxis(x[:, s:s + c].reshape(b, c, kh, g, d), 1, 3), 3, dims.tp)
                          for s, c, _ in blocks])

    def split_kv(x):  # [B, n, K, D] -> [NB, B, K, sp, D]
        return jnp.stack([pad_axis(jnp.moveaxis(x[:, s:s + c], 1, 2), 2, dims.sp) for s, c, _ in blocks])

    def split_seg(x, size):
        return None if x is None else jnp.stack([pad_axis(x[:, s:s + c].astype(jnp.int32), 1, size)
                                                 for s, c, _ in blocks])

    core = _ring_core(axis, shards, tuple(bl[2] for bl in blocks), dims)
    out = core(split_q(q), split_kv(k), split_kv(v), split_seg(seg, dims.tp), split_seg(seg, dims.sp))
    out = out[:, :, :, :, :length]  # [NB, B, K, G, c, D]
    out = jnp.concatenate([jnp.moveaxis(o, 3, 1).reshape(b, length, h, d) for o in out], axis=1)
    return out


def _ring_core(axis, shards: int, positions: tuple, dims: _Dims):
    """The custom-VJP ring over pre-split blocks: q [NB, B, K, G, tp, D], k/v [NB, B, K, sp, D], segment ids
    [NB, B, tp] / [NB, B, sp] or None -> out like q."""
    hop = [(i, (i + 1) % shards) for i in range(shards)]  # device i sends to i + 1: it receives from i - 1

    def rotate(x):
        return None if x is None else lax.ppermute(x, axis, hop)

    def pairs(r, src):
        """(query block a, key block b, offset of a's queries into b's keys) for this step."""
        return [(a, bb, positions[a](r) - positions[bb](src)) for a in range(len(positions))
                for bb in range(len(positions))]

    def forward(q, k, v, q_seg, k_seg):
        r = lax.axis_index(axis)

        def attend(s, out, lse, k, v, k_seg):
            """Merge the visiting block (from device r - s) into the running output by log-sum-exp."""
            src = (r - s) % shards
            for a, bb, offset in pairs(r, src):
                o, l = _forward(q[a], k[bb], v[bb], None if q_seg is None else q_seg[a],
                                None if k_seg is None else k_seg[bb], dims.at(offset))
                new = jnp.logaddexp(lse[a], l)
                merged = (out[a] * jnp.exp(lse[a] - new)[..., None]
                          + o.astype(jnp.float32) * jnp.exp(l - new)[..., None])
                out, lse = out.at[a].set(merged), lse.at[a].set(new)
            return out, lse

        def step(s, carry):
            out, lse, k, v, k_seg = carry
            out, lse = attend(s, out, lse, k, v, k_seg)
            return out, lse, rotate(k), rotate(v), rotate(k_seg)

        lse = jnp.full(q.shape[:-1], MASK, jnp.float32)  # [NB, B, K, G, tp]
        out = jnp.zeros(q.shape, jnp.float32)
        out, lse, k, v, k_seg = lax.fori_loop(0, shards - 1, step, (out, lse, k, v, k_seg))
        out, lse = attend(shards - 1, out, lse, k, v, k_seg)  # the last block needs no hop onwards
        return out.astype(q.dtype), lse

    @jax.custom_vjp
    def core(q, k, v, q_seg, k_seg):
        return forward(q, k, v, q_seg, k_seg)[0]

    def core_fwd(q, k, v, q_seg, k_seg):
        out, lse = forward(q, k, v, q_seg, k_seg)
        return out, (q, k, v, q_seg, k_seg, out, lse)

    def core_bwd(res, dout):
        q, k, v, q_seg, k_seg, out, lse = res
        r = lax.axis_index(axis)
        dq = jnp.zeros(q.shape, jnp.float32)

        def step(s, carry):
            dq, k, v, k_seg, dk, dv = carry
            src = (r - s) % shards
            for a, bb, offset in pairs(r, src):
                dq_a, dk_b, dv_b = _backward(q[a], k[bb], v[bb], None if q_seg is None else q_seg[a],
                                             None if k_seg is None else k_seg[bb], out[a], lse[a], dout[a],
                                             dims.at(offset))
                dq = dq.at[a].add(dq_a.astype(jnp.float32))
                dk = dk.at[bb].add(dk_b.astype(jnp.float32))
                dv = dv.at[bb].add(dv_b.astype(jnp.float32))
            # the visiting block moves on with its gradients; after P hops both are home
            return dq, rotate(k), rotate(v), rotate(k_seg), rotate(dk), rotate(dv)

        zeros = jnp.zeros(k.shape, jnp.float32)
        dq, _, _, _, dk, dv = lax.fori_loop(0, shards, step, (dq, k, v, k_seg, zeros, zeros))
        return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None

    core.defvjp(core_fwd, core_bwd)
    return core
