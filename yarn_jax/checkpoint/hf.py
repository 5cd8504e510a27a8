"""HF checkpoint directories (config.json + safetensors): the reader of their tensors and the one HF writer.

Reading goes tensor by tensor through short-lived memory maps of the safetensors files (no torch, no
pickle). Names and shapes are checked against the config before any tensor is read; errors name the
tensor and file. Writing streams one parameter at a time (`write_hf_directory`).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Callable, Iterable, Mapping

import ml_dtypes
import numpy as np
from etils import epath

from yarn_jax.checkpoint.layout import (SAFETENSORS_DTYPES, HFTensors, Layout, Path_, check_replaceable,
                                        check_tensor_names, copy_tokenizer_files, np_dtype, read_checked, tensor_map)
from yarn_jax.checkpoint.memory import aligned_empty, release_host_memory
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import CheckpointError, ConfigError
from yarn_jax.outputs import Staging, lock

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


def open_hf(path: str | os.PathLike) -> tuple[LlamaConfig, dict[str, TensorFile]]:
    """(config, {HF tensor name: its TensorFile}) of an HF directory, every name and shape checked against
    the config first. Read a tensor with `files[name].read(name)`, a block of it with
    `files[name].read(name, (rows, cols))` (only those pages are touched)."""
    directory = epath.Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    cfg = LlamaConfig.from_json_file(directory / "config.json")
    readers = {f: TensorFile(f) for f in safetensors_files(directory)}  # headers and sizes validated
    where = {name: r for r in readers.values() for name in r.entries}
    check_tensor_names(cfg, {name: r.entries[name][1] for name, r in where.items()}, str(directory))
    return cfg, where


def _plan_shards(cfg: LlamaConfig, dtype: str, max_shard_bytes: int):
    """[(file name, [(hf name, shape, nbytes)])] in parameter order (each parameter's layers in a row)."""
    item = np.dtype(np_dtype(dtype)).itemsize
    shapes = {name: t.hf_shape for t in tensor_map(cfg) for _, name in t.hf_names(cfg.num_hidden_layers)}
    entries = [(name, shape, int(np.prod(shape)) * item) for name, shape in shapes.items()]  # a fused name once
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
    directory = epath.Path(directory)
    code, target = SAFETENSORS_DTYPES[dtype], np_dtype(dtype)
    config = cfg.to_hf_dict()  # raises for a rope with no HF form, before anything is written
    config["torch_dtype"] = dtype
    plan = _plan_shards(cfg, dtype, max_shard_bytes)
    shard_of = {name: fname for fname, entries in plan for name, _, _ in entries}
    entries_of, written, out = dict(plan), {}, None  # out: (shard name, open file)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tensors = HFTensors(cfg)  # (a fused tensor is written once its last part has been read)
    try:
        for t in progress(tensor_map(cfg)):
            value = read_checked(t, cfg, read, source)
            for name, hf_value in tensors.add(t, value):
                if out is None or out[0] != shard_of[name]:  # shards are filled in plan order, start to end
                    if out is not None:
                        out[1].close()
                    out = (shard_of[name], (directory / shard_of[name]).open("wb"))
                    out[1].write(_safetensors_header(entries_of[shard_of[name]], code))
                tensor = np.ascontiguousarray(hf_value.astype(target, copy=False))
                out[1].write(tensor.reshape(-1).view(np.uint8).data)  # the buffer itself, no bytes copy
                written[name] = shard_of[name]
            nbytes = value.nbytes
            del value
            release_host_memory(nbytes)
    finally:
        if out is not None:
            out[1].close()
    if len(plan) > 1:
        total = sum(nbytes for _, entries in plan for _, _, nbytes in entries)
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": written}, indent=2))
    copy_tokenizer_files(tokenizer_dir, directory)


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
    if dtype not in SAFETENSORS_DTYPES:
        raise ConfigError(f"dtype {dtype!r}: choose {', '.join(SAFETENSORS_DTYPES)}")
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
