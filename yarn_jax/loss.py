"""Chunked LM head and loss: per-token log-probabilities without materialising [T, vocab] logits.

At 32k tokens SmolLM2's full float32 logits are 32768 x 49152 x 4 B = 6.4 GB; here the head runs on
`chunk` positions at a time inside a scan, and the chunk body is rematerialised in the backward pass, so
peak memory holds one [B, chunk, vocab] block.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from yarn_jax.shapes import cdiv, pad_axis


def token_log_probs(hidden, lm_head, targets, *, chunk: int = 1024):
    """log p(targets) [B, T] float32 from hidden states [B, T, E] and the head weight [E, V].

    Equals `take_along_axis(log_softmax(hidden @ lm_head), targets)` (float32 logits, float32
    accumulation) with one [B, chunk, V] block alive at a time.
    """
    b, t, e = hidden.shape
    chunk = min(chunk, t)
    n = cdiv(t, chunk)
    h = pad_axis(hidden, 1, n * chunk).reshape(b, n, chunk, e).swapaxes(0, 1)  # [n, B, chunk, E]
    y = pad_axis(targets, 1, n * chunk).reshape(b, n, chunk).swapaxes(0, 1)  # [n, B, chunk]

    @jax.checkpoint
    def block(hc, yc):
        logits = jnp.einsum("bce,ev->bcv", hc, lm_head.astype(hc.dtype), preferred_element_type=jnp.float32)
        lse = jax.nn.logsumexp(logits, axis=-1)
        return jnp.take_along_axis(logits, yc[..., None], axis=-1)[..., 0] - lse

    out = lax.map(lambda args: block(*args), (h, y))  # [n, B, chunk]
    return out.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]


def mean_nll(hidden, lm_head, targets, mask=None, *, chunk: int = 1024):
    """Mean negative log-likelihood over the positions where mask is true (all when None)."""
    lp = token_log_probs(hidden, lm_head, targets, chunk=chunk)
    if mask is None:
        return -jnp.mean(lp)
    mask = mask.astype(jnp.float32)
    return -jnp.sum(lp * mask) / jnp.maximum(jnp.sum(mask), 1.0)
