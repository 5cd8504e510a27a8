"""One way to read a checkpoint of any format: `open_checkpoint(path, step=None) -> Source`.

A `Source` knows its format, model config and tokenizer directory, and reads one parameter at a time in
yarn_jax's layout (stacked over layers, e.g. q_proj [L, E, H, D]) — whole, or one block of it:
  HF directory  -> per-layer tensors through short-lived memory maps; a block reads only its rows/columns
  GGUF file     -> memory-mapped, each tensor dequantized and q/k un-permuted when read
  yarn_jax      -> orbax partial restore of the one parameter (any etils path, e.g. gs://); sharded
                   loading restores each process's shards natively (`Source.restore_sharded`)
Every name and shape is checked against the config when the source is opened, before anything is read.
Whole-model loading, sharded loading, conversion and its verification all read through this; the
format is decided in one place, `checkpoint_format`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Callable, Iterator

import numpy as np
from etils import epath

from yarn_jax.checkpoint.gguf import open_gguf
from yarn_jax.checkpoint.hf import open_hf
from yarn_jax.checkpoint.layout import Layout, Path_, check_tensor_names, read_checked, tensor_map
from yarn_jax.checkpoint.memory import aligned_empty
from yarn_jax.checkpoint.orbax_ckpt import is_orbax_root, is_orbax_step, load_orbax_checkpoint, open_orbax_params
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import CheckpointError

FORMATS = ("hf", "gguf", "orbax")


def checkpoint_format(path: str | os.PathLike) -> str:
    """'orbax' (a yarn_jax checkpoint root or one of its numbered steps), 'gguf' (a .gguf file) or 'hf' (a
    model directory); CheckpointError naming the path for anything else."""
    if is_orbax_step(path) or is_orbax_root(path):
        return "orbax"
    p = epath.Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory (no model hub is used: pass a local HF "
                              "directory, .gguf file or yarn_jax checkpoint; `smollm2` names the bundled "
                              "model, and `yarn-jax assets` prints where it is cached)")
    if p.is_file() and p.name.endswith(".gguf"):
        return "gguf"
    if p.is_dir():
        return "hf"
    raise CheckpointError(f"{p}: expected an HF model directory, a .gguf file or a yarn_jax checkpoint directory")


def orbax_root_step(path, step: int | None = None) -> tuple[Any, int | None]:
    """(ROOT, step) of ROOT or ROOT/<step>; a step given both ways must agree."""
    e = epath.Path(path)
    if not is_orbax_step(path):
        return e, step
    if step is not None and step != int(e.name):
        raise CheckpointError(f"{path} is step {e.name}; --step {step} asks for another")
    return e.parent, int(e.name)


@dataclasses.dataclass
class Source:
    """An open checkpoint: read parameters with `read(layout or param path, index=None, dtype=...)`."""

    kind: str  # one of FORMATS
    path: str
    config: LlamaConfig
    tokenizer_dir: str | None  # where tokenizer.json and friends sit (HF: the directory; GGUF: its folder;
    # yarn_jax: the checkpoint root)
    _whole: Callable[[Layout, np.dtype], np.ndarray]  # one whole parameter, our layout
    _block: Callable[[Layout, tuple, np.dtype], np.ndarray] | None = None  # one block, reading only it
    _restore: Callable[[dict], dict] | None = None
    _cached: tuple = (None, None)

    def layouts(self) -> list[Layout]:
        return tensor_map(self.config)

    def read(self, param: Layout | Path_, index: tuple | None = None, dtype: Any = np.float32) -> np.ndarray:
        """A parameter (Layout or path tuple) in our layout as a host array in `dtype`, or its block
        `index` (a tuple of slices, as `jax.make_array_from_callback` asks). Formats that cannot read a
        block alone read the whole parameter once and cut the blocks from it."""
        t = param if isinstance(param, Layout) else {x.path: x for x in self.layouts()}[tuple(param)]
        dtype = np.dtype(dtype)
        if index is None:
            return self._whole(t, dtype)
        if self._block is not None:
            return self._block(t, tuple(index), dtype)
        if self._cached[0] != (t.path, dtype):  # the blocks of one parameter are asked for in a row
            self._cached = ((t.path, dtype), None)
            self._cached = ((t.path, dtype), self._whole(t, dtype))
        return np.array(self._cached[1][tuple(index)])

    def read_checked(self, t: Layout, dtype: Any = np.float32) -> np.ndarray:
        """The whole parameter, its shape checked against the config and its values finite."""
        return read_checked(t, self.config, lambda t: self.read(t, dtype=dtype), self.path)

    @property
    def restore_sharded(self) -> Callable[[dict], dict] | None:
        """For formats that restore shards natively (orbax): {param path: jax.ShapeDtypeStruct with a
        sharding} -> {param path: jax.Array}, each process reading only its devices' shards."""
        return self._restore


