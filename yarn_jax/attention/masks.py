"""Attention masks as descriptions, not arrays: which key positions a query position sees.

Every backend takes a `Mask` and realises it its own way — the reference builds the dense [T, S] mask,
blockwise bounds its tile loops by `lowest_key` / `highest_query` and masks only the tiles that cross an
edge, splash maps it to its `CausalMask` / `LocalMask` / `ChunkedCausalMask`. Positions are key indices:
query i sits at key position i + q_offset (segment ids restrict further; a packed segment is contiguous,
so a window over indices is a window over its positions).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from yarn_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Mask:
    """Query position p sees key position j when lowest_key(p) <= j <= p (causal; without `causal`
    every key). `window`: a sliding window of that many keys ending at the query, j > p - window (HF's
    `sliding_window_overlay`, Mistral's `sliding_window`). `chunk`: keys in the query's chunk of that many
    positions, j // chunk == p // chunk (HF's `chunked_overlay` without left padding; Llama 4)."""

    causal: bool = True
    window: int | None = None
    chunk: int | None = None

    def __post_init__(self):
        for name in ("window", "chunk"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"attention mask {name}={value!r} must be a positive integer")
        if self.window is not None and self.chunk is not None:
            raise ConfigError("attention mask: give a sliding window or chunks, not both")
        if not self.causal and (self.window is not None or self.chunk is not None):
            raise ConfigError("attention mask: sliding windows and chunks are causal")

    @property
    def banded(self) -> bool:
        """Whether queries lose keys on the left (a window or chunks)."""
        return self.window is not None or self.chunk is not None

    def lowest_key(self, p):
        """The first key position query position p sees (p may be an array, traced or not)."""
        if self.window is not None:
            return p - self.window + 1
        if self.chunk is not None:
            return (p // self.chunk) * self.chunk
        return 0 * p

    def highest_query(self, j):
        """The last query position that sees key position j (only for banded masks)."""
        if self.window is not None:
            return j + self.window - 1
        return (j // self.chunk + 1) * self.chunk - 1

    def allowed(self, q_pos, k_pos):
        """Boolean [..., Tq, Sk] from query positions [Tq] and key positions [Sk]."""
        q, k = q_pos[:, None], k_pos[None, :]
        if not self.causal:
            return jnp.ones((q_pos.shape[0], k_pos.shape[0]), bool)
        ok = k <= q
        if self.banded:
            ok = ok & (k >= self.lowest_key(q))
        return ok

    def describe(self) -> str:
        if self.window is not None:
            return f"sliding window {self.window}"
        if self.chunk is not None:
            return f"chunks of {self.chunk}"
        return "causal" if self.causal else "full"


CAUSAL = Mask()
FULL = Mask(causal=False)
