"""Chunked LM head and loss: per-token log-probabilities without materialising [T, vocab] logits.

At 32k tokens SmolLM2's full float32 logits are 32768 x 49152 x 4 B = 6.4 GB; here the head runs on
`chunk` positions at a time inside a scan, so peak memory holds one [B, chunk, vocab] block.

`token_log_probs` serves evaluation (its gradient recomputes each block). The training loss uses
`weighted_nll`, which computes the head's gradients in the same pass as the loss (each block's logits are
used once for the loss and once for d loss / d logits, then dropped): 3 matmuls per block instead of 4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from yarn_jax.shapes import cdiv, pad_axis


# Positions per head block: [B, 256, 49152] float32 is 50 MB; 256 measured fastest at 8k (vs 512, 1024).
DEFAULT_CHUNK = 256


def token_log_probs(hidden, lm_head, targets, *, chunk: int = DEFAULT_CHUNK):
    """log p(targets) [B, T] float32 from hidden states [B, T, E] and the head weight [E, V].

    Equals `take_along_axis(log_softmax(hidden @ lm_head), targets)` (float32 logits, float32
    accumulation) with one [B, chunk, V] block alive at a time.
    Block j holds the strided positions {c * n + j : c < chunk} (n = number of blocks): a sequence
    sharded along T over P devices keeps each block sharded the same way (P divides chunk), so the scan
    over blocks never gathers the hidden states of the whole sequence onto one device.
    """
    h, y = _blocks(hidden, targets, chunk=chunk)  # [n, B, chunk, E], [n, B, chunk]

    @jax.checkpoint
    def block(hc, yc):
        logits = jnp.einsum("bce,ev->bcv", hc, lm_head.astype(hc.dtype), preferred_element_type=jnp.float32)
        return jnp.take_along_axis(logits, yc[..., None], axis=-1)[..., 0] - _logsumexp(logits)

    return _unblock(lax.map(lambda args: block(*args), (h, y)), hidden.shape[1])  # [B, T]


def _blocks(hidden, *per_token, chunk: int):
    """[B, T, E] and [B, T] arrays -> [n, B, chunk, E] / [n, B, chunk] strided blocks (block j holds
    positions {c * n + j}; see `token_log_probs`), zero-padded to n * chunk positions."""
    b, t, e = hidden.shape
    chunk = min(chunk, t)
    n = cdiv(t, chunk)
    h = jnp.moveaxis(pad_axis(hidden, 1, n * chunk).reshape(b, chunk, n, e), 2, 0)
    return (h, *(jnp.moveaxis(pad_axis(x, 1, n * chunk).reshape(b, chunk, n), 2, 0) for x in per_token))


def _unblock(x, t: int):
    """Inverse of `_blocks` for [n, B, chunk, ...] -> [B, T, ...]."""
    n, b, chunk = x.shape[:3]
    return jnp.moveaxis(x, 0, 2).reshape(b, n * chunk, *x.shape[3:])[:, :t]


def weighted_nll(hidden, lm_head, targets, weights, *, chunk: int = DEFAULT_CHUNK, sharder=None):
    """sum_{b,t} weights[b, t] * -log p(targets[b, t]) (float32 scalar) from hidden [B, T, E], head [E, V].

    Differentiable in hidden and lm_head (weights and targets are constants). The gradients are formed
    while the loss is computed, block by block, from d(-log p_y)/d logits = softmax - onehot(y), so the
    backward pass only scales them by the incoming cotangent. `sharder` (the mesh the step runs on):
    each device runs the block loop on its own tokens.
    """
    t = hidden.shape[1]
    h, y, wt = _blocks(hidden, targets, weights.astype(jnp.float32), chunk=chunk)
    total, dh, dw = _fused_head_per_shard(h, lm_head, y, wt, sharder)
    return _scaled_by_cotangent(total, hidden, lm_head, _unblock(dh, t), dw)


def _fused_head_per_shard(h, lm_head, y, wt, sharder):
    """`_fused_head` under a mesh (a `sharding.Sharder`): each device runs the block loop on its own tokens and the
    head gradient is summed across devices once, after the loop. (Partitioned by XLA instead, the running
    [E, V] float32 sum was all-reduced in every block: for Llama-2-7B at 64k, 256 all-reduces of 0.5 GB
    per micro-batch — 1 TB per chip per step, found by compiling for TPU.) With a tensor axis the head
    stays XLA-partitioned (its vocabulary is split there)."""
    if sharder is None or sharder.size("tensor") > 1:
        return _fused_head(h, lm_head, y, wt)
    tokens = sharder.spec(("batch", "length"), y.shape[1:])  # [B, chunk]: rows and (strided) positions
    axes = tuple(a for part in tokens if part for a in ((part,) if isinstance(part, str) else part))
    if not axes:
        return _fused_head(h, lm_head, y, wt)

    def local(h, w, y, wt):
        total, dh, dw = _fused_head(h, w, y, wt)
        return lax.psum(total, axes), dh, lax.psum(dw, axes)

    blocks = P(None, *tokens)
    return jax.shard_map(local, mesh=sharder.mesh, in_specs=(P(None, *tokens, None), P(), blocks, blocks),
                         out_specs=(P(), P(None, *tokens, None), P()), check_vma=False)(h, lm_head, y, wt)


@jax.custom_vjp
def _scaled_by_cotangent(total, hidden, lm_head, d_hidden, d_lm_head):
    """`total`, whose gradients in (hidden, lm_head) are the precomputed (d_hidden, d_lm_head)."""
    return total


def _scaled_fwd(total, hidden, lm_head, d_hidden, d_lm_head):
    return total, (d_hidden, d_lm_head)


def _scaled_bwd(res, g):
    d_hidden, d_lm_head = res
    return None, (g * d_hidden).astype(d_hidden.dtype), (g * d_lm_head).astype(d_lm_head.dtype), None, None


_scaled_by_cotangent.defvjp(_scaled_fwd, _scaled_bwd)


def _fused_head(h, lm_head, y, wt):
    """Blocks h [n, B, c, E], y/wt [n, B, c] -> (weighted NLL sum, d/dh [n, B, c, E], d/d lm_head [E, V])."""
    h, lm_head, y, wt = lax.stop_gradient((h, lm_head, y, wt))
    w = lm_head.astype(h.dtype)

    def block(carry, args):
        total, dw = carry
        hc, yc, wc = args
        logits = jnp.einsum("bce,ev->bcv", hc, w, preferred_element_type=jnp.float32)  # [B, c, V]
        lse = _logsumexp(logits)
        target = jnp.take_along_axis(logits, yc[..., None], axis=-1)[..., 0]
        total = total + jnp.sum(wc * (lse - target))
        onehot = lax.broadcasted_iota(jnp.int32, logits.shape, 2) == yc[..., None]
        d_logits = (wc[..., None] * (jnp.exp(logits - lse[..., None]) - onehot)).astype(h.dtype)
        dh = jnp.einsum("bcv,ev->bce", d_logits, w, preferred_element_type=jnp.float32).astype(h.dtype)
        dw = dw + jnp.einsum("bce,bcv->ev", hc, d_logits, preferred_element_type=jnp.float32)
        return (total, dw), dh

    (total, dw), dh = lax.scan(block, (jnp.float32(0), jnp.zeros(lm_head.shape, jnp.float32)), (h, y, wt))
    return total, dh, dw.astype(lm_head.dtype)


def _logsumexp(logits):
    """logsumexp over the last axis [..., V] -> [...]. The sum of exponentials is a matrix-vector product
    with ones: on XLA:CPU that runs threaded, where the fused exp-and-reduce did not (1.4x faster head
    at 8k tokens, measured)."""
    m = lax.stop_gradient(logits.max(-1, keepdims=True))  # shift only; the gradient is softmax either way
    total = jnp.exp(logits - m) @ jnp.ones((logits.shape[-1],), logits.dtype)
    return jnp.log(total) + m[..., 0]


def mean_nll(hidden, lm_head, targets, mask=None, *, chunk: int = DEFAULT_CHUNK):
    """Mean negative log-likelihood over the positions where mask is true (all when None)."""
    mask = jnp.ones(targets.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    return weighted_nll(hidden, lm_head, targets, mask, chunk=chunk) / jnp.maximum(jnp.sum(mask), 1.0)
