"""One attention entry point with selectable backends.

`attention(q, k, v, ...)` takes q [B, T, H, D] and k/v [B, S, K, D] (GQA: H a multiple of K) and returns
[B, T, H, D]. The YaRN temperature is already folded into q and k by the rotary (cos/sin times the
attention factor), so every backend is a plain scaled-dot-product attention.
"""

from __future__ import annotations

from yarn_jax.attention.reference import reference_attention
from yarn_jax.errors import ConfigError

BACKENDS = {"reference": reference_attention}


def attention(q, k, v, *, backend: str = "reference", causal: bool = True, q_segment_ids=None,
              kv_segment_ids=None, scale=None):
    """Scaled-dot-product attention through the backend named by `backend`."""
    if backend not in BACKENDS:
        raise ConfigError(f"attention backend {backend!r} is not available; choose from {sorted(BACKENDS)}")
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ConfigError("attention: pass both q_segment_ids and kv_segment_ids, or neither")
    return BACKENDS[backend](q, k, v, causal=causal, q_segment_ids=q_segment_ids,
                             kv_segment_ids=kv_segment_ids, scale=scale)


__all__ = ["attention", "reference_attention", "BACKENDS"]
