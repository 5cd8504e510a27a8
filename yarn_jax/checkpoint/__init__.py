"""Checkpoint formats: HF directories (safetensors), GGUF files and yarn_jax (orbax) checkpoints, all
to/from our param dicts."""

from __future__ import annotations

import os
from pathlib import Path

from yarn_jax.checkpoint.gguf import load_gguf_checkpoint, open_gguf, read_gguf
from yarn_jax.checkpoint.hf import check_finite, load_hf_checkpoint, save_hf_checkpoint
from yarn_jax.checkpoint.orbax_ckpt import (is_orbax_root, is_orbax_step, load_orbax_checkpoint, open_orbax_params,
                                           save_orbax_checkpoint)
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import CheckpointError


def load_checkpoint(path: str | os.PathLike):
    """An HF directory, a `.gguf` file or a yarn_jax checkpoint directory (orbax; its latest complete
    step, or `ROOT/<step>` for a given one) -> (LlamaConfig, {param path: numpy array}), every parameter
    checked to be finite."""
    cfg, params = _load(path)
    for name, value in params.items():
        check_finite(value, "/".join(name), str(path))
    return cfg, params


def read_config(path: str | os.PathLike) -> LlamaConfig:
    """The model configuration of a checkpoint (any format), without reading its weights."""
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return LlamaConfig.from_hf_dict(open_gguf(p)[0], where=str(p))
    if is_orbax_step(p) or (p.is_dir() and is_orbax_root(p)):
        root, step = (p.parent, int(p.name)) if is_orbax_step(p) else (p, None)
        with open_orbax_params(root, step) as (cfg, _):
            return cfg
    if p.is_dir():
        return LlamaConfig.from_json_file(p / "config.json")
    _missing(p)


def _load(path):
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return load_gguf_checkpoint(p)
    if is_orbax_step(p):
        return load_orbax_checkpoint(p.parent, int(p.name))
    if p.is_dir() and is_orbax_root(p):
        return load_orbax_checkpoint(p)
    if p.is_dir():
        return load_hf_checkpoint(p)
    _missing(p)


def _missing(p: Path):
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory (model hubs are not used: pass a local HF "
                              "directory or .gguf file; `python -m yarn_jax.assets` fetches SmolLM2)")
    raise CheckpointError(f"{p}: expected an HF model directory, a .gguf file or a yarn_jax checkpoint directory")


__all__ = ["load_checkpoint", "read_config", "load_hf_checkpoint", "save_hf_checkpoint", "load_gguf_checkpoint", "read_gguf",
           "load_orbax_checkpoint", "save_orbax_checkpoint", "is_orbax_step"]
