"""HF checkpoint directories (config.json + safetensors) <-> yarn_jax parameters.

Reading goes tensor by tensor through safetensors' numpy API (no torch). Names and shapes are checked
against the config before any tensor is converted; errors name the tensor and file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from yarn_jax.config import LlamaConfig
from yarn_jax.errors import CheckpointError

# Buffers some HF checkpoints carry that hold no parameters (recomputed from the config).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")

Path_ = tuple[str, ...]


class Layout(NamedTuple):
    """One tensor: our param path, HF name (`{i}` = layer index), HF shape, and how ours derives from it:
    ours = hf.reshape(view).transpose(perm) (HF's nn.Linear [out, in] transposed, heads split out)."""

    path: Path_
    name: str
    hf_shape: tuple[int, ...]
    view: tuple[int, ...]
    perm: tuple[int, ...]

    def to_ours(self, w: np.ndarray) -> np.ndarray:
        return w.reshape(self.view).transpose(self.perm)

    def to_hf(self, a: np.ndarray) -> np.ndarray:
        return a.transpose(np.argsort(self.perm)).reshape(self.hf_shape)

    def read(self, tensor, index: tuple[slice, ...]) -> np.ndarray:
        """ours[index] reading only the HF rows/columns it needs from `tensor` (anything sliceable like a
        safetensors slice). A view dim split out of an HF dim (heads out of heads*head_dim) is read as the
        contiguous range of its first part; later parts are cut in memory."""
        view_index = [slice(None)] * len(self.view)
        for i, p in enumerate(self.perm):
            view_index[p] = index[i]
        hf_index, fine, local_view, v = [], [], [], 0
        for size in self.hf_shape:
            group = [v]
            while np.prod([self.view[g] for g in group]) < size:
                group.append(group[-1] + 1)
            v = group[-1] + 1
            rest = int(np.prod([self.view[g] for g in group[1:]]))
            start, stop, _ = view_index[group[0]].indices(self.view[group[0]])
            hf_index.append(slice(start * rest, stop * rest))
            local_view += [stop - start] + [self.view[g] for g in group[1:]]
            fine += [slice(None)] + [view_index[g] for g in group[1:]]
        block = np.asarray(tensor[tuple(hf_index)]).reshape(local_view)
        return block[tuple(fine)].transpose(self.perm)


def tensor_map(cfg: LlamaConfig) -> list[Layout]:
    """The layout of every tensor of a config's checkpoint."""
    e, h, k, d, f, v = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                        cfg.intermediate_size, cfg.vocab_size)
    rows = [
        Layout(("embed_tokens",), "model.embed_tokens.weight", (v, e), (v, e), (0, 1)),
        Layout(("final_norm", "weight"), "model.norm.weight", (e,), (e,), (0,)),
        Layout(("layers", "input_norm", "weight"), "model.layers.{i}.input_layernorm.weight", (e,), (e,), (0,)),
        Layout(("layers", "post_attention_norm", "weight"), "model.layers.{i}.post_attention_layernorm.weight",
               (e,), (e,), (0,)),
        # q [H*D, E] -> [E, H, D]; o [E, H*D] -> [H, D, E]; MLP [out, in] -> [in, out]
        Layout(("layers", "q_proj"), "model.layers.{i}.self_attn.q_proj.weight", (h * d, e), (h, d, e), (2, 0, 1)),
        Layout(("layers", "k_proj"), "model.layers.{i}.self_attn.k_proj.weight", (k * d, e), (k, d, e), (2, 0, 1)),
        Layout(("layers", "v_proj"), "model.layers.{i}.self_attn.v_proj.weight", (k * d, e), (k, d, e), (2, 0, 1)),
        Layout(("layers", "o_proj"), "model.layers.{i}.self_attn.o_proj.weight", (e, h * d), (e, h, d), (1, 2, 0)),
        Layout(("layers", "gate_proj"), "model.layers.{i}.mlp.gate_proj.weight", (f, e), (f, e), (1, 0)),
        Layout(("layers", "up_proj"), "model.layers.{i}.mlp.up_proj.weight", (f, e), (f, e), (1, 0)),
        Layout(("layers", "down_proj"), "model.layers.{i}.mlp.down_proj.weight", (e, f), (e, f), (1, 0)),
    ]
    if not cfg.tie_word_embeddings:
        rows.append(Layout(("lm_head",), "lm_head.weight", (v, e), (v, e), (1, 0)))
    return rows


