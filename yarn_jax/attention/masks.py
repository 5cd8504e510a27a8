"""Attention masks as descriptions, not arrays: which key positions a query position sees.

Every backend takes a `Mask` and realises it its own way — the reference builds the dense [T, S] mask,
blockwise bounds its tile loops by `lowest_key` / `highest_query` and masks only the tiles that cross an
edge, splash evaluates it in its kernel at each query's position. Positions are key indices: query i sits
at key position i + q_offset, or at q_positions[i] when a load-balanced shard's queries are not contiguous
(segment ids restrict further; a packed segment is contiguous, so a window over indices is a window over
its positions).
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

    def sees(self, q, k):
        """Elementwise (broadcasting): whether query position q sees key position k. numpy or jax arrays —
        splash evaluates it inside its kernel."""
        ok = k <= q
        if not self.causal:
            return ok | True
        return ok & (k >= self.lowest_key(q)) if self.banded else ok

    def allowed(self, q_pos, k_pos):
        """Boolean [Tq, Sk] from query positions [Tq] and key positions [Sk]."""
        return self.sees(q_pos[:, None], k_pos[None, :])

    def describe(self) -> str:
        if self.window is not None:
            return f"sliding window {self.window}"
        if self.chunk is not None:
            return f"chunks of {self.chunk}"
        return "causal" if self.causal else "full"


def query_positions(t: int, s: int, q_offset=None, q_positions=None):
    """[T] int32 key positions of the queries: `q_positions` as given, else query i at i + q_offset (default
    S - T: the queries are the last T keys)."""
    if q_positions is not None:
        if q_offset is not None:
            raise ValueError("attention: give q_offset or q_positions, not both")
        return jnp.asarray(q_positions, jnp.int32)
    return jnp.arange(t, dtype=jnp.int32) + jnp.asarray(s - t if q_offset is None else q_offset, jnp.int32)


CAUSAL = Mask()
FULL = Mask(causal=False)
