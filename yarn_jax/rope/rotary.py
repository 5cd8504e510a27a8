"""Applying the rotation: cos/sin tables from frequencies, and the HF half-split rotation
(pair j is (x_j, x_{j+d/2}); `LlamaRotaryEmbedding` / `apply_rotary_pos_emb`)."""

from __future__ import annotations

import jax.numpy as jnp


def rotary_cos_sin(positions, inv_freq, attention_factor):
    """cos, sin [B, T, d] float32 for integer positions [B, T]; both multiplied by the attention factor."""
    freqs = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, d/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # [B, T, d]
    return jnp.cos(emb) * attention_factor, jnp.sin(emb) * attention_factor


def rotate_half(x):
    """[x1, x2] -> [-x2, x1] on the last axis."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x, cos, sin):
    """Rotate the first d features of x [B, T, H, D] by cos/sin [B, T, d]; the rest pass through.

    Angles come in float32; like HF, cos/sin are cast to x's dtype before the multiply.
    """
    d = cos.shape[-1]
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    if d == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :d], x[..., d:]
    return jnp.concatenate([x_rot * cos + rotate_half(x_rot) * sin, x_pass], axis=-1)
