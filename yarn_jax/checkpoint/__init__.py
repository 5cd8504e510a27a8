"""Checkpoint formats: HF directories (safetensors) and GGUF files, both to/from our param dicts."""

from __future__ import annotations

import os
from pathlib import Path

from yarn_jax.checkpoint.gguf import load_gguf_checkpoint, read_gguf
from yarn_jax.checkpoint.hf import load_hf_checkpoint, save_hf_checkpoint
from yarn_jax.errors import CheckpointError


def load_checkpoint(path: str | os.PathLike):
    """An HF directory or a `.gguf` file -> (LlamaConfig, {param path: numpy array})."""
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return load_gguf_checkpoint(p)
    if p.is_dir():
        return load_hf_checkpoint(p)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory (model hubs are not used: pass a local HF "
                              "directory or .gguf file; `python -m yarn_jax.assets` fetches SmolLM2)")
    raise CheckpointError(f"{p}: expected an HF model directory or a .gguf file")


__all__ = ["load_checkpoint", "load_hf_checkpoint", "save_hf_checkpoint", "load_gguf_checkpoint", "read_gguf"]
