"""HF checkpoint directories (config.json + safetensors) <-> yarn_jax parameters.

Reading goes tensor by tensor through safetensors' numpy API (no torch). Names and shapes are checked
against the config before any tensor is converted; errors name the tensor and file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from yarn_jax.config import LlamaConfig
from yarn_jax.errors import CheckpointError

# Buffers some HF checkpoints carry that hold no parameters (recomputed from the config).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")

Path_ = tuple[str, ...]


def tensor_map(cfg: LlamaConfig) -> list[tuple[Path_, str, tuple[int, ...], Callable, Callable]]:
    """(our param path, HF name, HF shape, hf->ours, ours->hf) for every tensor; `{i}` is the layer index."""
    e, h, k, d, f, v = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                        cfg.intermediate_size, cfg.vocab_size)
    same = (lambda w: w, lambda a: a)
    transpose = (lambda w: w.T, lambda a: a.T)
    rows = [
        (("embed_tokens",), "model.embed_tokens.weight", (v, e), *same),
        (("final_norm", "weight"), "model.norm.weight", (e,), *same),
        (("layers", "input_norm", "weight"), "model.layers.{i}.input_layernorm.weight", (e,), *same),
        (("layers", "post_attention_norm", "weight"), "model.layers.{i}.post_attention_layernorm.weight", (e,),
         *same),
        # nn.Linear weights are [out, in]; ours are [in, ..., out-split]
        (("layers", "q_proj"), "model.layers.{i}.self_attn.q_proj.weight", (h * d, e),
         lambda w: w.T.reshape(e, h, d), lambda a: a.reshape(e, h * d).T),
        (("layers", "k_proj"), "model.layers.{i}.self_attn.k_proj.weight", (k * d, e),
         lambda w: w.T.reshape(e, k, d), lambda a: a.reshape(e, k * d).T),
        (("layers", "v_proj"), "model.layers.{i}.self_attn.v_proj.weight", (k * d, e),
         lambda w: w.T.reshape(e, k, d), lambda a: a.reshape(e, k * d).T),
        (("layers", "o_proj"), "model.layers.{i}.self_attn.o_proj.weight", (e, h * d),
         lambda w: w.T.reshape(h, d, e), lambda a: a.reshape(h * d, e).T),
        (("layers", "gate_proj"), "model.layers.{i}.mlp.gate_proj.weight", (f, e), *transpose),
        (("layers", "up_proj"), "model.layers.{i}.mlp.up_proj.weight", (f, e), *transpose),
        (("layers", "down_proj"), "model.layers.{i}.mlp.down_proj.weight", (e, f), *transpose),
    ]
    if not cfg.tie_word_embeddings:
        rows.append((("lm_head",), "lm_head.weight", (v, e), *transpose))
    return rows


def expected_hf_names(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    names = {}
    for _, name, shape, _, _ in tensor_map(cfg):
        layers = range(cfg.num_hidden_layers) if "{i}" in name else [None]
        for i in layers:
            names[name.format(i=i)] = shape
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
    for path, name, _, to_ours, _ in tensor_map(cfg):
        if "{i}" in name:
            params[path] = np.stack([to_ours(get(name.format(i=i))) for i in range(cfg.num_hidden_layers)])
        else:
            params[path] = to_ours(get(name))
    return params


def params_to_hf(cfg: LlamaConfig, params: Mapping[Path_, np.ndarray]) -> dict[str, np.ndarray]:
    """Our params -> HF-named tensors (contiguous numpy arrays)."""
    out = {}
    for path, name, _, _, to_hf in tensor_map(cfg):
        value = np.asarray(params[path])
        if "{i}" in name:
            for i in range(cfg.num_hidden_layers):
                out[name.format(i=i)] = np.ascontiguousarray(to_hf(value[i]))
        else:
            out[name] = np.ascontiguousarray(to_hf(value))
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


def load_hf_checkpoint(path: str | os.PathLike) -> tuple[LlamaConfig, dict[Path_, np.ndarray]]:
    """HF directory -> (config, params as numpy arrays keyed by our param paths)."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    cfg = LlamaConfig.from_json_file(directory / "config.json")
    files = safetensors_files(directory)
    where: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as st:
                for name in st.keys():
                    where[name] = f
                    shapes[name] = tuple(st.get_slice(name).get_shape())
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{f}: cannot read safetensors header ({e})") from None
    check_tensor_names(cfg, shapes, str(directory))
    with contextlib.ExitStack() as stack:
        handles = {f: stack.enter_context(safe_open(str(f), framework="numpy")) for f in files}
        return cfg, hf_to_params(cfg, lambda name: handles[where[name]].get_tensor(name))


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
