"""HF checkpoint directories (config.json + safetensors) <-> yarn_jax parameters.

Reading goes tensor by tensor through safetensors' numpy API (no torch). Names and shapes are checked
against the config before any tensor is converted; errors name the tensor and file.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path
from typing import Callable, Iterable, Mapping, NamedTuple

import numpy as np

from yarn_jax.checkpoint.memory import aligned_empty, release_host_memory
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import CheckpointError, OutputError
from yarn_jax.outputs import Staging, check_replaceable, lock

# Buffers some HF checkpoints carry that hold no parameters (recomputed from the config).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja")

Path_ = tuple[str, ...]


class Layout(NamedTuple):
    """One tensor: our param path, HF name (`{i}` = layer index), HF shape, and how ours derives from it:
    ours = hf.reshape(view).transpose(perm) (HF's nn.Linear [out, in] transposed, heads split out)."""

    path: Path_
    name: str
    hf_shape: tuple[int, ...]
    view: tuple[int, ...]
    perm: tuple[int, ...]

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.name

    def hf_names(self, num_layers: int) -> list[tuple[int | None, str]]:
        """[(layer, HF tensor name)]: one per layer for a per-layer parameter, else [(None, name)]."""
        if not self.per_layer:
            return [(None, self.name)]
        return [(i, self.name.format(i=i)) for i in range(num_layers)]

    def our_shape(self, num_layers: int) -> tuple[int, ...]:
        """Our parameter's shape ([L, ...] for per-layer ones)."""
        shape = tuple(self.view[p] for p in self.perm)
        return (num_layers,) + shape if self.per_layer else shape

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
    return {name: t.hf_shape for t in tensor_map(cfg) for _, name in t.hf_names(cfg.num_hidden_layers)}


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
        if t.per_layer:
            params[t.path] = np.stack([t.to_ours(get(t.name.format(i=i))) for i in range(cfg.num_hidden_layers)])
        else:
            params[t.path] = t.to_ours(get(t.name))
    return params


def params_to_hf(cfg: LlamaConfig, params: Mapping[Path_, np.ndarray]) -> dict[str, np.ndarray]:
    """Our params -> HF-named tensors (contiguous numpy arrays)."""
    out = {}
    for t in tensor_map(cfg):
        value = np.asarray(params[t.path])
        if t.per_layer:
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
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({type(e).__name__}: {e})") from None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: 'weight_map' is not an object")
        names = set()
        for tensor, fname in weight_map.items():
            # a plain file name inside the directory: no separators, no '..', not absolute
            if (not isinstance(fname, str) or fname in ("", ".", "..") or "/" in fname or "\\" in fname
                    or "\0" in fname or not fname.endswith(".safetensors")):
                raise CheckpointError(f"{index}: tensor '{tensor}' is mapped to {fname!r}, which is not a "
                                      ".safetensors file name inside the model directory")
            names.add(fname)
        files = [directory / f for f in sorted(names)]
        for f in files:
            if not f.exists():
                raise CheckpointError(f"{index}: lists shard '{f.name}', which does not exist")
        return files
    single = directory / "model.safetensors"
    if single.exists():
        return [single]
    pickles = sorted(p.name for pattern in ("*.bin", "*.pt", "*.pth") for p in directory.glob(pattern))
    if pickles:
        raise CheckpointError(
            f"{directory}: weights only in pickle format ({', '.join(pickles[:4])}{' ...' if len(pickles) > 4 else ''}); "
            "yarn_jax never unpickles (a pickle can run code). Convert them to safetensors once, where you trust "
            "the file: python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{directory}').save_pretrained('{directory}-safetensors')\" "
            "(transformers writes safetensors by default)")
    raise CheckpointError(f"{directory}: no model.safetensors or model.safetensors.index.json")


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


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

    def __init__(self, path):
        """Parse and validate the header (dtypes, shapes, offsets, file size); path: a pathlib or etils path
        (local, or gs://... — remote files are read with seek + read instead of memory maps)."""
        import ml_dtypes

        self.path = path
        self.local = "://" not in os.fspath(path)
        try:
            with path.open("rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise ValueError(f"file is {len(head)} bytes long")
                (n,) = struct.unpack("<Q", head)
                if n > 2**28:
                    raise ValueError(f"header length {n} is implausible")
                raw = f.read(n)
                if len(raw) < n:
                    raise ValueError(f"header cut short ({len(raw)} of {n} bytes)")
            header = json.loads(raw)
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
            header.pop("__metadata__", None)
            self.base = 8 + n
            self.entries, ranges = {}, []
            for name, h in header.items():
                if not isinstance(h, dict):
                    raise ValueError(f"tensor '{name}': entry is not an object")
                dt = np.dtype(ml_dtypes.bfloat16 if h["dtype"] == "BF16" else self.DTYPES[h["dtype"]])
                shape, offsets = h["shape"], h["data_offsets"]
                if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
                    raise ValueError(f"tensor '{name}': shape {shape!r} is not a list of non-negative integers")
                if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
                    raise ValueError(f"tensor '{name}': data_offsets {offsets!r} are not two non-negative integers")
                shape, (begin, stop) = tuple(shape), offsets
                if stop - begin != int(np.prod(shape)) * dt.itemsize:
                    raise ValueError(f"tensor '{name}': offsets {begin}..{stop} do not hold {shape} {dt}")
                self.entries[name] = (dt, shape, begin)
                ranges.append((begin, stop, name))
            # as strict as the safetensors library: the tensors tile the data section, in some order, exactly
            end = 0
            for begin, stop, name in sorted(ranges):
                if begin != end:
                    raise ValueError(f"tensor '{name}': data starts at byte {begin}, expected {end} (byte ranges "
                                     "must be contiguous and must not overlap)")
                end = stop
            stat = path.stat()
            size = getattr(stat, "st_size", None)
            size = stat.length if size is None else size
            if size != self.base + end:
                raise ValueError(f"file is {size} bytes, its header describes {self.base + end}: truncated or "
                                 "corrupt")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, struct.error) as e:
            raise CheckpointError(f"{path}: cannot read safetensors header ({e})") from None

    def read(self, name: str, index=...) -> np.ndarray:
        """tensor[index] as a new array (locally, only the pages of the tensor that hold the block)."""
        dtype, shape, start = self.entries[name]
        if not shape or 0 in shape:
            return np.zeros(shape, dtype)[index]
        if index is Ellipsis or not self.local:  # whole tensor: read into a new array (no mapped pages held)
            out = aligned_empty(shape, dtype)
            with self.path.open("rb") as f:
                f.seek(self.base + start)
                f.readinto(out.reshape(-1).view(np.uint8).data)
            return out if index is Ellipsis else np.array(out[index])
        mm = np.memmap(os.fspath(self.path), dtype=dtype, mode="r", offset=self.base + start, shape=shape)
        try:
            return np.array(mm[index])
        finally:
            mm._mmap.close()