def expected_hf_names(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    names = {}
    for t in tensor_map(cfg):
        layers = range(cfg.num_hidden_layers) if "{i}" in t.name else [None]
        for i in layers:
            names[t.name.format(i=i)] = t.hf_shape
    return names


def check_tensor_names(cfg: LlamaConfig, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raise CheckpointError naming missing, unexpected or mis-shaped tensors."""
    expected = expected_hf_names(cfg)
    present = {n for n in shapes if not n.endswith(_IGNORED_SUFFIXES)}
    if cfg.tie_word_embeddings:
        present.discard("lm_head.weight")  # some tied checkpoints store the copy anyway
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected))
    if missing:
        raise CheckpointError(f"{source}: missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''} "
                              f"({len(missing)} in all)")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensors {unexpected[:8]}"
                              f"{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)} in all)")
    for name, shape in expected.items():
        if tuple(shapes[name]) != tuple(shape):
            raise CheckpointError(f"{source}: tensor '{name}' has shape {tuple(shapes[name])}, "
                                  f"expected {tuple(shape)} from the config")


def hf_to_params(cfg: LlamaConfig, get: Callable[[str], np.ndarray]) -> dict[Path_, np.ndarray]:
    """Convert HF-named tensors (fetched one at a time by `get`) into our params, per-layer ones stacked."""
    params = {}
    for t in tensor_map(cfg):
        if "{i}" in t.name:
            params[t.path] = np.stack([t.to_ours(get(t.name.format(i=i))) for i in range(cfg.num_hidden_layers)])
        else:
            params[t.path] = t.to_ours(get(t.name))
    return params


def params_to_hf(cfg: LlamaConfig, params: Mapping[Path_, np.ndarray]) -> dict[str, np.ndarray]:
    """Our params -> HF-named tensors (contiguous numpy arrays)."""
    out = {}
    for t in tensor_map(cfg):
        value = np.asarray(params[t.path])
        if "{i}" in t.name:
            for i in range(cfg.num_hidden_layers):
                out[t.name.format(i=i)] = np.ascontiguousarray(t.to_hf(value[i]))
        else:
            out[t.name] = np.ascontiguousarray(t.to_hf(value))
    return out


def safetensors_files(directory: Path) -> list[Path]:
    """The safetensors files of an HF directory (single file or sharded with an index)."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        files = sorted({directory / f for f in weight_map.values()})
        for f in files:
            if not f.exists():
                raise CheckpointError(f"{index}: lists shard '{f.name}', which does not exist")
        return files
    single = directory / "model.safetensors"
    if single.exists():
        return [single]
    if list(directory.glob("*.bin")) or list(directory.glob("*.pt")):
        raise CheckpointError(f"{directory}: only pickle checkpoints (*.bin/*.pt) found; yarn_jax reads "
                              "safetensors only (never unpickles). Convert with transformers' save_pretrained.")
    raise CheckpointError(f"{directory}: no model.safetensors or model.safetensors.index.json")


class TensorFile:
    """Reads of one safetensors file, each through its own short-lived memory map.

    safetensors' `safe_open` keeps the whole file mapped while open, and every page a read touches stays
    resident (and counted in the process's RSS) until it closes — reading a model's shards through it
    costs the whole file in host memory. Here each read maps just its tensor, copies the block asked for,
    and unmaps: peak memory stays at the blocks kept plus one tensor. Offsets come from the file's header
    (8-byte little-endian length, then JSON: dtype, shape, data_offsets per tensor).
    """

    DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}

    def __init__(self, path: Path):
        import ml_dtypes

        self.path = path
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        self.base = 8 + n
        self.entries = {}
        for name, h in header.items():
            dt = self.DTYPES[h["dtype"]]
            self.entries[name] = (ml_dtypes.bfloat16 if dt == "bfloat16" else np.dtype(dt), tuple(h["shape"]),
                                  h["data_offsets"][0])

    def read(self, name: str, index=...) -> np.ndarray:
        """tensor[index] as a new array (only the pages of the tensor that hold the block are touched)."""
        dtype, shape, start = self.entries[name]
        if not shape or 0 in shape:
            return np.zeros(shape, dtype)[index]
        mm = np.memmap(self.path, dtype=dtype, mode="r", offset=self.base + start, shape=shape)
        try:
            return np.array(mm[index])
        finally:
            mm._mmap.close()


@contextlib.contextmanager
def open_hf_checkpoint(path: str | os.PathLike):
    """Context: (config, {HF tensor name: its TensorFile}) of an HF directory, every name and shape checked
    against the config first. Read a tensor with `files[name].read(name)`, a block of it with
    `files[name].read(name, (rows, cols))` (only those pages are touched)."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    cfg = LlamaConfig.from_json_file(directory / "config.json")
    files = safetensors_files(directory)
    where: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as st:  # validates the header and the file's size
                for name in st.keys():
                    where[name] = f
                    shapes[name] = tuple(st.get_slice(name).get_shape())
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{f}: cannot read safetensors header ({e})") from None
    check_tensor_names(cfg, shapes, str(directory))
    readers = {f: TensorFile(f) for f in files}
    yield cfg, {name: readers[f] for name, f in where.items()}


def load_hf_checkpoint(path: str | os.PathLike) -> tuple[LlamaConfig, dict[Path_, np.ndarray]]:
    """HF directory -> (config, params as numpy arrays keyed by our param paths)."""
    with open_hf_checkpoint(path) as (cfg, files):
        return cfg, hf_to_params(cfg, lambda name: files[name].read(name))


def save_hf_checkpoint(
    path: str | os.PathLike,
    cfg: LlamaConfig,
    params: Mapping[Path_, np.ndarray],
    *,
    dtype: str = "float32",
    tokenizer_dir: str | os.PathLike | None = None,
    max_shard_bytes: int = 5 * 2**30,
) -> Path:
    """Write an HF directory (config.json with the rope used, safetensors, tokenizer files) atomically.

    Shards above `max_shard_bytes` with a `model.safetensors.index.json`, as transformers does.
    """
    import ml_dtypes

    np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    config = cfg.to_hf_dict()
    config["torch_dtype"] = dtype
    tensors = {k: v.astype(np_dtype) for k, v in params_to_hf(cfg, params).items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        shards, current, size = [], {}, 0
        for name in tensors:
            nbytes = tensors[name].nbytes
            if current and size + nbytes > max_shard_bytes:
                shards.append(current)
                current, size = {}, 0
            current[name] = tensors[name]
            size += nbytes
        shards.append(current)
        if len(shards) == 1:
            save_file(shards[0], str(tmp / "model.safetensors"), metadata={"format": "pt"})
        else:
            weight_map = {}
            for n, shard in enumerate(shards, 1):
                fname = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / fname), metadata={"format": "pt"})
                weight_map.update({name: fname for name in shard})
            total = sum(t.nbytes for t in tensors.values())
            (tmp / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        if tokenizer_dir is not None:
            for fname in TOKENIZER_FILES:
                src = Path(tokenizer_dir) / fname
                if src.exists():
                    shutil.copy2(src, tmp / fname)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
