"""Dense attention: materialises the [T, S] scores. Exact, simple, for tests and short sequences."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from yarn_jax.attention.masks import CAUSAL, Mask, query_positions


def dense_mask(t: int, s: int, *, mask: Mask = CAUSAL, q_segment_ids=None, kv_segment_ids=None, q_offset=None,
               q_positions=None):
    """Boolean [B or 1, 1, T, S] mask: True where query i may attend to key j.

    Query i sits at key position i + q_offset; by default the queries are the last T of the S key positions
    (q_offset = S - T; T == S without a cache), so causal means j <= i + q_offset. A sequence-sharded
    device's queries pass their offset, or their positions (`q_positions` [T]: two chunks, a stripe).
    Segment ids [B, T] / [B, S] restrict attention to equal ids.
    """
    q_pos = query_positions(t, s, q_offset, q_positions)
    allowed = mask.allowed(q_pos, jnp.arange(s))[None, None]
    if q_segment_ids is not None:
        allowed = allowed & (q_segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :])
    return allowed


def reference_attention(q, k, v, *, mask: Mask = CAUSAL, q_segment_ids=None, kv_segment_ids=None, scale=None,
                        q_offset=None, q_positions=None):
    """softmax(q k^T * scale + mask) v with GQA.

    q [B, T, H, D], k/v [B, S, K, D] with H a multiple of K -> [B, T, H, D].
    Like HF's eager attention: scores and softmax in float32, probabilities cast to v's dtype.
    """
    b, t, h, d = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    group = h // kv_heads
    scale = d ** -0.5 if scale is None else scale
    qg = q.reshape(b, t, kv_heads, group, d)  # head h = kv * group + g, as HF's repeat_kv
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    allowed = dense_mask(t, s, mask=mask, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
                         q_offset=q_offset, q_positions=q_positions)
    scores = jnp.where(allowed[:, :, None], scores, jnp.finfo(jnp.float32).min)  # [B, K, G, T, S]
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, t, h, d).astype(q.dtype)