@contextlib.contextmanager
def open_hf_checkpoint(path: str | os.PathLike):
    """Context: (config, {HF tensor name: its TensorFile}) of an HF directory, every name and shape checked
    against the config first. Read a tensor with `files[name].read(name)`, a block of it with
    `files[name].read(name, (rows, cols))` (only those pages are touched)."""
    from etils import epath

    directory = epath.Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    cfg = LlamaConfig.from_json_file(directory / "config.json")
    readers = {f: TensorFile(f) for f in safetensors_files(directory)}  # headers and sizes validated
    where = {name: r for r in readers.values() for name in r.entries}
    check_tensor_names(cfg, {name: r.entries[name][1] for name, r in where.items()}, str(directory))
    yield cfg, where


def load_hf_checkpoint(path: str | os.PathLike) -> tuple[LlamaConfig, dict[Path_, np.ndarray]]:
    """HF directory -> (config, params as numpy arrays keyed by our param paths)."""
    with open_hf_checkpoint(path) as (cfg, files):
        return cfg, hf_to_params(cfg, lambda name: files[name].read(name))


SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def np_dtype(name: str) -> np.dtype:
    """float32 / bfloat16 / float16 -> numpy dtype (bfloat16 from ml_dtypes)."""
    import ml_dtypes

    if name not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"dtype {name!r}: choose one of {', '.join(SAFETENSORS_DTYPES)}")
    return np.dtype(ml_dtypes.bfloat16 if name == "bfloat16" else name)


def read_checked(t: Layout, cfg: LlamaConfig, read: Callable[[Layout], np.ndarray], source: str) -> np.ndarray:
    """read(t), its shape checked against the config and its values finite (the error names the parameter
    and the source)."""
    value = read(t)
    want = t.our_shape(cfg.num_hidden_layers)
    if tuple(value.shape) != want:
        raise CheckpointError(f"{source}: parameter {'/'.join(t.path)} has shape {tuple(value.shape)}, expected "
                              f"{want} from the config")
    check_finite(value, "/".join(t.path), source)
    return value


def check_finite(value, name: str, source: str) -> None:
    """Raise CheckpointError when a tensor (numpy, or a jax.Array possibly sharded across processes) holds
    NaN or inf — a damaged checkpoint; the error names the parameter, the source and the count."""
    import jax.numpy as jnp

    if not jnp.issubdtype(value.dtype, jnp.floating):
        return
    if isinstance(value, np.ndarray):
        bad = value.size - int(np.count_nonzero(np.isfinite(value)))
    else:  # reduced where the shards live; the count is replicated
        bad = int(value.size - jnp.isfinite(value).sum())
    if bad:
        raise CheckpointError(f"{source}: parameter {name} holds {bad} NaN/inf value(s) of {value.size}; the "
                              "checkpoint is damaged")


