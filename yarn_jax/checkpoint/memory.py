"""Host-memory helpers for streaming one tensor at a time."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

import numpy as np

_libc = None


def aligned_empty(shape, dtype, alignment: int = 64) -> np.ndarray:
    """np.empty with its data aligned to `alignment` bytes, so that jax.device_put on CPU can alias it
    instead of copying (XLA wants 64-byte alignment; numpy gives 16)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + nbytes].view(dtype).reshape(shape)


GC_BYTES = 16 << 20  # a full garbage collection costs 0.1-0.5 s in a large heap: worth it only past this


def release_host_memory(nbytes: int) -> None:
    """After streaming a tensor of `nbytes`: return freed heap memory to the OS (glibc's malloc_trim; a no-op
    elsewhere). Between tensors of a stream, without it the many threads' malloc arenas keep the freed
    buffers and the resident size creeps up by about one tensor per few tensors. Large tensors also get a
    garbage collection (for buffers held by reference cycles); small ones skip its fixed cost."""
    global _libc
    if nbytes >= GC_BYTES:
        gc.collect()
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name) if name else False
    if _libc and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)
