"""GGUF (llama.cpp) files of the families llama.cpp names (`llama`, `qwen2`, `qwen3`; `families.GGUF_ARCHS`)
-> config + HF-named float32 tensors, torch-free.

Quantized tensors are dequantized with the `gguf` package. For `llama` llama.cpp stores the q/k projection
rows in the interleaved rotary layout; they are permuted back to HF's half-split layout here, once, at the
boundary (the Qwen archs use llama.cpp's NEOX rope and keep HF's order).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np

from yarn_jax.errors import CheckpointError
from yarn_jax.families import GGUF_ARCHS
from yarn_jax.rope import GGUF_TYPES

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def unpermute_rotary_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: interleaved pairs (2j, 2j+1) -> half-split (j, j+D/2)."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    value = f.contents()
    if isinstance(value, float):
        value = float(f"{value:.7g}")  # GGUF stores float32: 9.99999975e-06 -> 1e-05
    return value


def open_gguf(path: str | os.PathLike):
    """GGUF file -> (HF config.json dict, {HF tensor name: shape}, {HF tensor name: a function returning it
    as float32}).

    The file is memory-mapped; each tensor is dequantized (and q/k un-permuted) only when its function is
    called, so a caller that takes one tensor at a time holds one tensor at a time."""
    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: GGUF file not found") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from None
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHS:
        raise CheckpointError(f"{path}: general.architecture={arch!r} is not supported (supported: "
                              f"{', '.join(GGUF_ARCHS)})")
    family = GGUF_ARCHS[arch]

    def meta(key: str, default: Any = None, required: bool = True) -> Any:
        value = _field(reader, f"{arch}.{key}", default)
        if value is None and required:
            raise CheckpointError(f"{path}: GGUF metadata '{arch}.{key}' is missing")
        return value

    heads = meta("attention.head_count")
    kv_heads = meta("attention.head_count_kv", heads)
    hidden = meta("embedding_length")
    head_dim = meta("attention.key_length", hidden // heads, required=False)
    rot_dim = meta("rope.dimension_count", head_dim, required=False)

    def loader(t, rotary_heads: int | None) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
            w = w.reshape(tuple(int(s) for s in reversed(t.shape)))  # ggml lists dims innermost first
            return w if rotary_heads is None else unpermute_rotary_rows(w, rotary_heads)
        return load

    tensors: dict[str, Callable[[], np.ndarray]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for t in reader.tensors:
        parts = t.name.split(".")
        if parts[0] == "blk" and len(parts) == 4 and parts[2] in _LAYER_NAMES:
            name = f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
        elif len(parts) == 2 and parts[0] in _GLOBAL_NAMES:
            name = f"{_GLOBAL_NAMES[parts[0]]}.{parts[1]}"
        elif t.name == "rope_freqs.weight":
            raise CheckpointError(f"{path}: tensor 'rope_freqs.weight' (llama3 frequency factors) is not supported")
        else:
            raise CheckpointError(f"{path}: unexpected GGUF tensor '{t.name}'")
        rotary = ({"attn_q": heads, "attn_k": kv_heads}.get(parts[2])
                  if family.gguf_interleaved and parts[-1] == "weight" and len(parts) == 4 else None)
        tensors[name] = loader(t, rotary)
        shapes[name] = tuple(int(s) for s in reversed(t.shape))

    if "model.embed_tokens.weight" not in tensors:
        raise CheckpointError(f"{path}: GGUF tensor 'token_embd.weight' is missing")
    config: dict[str, Any] = {
        "architectures": [family.architecture], "model_type": family.model_type, "hidden_act": "silu",
        "attention_bias": "model.layers.0.self_attn.o_proj.bias" in tensors,
        "vocab_size": int(shapes["model.embed_tokens.weight"][0]),
        "hidden_size": hidden, "intermediate_size": meta("feed_forward_length"),
        "num_hidden_layers": meta("block_count"), "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": head_dim, "max_position_embeddings": meta("context_length"),
        "rms_norm_eps": meta("attention.layer_norm_rms_epsilon"),
        "rope_theta": meta("rope.freq_base", 10000.0, required=False),
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
    }
    if rot_dim != head_dim:
        config["partial_rotary_factor"] = rot_dim / head_dim
    scaling = meta("rope.scaling.type", None, required=False)
    if scaling not in (None, "none"):
        if scaling not in GGUF_TYPES:
            raise CheckpointError(f"{path}: GGUF '{arch}.rope.scaling.type'={scaling!r} is not supported "
                                  f"(supported: {', '.join(GGUF_TYPES)})")
        method = GGUF_TYPES[scaling]
        rope = {"rope_type": method.name, "factor": meta("rope.scaling.factor")}
        if method.needs_l0():
            rope["original_max_position_embeddings"] = meta("rope.scaling.original_context_length")
        config["rope_scaling"] = rope
    return config, shapes, tensors
