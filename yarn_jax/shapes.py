"""Small shape helpers shared by the attention kernels and the chunked loss."""

from __future__ import annotations

import jax.numpy as jnp


def cdiv(a: int, b: int) -> int:
    """Ceiling division."""
    return -(-a // b)


def pad_axis(x, axis: int, size: int, value=0):
    """Pad x at the end of `axis` up to `size` with `value`."""
    pad = size - x.shape[axis]
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)
