"""Content fingerprints of what produced a result: the model's files, its tokenizer, each document.

A run directory records these next to its results, so a re-run can tell "the same inputs" from "the same
paths": a checkpoint root that gained a newer step, a weight file re-exported in place, an edited data file.

Files are identified by size and a SHA-256 over their content — all of it up to 64 MiB; above that the
first and last 1 MiB, 64 evenly spaced 64 KiB blocks and, for safetensors, the header plus the first and
last 4 KiB of every tensor (so any tensor rewritten with new values changes the digest), a few MiB read
per multi-GB file. A yarn_jax (orbax) checkpoint step is written once: its resolved step number, its
files' names and sizes and its small (<= 1 MiB) metadata files' content identify it. Modification times
are not part of the identity: a copy of the same bytes is the same model.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct

from etils import epath

from yarn_jax.checkpoint.orbax_ckpt import latest_step
from yarn_jax.checkpoint.source import checkpoint_format, orbax_root_step

FULL_LIMIT = 64 * 2**20
BLOCK, BLOCKS, EDGE, TENSOR_EDGE = 64 * 2**10, 64, 2**20, 4096


def _epath(path):
    return epath.Path(path)


def _size(p) -> int:
    stat = p.stat()
    size = getattr(stat, "st_size", None)
    return int(stat.length if size is None else size)


def file_digest(path) -> str:
    """'size:sha256-prefix' of one file (sampled above FULL_LIMIT, see the module docstring)."""
    p = _epath(path)
    size = _size(p)
    h = hashlib.sha256(str(size).encode())
    with p.open("rb") as f:
        if size <= FULL_LIMIT:
            for chunk in iter(lambda: f.read(2**20), b""):
                h.update(chunk)
        else:
            spots = [(0, EDGE), (size - EDGE, EDGE)]
            spots += [(i * (size - BLOCK) // (BLOCKS - 1), BLOCK) for i in range(BLOCKS)]
            if p.name.endswith(".safetensors"):
                spots += _tensor_edges(f)
            for offset, n in spots:
                f.seek(offset)
                h.update(f.read(n))
    return f"{size}:{h.hexdigest()[:24]}"


def _tensor_edges(f) -> list[tuple[int, int]]:
    """(offset, length) of the first and last TENSOR_EDGE bytes of every tensor of a safetensors file."""
    try:
        f.seek(0)
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n)) if n < 2**28 else {}
    except (struct.error, ValueError, UnicodeDecodeError):
        return []  # not readable as safetensors: the loader will say so; the sampled blocks still count
    out = []
    for name, h in header.items() if isinstance(header, dict) else ():
        try:
            begin, stop = (int(x) for x in h["data_offsets"])
        except (KeyError, TypeError, ValueError):
            continue
        out += [(8 + n + begin, min(TENSOR_EDGE, stop - begin)), (8 + n + max(begin, stop - TENSOR_EDGE),
                                                                   min(TENSOR_EDGE, stop - begin))]
    return out


def _tree(root, files, digest=file_digest) -> dict[str, str]:
    """{path relative to root: digest} of files."""
    return {os.fspath(f.relative_to(root)): digest(f) for f in sorted(files)}


def _size_or_digest(f) -> str:
    """A file's digest when small (metadata), else only its size (arrays of a step written once)."""
    return file_digest(f) if _size(f) <= 2**20 else f"{_size(f)}:-"


def _files_under(d) -> list:
    """Every file below a directory (iterdir recursion: works for gs:// paths too)."""
    out = []
    for c in d.iterdir():
        out += _files_under(c) if c.is_dir() else [c]
    return out


def model_identity(path: str) -> dict:
    """What a model path holds now: {"kind", "step" (yarn_jax checkpoints), "files": {name: digest}}; the
    files are the weights and config, not the tokenizer (see `tokenizer_identity`)."""
    p = _epath(path)
    kind = checkpoint_format(p)
    if kind == "orbax":
        root, step = orbax_root_step(p)
        step = latest_step(root) if step is None else step
        # a committed step is never rewritten: its resolved number, file names and sizes, and the content of
        # its small metadata files identify it without reading the arrays (a 7B step on a bucket is 10k+ files)
        step_dir = root / str(step)
        return {"kind": "orbax", "step": step, "files": _tree(step_dir, _files_under(step_dir), _size_or_digest)}
    if kind == "gguf":
        return {"kind": "gguf", "files": {p.name: file_digest(p)}}
    names = [f for f in p.iterdir() if f.is_file() and (
        f.name == "config.json" or f.name.endswith(".safetensors") or f.name == "model.safetensors.index.json")]
    return {"kind": "hf", "files": _tree(p, names)}


def tokenizer_identity(tokenizer_dir) -> str | None:
    """Digest of tokenizer.json in tokenizer_dir (None when there is none)."""
    if tokenizer_dir is None:
        return None
    f = _epath(tokenizer_dir) / "tokenizer.json"
    return file_digest(f) if f.exists() else None


def ids_digest(ids) -> str:
    """Digest of a document's token ids (captures its text and the tokenizer that read it)."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(ids, np.int64).tobytes()).hexdigest()[:16]


def short(obj) -> str:
    """A short stable digest of any JSON-able value (for cell keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def describe_change(old: dict, new: dict) -> str:
    """What differs between two model identities, in words (for refusals)."""
    if old.get("kind") != new.get("kind"):
        return f"its kind changed from {old.get('kind')} to {new.get('kind')}"
    parts = []
    if old.get("step") != new.get("step"):
        parts.append(f"its latest step was {old.get('step')}, it is now {new.get('step')}")
    of, nf = old.get("files", {}), new.get("files", {})
    changed = sorted(k for k in of.keys() & nf.keys() if of[k] != nf[k])
    gone, added = sorted(of.keys() - nf.keys()), sorted(nf.keys() - of.keys())
    if not parts:
        for label, names in (("changed", changed), ("removed", gone), ("added", added)):
            if names:
                parts.append(f"{label}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}")
    return "; ".join(parts) or "its files differ"
