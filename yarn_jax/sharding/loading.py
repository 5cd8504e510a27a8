"""Checkpoints loaded straight into their shards.

Every parameter is built with `jax.make_array_from_callback`: the callback is asked only for the blocks
this process's devices hold, and reads just those rows/columns from the safetensors files (HF
directories) — the whole model never sits on one device or in one host buffer. yarn_jax (orbax)
checkpoints restore each process's shards natively. GGUF files are dequantized per tensor on the host
first (their quantized blocks are not addressable by row), then cut into shards.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from yarn_jax.checkpoint import is_orbax_root, is_orbax_step, load_gguf_checkpoint, load_orbax_checkpoint
from yarn_jax.checkpoint.hf import check_finite, open_hf_checkpoint, tensor_map
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import CheckpointError
from yarn_jax.model import Llama, as_dtype, model_params, state_from_flat
from yarn_jax.sharding.params import tree_shardings
from yarn_jax.sharding.rules import Sharder


def abstract_model(cfg: LlamaConfig, **model_kwargs):
    """(graphdef, abstract param state) of a Llama, without allocating it."""
    return nnx.split(nnx.eval_shape(lambda: Llama(cfg, **model_kwargs)))


def _fill(graphdef, abstract, arrays) -> Llama:
    return nnx.merge(graphdef, state_from_flat(abstract, arrays))


def _targets(abstract, sharder: Sharder, dtype) -> dict:
    """{param path: (shape, NamedSharding)}."""
    shardings = nnx.to_flat_state(tree_shardings(abstract, sharder))
    shapes = dict(nnx.to_flat_state(abstract))
    return {tuple(p): (tuple(shapes[p].shape), s.get_value()) for p, s in shardings}


class _Block:
    """`tensor[index]` reads of one tensor of a TensorFile (what `Layout.read` slices)."""

    def __init__(self, file, name: str):
        self.file, self.name = file, name

    def __getitem__(self, index):
        return self.file.read(self.name, index)


def load_sharded(path: str | os.PathLike, sharder: Sharder, *, param_dtype="float32", **model_kwargs):
    """(LlamaConfig, Llama) with every parameter a jax.Array sharded over `sharder`'s mesh by its logical
    names. Reads an HF directory (by slices), a yarn_jax checkpoint (by shards) or a .gguf file.
    `model_kwargs` go to `Llama` (dtype, attention_backend, remat). Every parameter is checked to be finite
    (a reduction over its shards)."""
    cfg, module = _load_sharded(path, sharder, param_dtype=param_dtype, **model_kwargs)
    for name, value in model_params(module).items():
        check_finite(value, "/".join(name), str(path))
    return cfg, module


def _load_sharded(path, sharder: Sharder, *, param_dtype="float32", **model_kwargs):
    from etils import epath

    pdt = as_dtype(param_dtype)
    kwargs = dict(model_kwargs, param_dtype=pdt)
    if is_orbax_step(path) or is_orbax_root(path):  # local or any etils path (gs://...)
        e = epath.Path(path)
        root, step = (e.parent, int(e.name)) if is_orbax_step(path) else (e, None)
        box = {}

        def target(cfg):
            box["model"] = abstract_model(cfg, **kwargs)
            return {k: jax.ShapeDtypeStruct(shape, pdt, sharding=s)
                    for k, (shape, s) in _targets(box["model"][1], sharder, pdt).items()}

        cfg, arrays = load_orbax_checkpoint(root, step, target=target)
        return cfg, _fill(*box["model"], arrays)
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        cfg, host = load_gguf_checkpoint(p)
        graphdef, abstract = abstract_model(cfg, **kwargs)
        arrays = {k: jax.make_array_from_callback(shape, s, lambda idx, a=host[k]: a[idx].astype(pdt))
                  for k, (shape, s) in _targets(abstract, sharder, pdt).items()}
        return cfg, _fill(graphdef, abstract, arrays)
    if not p.is_dir():
        raise CheckpointError(f"{p}: expected an HF model directory, a .gguf file or a yarn_jax checkpoint")
    with open_hf_checkpoint(p) as (cfg, files):
        graphdef, abstract = abstract_model(cfg, **kwargs)
        targets = _targets(abstract, sharder, pdt)
        arrays = {}
        for t in tensor_map(cfg):
            shape, sharding = targets[t.path]

            def read(index, t=t):
                if "{i}" not in t.name:
                    return t.read(_Block(files[t.name], t.name), index).astype(pdt)
                layers = range(*index[0].indices(cfg.num_hidden_layers))
                names = [t.name.format(i=i) for i in layers]
                return np.stack([t.read(_Block(files[n], n), index[1:]).astype(pdt) for n in names])

            arrays[t.path] = jax.make_array_from_callback(shape, sharding, read)
        return cfg, _fill(graphdef, abstract, arrays)
