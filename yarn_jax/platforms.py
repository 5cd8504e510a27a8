"""Which jax platforms a command starts: libtpu installed on a machine without a TPU (for ahead-of-time
compilation) would make jax try a TPU first and print libtpu's initialisation errors on every command."""

from __future__ import annotations

import glob
import importlib.util
import os


def tpu_attached() -> bool:
    """A TPU VM exposes its chips as /dev/accel* (v2-v5e) or /dev/vfio/<n> (v5p, v6e)."""
    return bool(glob.glob("/dev/accel*") or [p for p in glob.glob("/dev/vfio/*") if os.path.basename(p).isdigit()])


def skip_absent_tpu() -> None:
    """With libtpu installed, no TPU attached and no platform chosen (JAX_PLATFORMS), leave the TPU
    out of the platforms jax starts. Call before jax initialises a backend."""
    if os.environ.get("JAX_PLATFORMS") or tpu_attached() or importlib.util.find_spec("libtpu") is None:
        return
    import jax

    if jax.config.jax_platforms:
        return
    gpu = glob.glob("/dev/nvidia[0-9]*") and any(importlib.util.find_spec(p) is not None
                                                 for p in ("jax_cuda12_plugin", "jax_cuda13_plugin"))
    jax.config.update("jax_platforms", "cuda,cpu" if gpu else "cpu")