def _plan_shards(cfg: LlamaConfig, dtype: str, max_shard_bytes: int):
    """[(file name, [(hf name, shape, nbytes)])] in parameter order (each parameter's layers in a row)."""
    item = np_dtype(dtype).itemsize
    entries = [(name, t.hf_shape, int(np.prod(t.hf_shape)) * item)
               for t in tensor_map(cfg) for _, name in t.hf_names(cfg.num_hidden_layers)]
    shards, current, size = [], [], 0
    for e in entries:
        if current and size + e[2] > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(e)
        size += e[2]
    shards.append(current)
    if len(shards) == 1:
        return [("model.safetensors", shards[0])]
    return [(f"model-{n:05d}-of-{len(shards):05d}.safetensors", s) for n, s in enumerate(shards, 1)]


def _safetensors_header(entries, code: str) -> bytes:
    """u64 little-endian length, then JSON (dtype, shape, data_offsets per tensor) padded to 8 bytes."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, nbytes in entries:
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    body = json.dumps(header, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    return len(body).to_bytes(8, "little") + body


def write_hf_directory(directory, cfg: LlamaConfig, read: Callable[[Layout], np.ndarray], *,
                       dtype: str = "float32", tokenizer_dir=None, max_shard_bytes: int = 5 * 2**30,
                       source: str = "source", progress: Callable[[Iterable], Iterable] = iter) -> None:
    """Fill a new directory (an etils path: local or gs://...) with config.json (cfg's rope), safetensors
    and the tokenizer files, reading one parameter at a time through `read`.

    The safetensors are written as a stream: each shard's header is planned from the config (names, dtype,
    shapes, offsets) before any tensor is read, then tensors are appended as their parameter arrives — the
    safetensors library only writes whole dicts. Shards above max_shard_bytes get an index, as in HF."""
    from etils import epath

    directory = epath.Path(directory)
    code, target = SAFETENSORS_DTYPES[dtype], np_dtype(dtype)
    config = cfg.to_hf_dict()  # raises for a rope with no HF form, before anything is written
    config["torch_dtype"] = dtype
    plan = _plan_shards(cfg, dtype, max_shard_bytes)
    shard_of = {name: fname for fname, entries in plan for name, _, _ in entries}
    entries_of, written, out = dict(plan), {}, None  # out: (shard name, open file)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    try:
        for t in progress(tensor_map(cfg)):
            value = read_checked(t, cfg, read, source)
            for i, name in t.hf_names(cfg.num_hidden_layers):
                if out is None or out[0] != shard_of[name]:  # shards are filled in plan order, start to end
                    if out is not None:
                        out[1].close()
                    out = (shard_of[name], (directory / shard_of[name]).open("wb"))
                    out[1].write(_safetensors_header(entries_of[shard_of[name]], code))
                tensor = np.ascontiguousarray(t.to_hf(value if i is None else value[i]).astype(target, copy=False))
                out[1].write(tensor.reshape(-1).view(np.uint8).data)  # the buffer itself, no bytes copy
                written[name] = shard_of[name]
            del value
            release_host_memory()
    finally:
        if out is not None:
            out[1].close()
    if len(plan) > 1:
        total = sum(nbytes for _, entries in plan for _, _, nbytes in entries)
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": written}, indent=2))
    copy_tokenizer_files(tokenizer_dir, directory)


def copy_tokenizer_files(tokenizer_dir, directory, names: Iterable[str] = TOKENIZER_FILES,
                         overwrite: bool = True) -> None:
    """Copy the tokenizer files among `names` that tokenizer_dir has (if given) into directory (etils paths:
    local or gs://...); with overwrite=False, files already there are kept."""
    from etils import epath

    if tokenizer_dir is None:
        return
    for fname in names:
        src, dst = epath.Path(tokenizer_dir) / fname, epath.Path(directory) / fname
        if src.exists() and (overwrite or not dst.exists()):
            try:
                src.copy(dst, overwrite=overwrite)
            except OSError as e:  # name the file being written (the OSError names the source)
                raise OutputError(f"{dst}: cannot write ({e.strerror or e})") from None


def save_hf_checkpoint(
    path: str | os.PathLike,
    cfg: LlamaConfig,
    params: Mapping[Path_, np.ndarray],
    *,
    dtype: str = "float32",
    tokenizer_dir: str | os.PathLike | None = None,
    max_shard_bytes: int = 5 * 2**30,
) -> Path:
    """Write params (in memory) as an HF directory at `path`, atomically: built in a staging sibling, then
    moved into place. An existing `path` is replaced only if it is a checkpoint directory (or empty)."""
    target = Path(path)
    with lock(target, f"destination {target}"):
        if target.exists():
            check_replaceable(target, "save_hf_checkpoint")
        staging = Staging(target)
        with staging as tmp:
            write_hf_directory(tmp, cfg, lambda t: np.asarray(params[t.path]), dtype=dtype,
                               tokenizer_dir=tokenizer_dir, max_shard_bytes=max_shard_bytes)
            staging.commit(replace=True)
    return target