def _whole_from_hf_names(cfg: LlamaConfig, get: Callable[[str], np.ndarray]):
    """whole(layout, dtype) over HF-named tensors: a per-layer parameter is filled (and cast) layer by layer
    into one array — peak is the parameter in the output dtype plus one layer."""
    def whole(t: Layout, dtype) -> np.ndarray:
        if not t.per_layer:
            value = t.to_ours(get(t.name))
            out = aligned_empty(value.shape, dtype)
            out[...] = value
            return out
        out = aligned_empty(t.our_shape(cfg.num_hidden_layers), dtype)
        for i in range(cfg.num_hidden_layers):
            out[i] = t.to_ours(get(t.name.format(i=i)))
        return out
    return whole


class _Tensor:
    """`tensor[index]` reads of one tensor of a safetensors file (what `Layout.read` slices)."""

    def __init__(self, file, name: str):
        self.file, self.name = file, name

    def __getitem__(self, index):
        return self.file.read(self.name, index)


@contextlib.contextmanager
def open_checkpoint(path: str | os.PathLike, step: int | None = None) -> Iterator[Source]:
    """Context: the `Source` of an HF directory, a .gguf file or a yarn_jax checkpoint (ROOT: its latest
    complete step, or `step`; or ROOT/<step>)."""
    path = os.fspath(path)
    kind = checkpoint_format(path)
    if kind == "orbax":
        root, step = orbax_root_step(path, step)
        with open_orbax_params(root, step) as (cfg, read_param, step):
            def restore(targets: dict) -> dict:
                return load_orbax_checkpoint(root, step, target=lambda _: targets)[1]

            yield Source("orbax", path, cfg, os.fspath(root), lambda t, dtype: read_param(t.path, dtype),
                         _restore=restore)
        return
    if step is not None:
        raise CheckpointError(f"--step applies to yarn_jax (orbax) checkpoints; {path} is not one")
    p = epath.Path(path)
    if kind == "gguf":  # memory-mapped: local files
        config, shapes, loaders = open_gguf(os.fspath(p))
        cfg = LlamaConfig.from_hf_dict(config, where=f"{p} (GGUF metadata)")
        check_tensor_names(cfg, shapes, str(p))
        yield Source("gguf", str(p), cfg, str(p.parent), _whole_from_hf_names(cfg, lambda n: loaders[n]()))
        return
    cfg, files = open_hf(p)  # HF directories may be remote (gs://...)

    def block(t: Layout, index: tuple, dtype) -> np.ndarray:
        if not t.per_layer:
            return t.read(_Tensor(files[t.name], t.name), index).astype(dtype)
        names = [t.name.format(i=i) for i in range(*index[0].indices(cfg.num_hidden_layers))]
        return np.stack([t.read(_Tensor(files[n], n), index[1:]).astype(dtype) for n in names])

    yield Source("hf", str(p), cfg, str(p), _whole_from_hf_names(cfg, lambda n: files[n].read(n)), block)


def read_config(path: str | os.PathLike) -> LlamaConfig:
    """The model configuration of a checkpoint (any format), without reading its weights (an HF directory
    needs only its config.json)."""
    kind = checkpoint_format(path)
    if kind == "hf":
        return LlamaConfig.from_json_file(epath.Path(path) / "config.json")
    with open_checkpoint(path) as source:
        return source.config


def load_checkpoint(path: str | os.PathLike, step: int | None = None) -> tuple[LlamaConfig, dict[Path_, np.ndarray]]:
    """(LlamaConfig, {param path: float32 numpy array}) of any checkpoint, every parameter checked to be
    finite and of the config's shape."""
    with open_checkpoint(path, step) as source:
        return source.config, {t.path: source.read_checked(t) for t in source.layouts()}
