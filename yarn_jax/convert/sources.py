"""Checkpoints read one parameter at a time, whatever their format.

A `Source` yields each parameter in yarn_jax's layout (stacked over layers, e.g. q_proj [L, E, H, D]) only
when asked, so a converter holds one parameter at a time:
  HF directory  -> per-layer tensors read through short-lived memory maps (`checkpoint.hf.TensorFile`)
  GGUF file     -> memory-mapped, each tensor dequantized and q/k un-permuted when read
  yarn_jax      -> orbax partial restore of the one parameter (any etils path, e.g. gs://)
Every name and shape is checked against the config when the source is opened, before anything is read.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from yarn_jax.checkpoint.gguf import open_gguf
from yarn_jax.checkpoint.hf import Layout, check_tensor_names, open_hf_checkpoint, tensor_map
from yarn_jax.checkpoint.memory import aligned_empty
from yarn_jax.checkpoint.orbax_ckpt import is_orbax_root, is_orbax_step, open_orbax_params
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import CheckpointError


@dataclass
class Source:
    kind: str  # "hf" | "gguf" | "orbax"
    path: str
    cfg: LlamaConfig
    tokenizer_dir: str | None
    read: Callable[[Layout], np.ndarray]  # one parameter, our layout ([L, ...] for per-layer ones)

    def layouts(self) -> list[Layout]:
        return tensor_map(self.cfg)


def _from_hf_names(cfg: LlamaConfig, get: Callable[[str], np.ndarray], dtype) -> Callable[[Layout], np.ndarray]:
    """read(layout) over HF-named tensors, in `dtype`; a per-layer parameter is filled (and cast) layer by
    layer into one array: peak is the parameter in the output dtype plus one layer."""
    def read(t: Layout) -> np.ndarray:
        if "{i}" not in t.name:
            value = t.to_ours(get(t.name))
            out = aligned_empty(value.shape, dtype)
            out[...] = value
            return out
        out = aligned_empty(t.our_shape(cfg.num_hidden_layers), dtype)
        for i in range(cfg.num_hidden_layers):
            out[i] = t.to_ours(get(t.name.format(i=i)))
        return out
    return read


def source_kind(path: str) -> str:
    if is_orbax_step(path) or is_orbax_root(path):
        return "orbax"
    if os.fspath(path).endswith(".gguf"):
        return "gguf"
    return "hf"


@contextlib.contextmanager
def open_source(path: str | os.PathLike, step: int | None = None, dtype: str = "float32"):
    """Context: the `Source` of an HF directory, a .gguf file or a yarn_jax checkpoint (ROOT, its latest
    complete step or `step`; or ROOT/<step>), reading parameters in `dtype`."""
    from etils import epath

    from yarn_jax.checkpoint.hf import np_dtype

    path = os.fspath(path)
    target = np_dtype(dtype)
    kind = source_kind(path)
    if kind == "orbax":
        e = epath.Path(path)
        root, step = (e.parent, int(e.name)) if is_orbax_step(path) else (e, step)
        with open_orbax_params(root, step) as (cfg, read_param):
            yield Source("orbax", path, cfg, os.fspath(root), lambda t: read_param(t.path, target))
        return
    p = epath.Path(path)  # HF directories may be remote (gs://...); GGUF files are memory-mapped: local
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    if step is not None:
        raise CheckpointError(f"--step applies to yarn_jax (orbax) checkpoints; {p} is not one")
    if kind == "gguf":
        config, shapes, loaders = open_gguf(os.fspath(p))
        cfg = LlamaConfig.from_hf_dict(config, where=f"{p} (GGUF metadata)")
        check_tensor_names(cfg, shapes, str(p))
        yield Source("gguf", str(p), cfg, str(p.parent), _from_hf_names(cfg, lambda n: loaders[n](), target))
        return
    if not p.is_dir():
        raise CheckpointError(f"{p}: expected an HF model directory, a .gguf file or a yarn_jax checkpoint")
    with open_hf_checkpoint(p) as (cfg, files):
        yield Source("hf", str(p), cfg, str(p), _from_hf_names(cfg, lambda n: files[n].read(n), target))
