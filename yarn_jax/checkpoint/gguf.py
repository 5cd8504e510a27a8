"""GGUF (llama.cpp) files of the families llama.cpp names (`llama`, `qwen2`, `qwen3`, `smollm3`;
`families.GGUF_ARCHS`; Mistral is a `llama` file with a sliding window) <-> config + HF-named float32 tensors, torch-free.

Quantized tensors are dequantized with the `gguf` package. For `llama` llama.cpp stores the q/k projection
rows in the interleaved rotary layout; they are permuted back to HF's half-split layout here, once, at the
boundary (the Qwen archs use llama.cpp's NEOX rope and keep HF's order).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import gguf
import ml_dtypes
import numpy as np

from yarn_jax.checkpoint.layout import read_checked, tensor_map
from yarn_jax.errors import CheckpointError, ConfigError
from yarn_jax.families import FAMILIES, GGUF_ARCHS
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
    """Undo llama.cpp's q/k row permutation (weights [rows, cols] and biases [rows]): interleaved pairs
    (2j, 2j+1) -> half-split (j, j+D/2)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def permute_rotary_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k row permutation for its interleaved rotary (`unpermute_rotary_rows` inverted)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, -1).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    value = f.contents()
    if isinstance(value, float):
        value = float(f"{value:.7g}")  # GGUF stores float32: 9.99999975e-06 -> 1e-05
    return value


def gguf_reader(path: Path) -> "gguf.GGUFReader":
    """The `gguf` package's reader of a file (memory-mapped); CheckpointError naming it when it is missing
    or not GGUF."""
    try:
        return gguf.GGUFReader(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: GGUF file not found") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({' '.join(str(e).split())[:200]})") from None


def open_gguf(path: str | os.PathLike):
    """GGUF file -> (HF config.json dict, {HF tensor name: shape}, {HF tensor name: a function returning it
    as float32}).

    The file is memory-mapped; each tensor is dequantized (and q/k un-permuted) only when its function is
    called, so a caller that takes one tensor at a time holds one tensor at a time."""
    path = Path(path)
    reader = gguf_reader(path)
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
                  if family.gguf_interleaved and len(parts) == 4 else None)  # weights and biases
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
        if method.name == "yarn":  # llama.cpp's attn_factor excludes the temperature its kernel applies
            attn = meta("rope.scaling.attn_factor", None, required=False)
            if attn is not None and attn != 1.0:
                total = attn * (1 + 0.1 * math.log(rope["factor"])) if rope["factor"] > 1 else attn
                rope["attention_factor"] = float(f"{total:.7g}")  # float32 precision, as the stored value
            for key in ("beta_fast", "beta_slow"):
                value = meta(f"rope.scaling.yarn_{key}", None, required=False)
                if value is not None:
                    rope[key] = value
        config["rope_scaling"] = rope
    window = meta("attention.sliding_window", None, required=False)
    if window:  # llama.cpp files Mistral (a window on every layer) under the llama arch
        if family.model_type != "llama":
            raise CheckpointError(f"{path}: '{arch}.attention.sliding_window' is only read for Mistral files (llama arch)")
        config.update(architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=int(window))
    return config, shapes, tensors


# --- writing -------------------------------------------------------------------------------------------------

_GGUF_LAYER = {hf: ours for ours, hf in _LAYER_NAMES.items()}
_GGUF_GLOBAL = {hf: ours for ours, hf in _GLOBAL_NAMES.items()}
# file types and per-tensor types of the float dtypes written (1-D tensors — norms, biases — stay float32, as
# llama.cpp's convert script keeps them)
Q = gguf.GGMLQuantizationType
# a GGUF file's --dtype -> (llama.cpp's file type, the GGML type of its 2-D weights)
_FILE_TYPES = {"float32": (gguf.LlamaFileType.ALL_F32, Q.F32), "float16": (gguf.LlamaFileType.MOSTLY_F16, Q.F16),
               "bfloat16": (gguf.LlamaFileType.MOSTLY_BF16, Q.BF16),
               "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, Q.Q8_0), "q5_1": (gguf.LlamaFileType.MOSTLY_Q5_1, Q.Q5_1),
               "q5_0": (gguf.LlamaFileType.MOSTLY_Q5_0, Q.Q5_0), "q4_1": (gguf.LlamaFileType.MOSTLY_Q4_1, Q.Q4_1),
               "q4_0": (gguf.LlamaFileType.MOSTLY_Q4_0, Q.Q4_0)}
GGUF_DTYPES = tuple(_FILE_TYPES)
GGUF_QUANTIZED = ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0")  # block types the gguf package quantizes


def tensor_type(dtype: str, gguf_tensor: str, hf_shape: tuple[int, ...]) -> "gguf.GGMLQuantizationType":
    """The GGML type a tensor is stored in by a file of `dtype`: 1-D tensors (norms, biases) F32, as
    llama.cpp keeps them; 2-D weights in the file's type — except, in a 4/5-bit file, the token embedding
    and the output head, kept at Q8_0 (llama.cpp's quantizer keeps them at 6 bits or more, in a K type the
    gguf package cannot write), and rows that are not a whole number of 32-value blocks, kept F16."""
    if len(hf_shape) == 1:
        return Q.F32
    ggml = _FILE_TYPES[dtype][1]
    if dtype not in GGUF_QUANTIZED:
        return ggml
    if hf_shape[-1] % gguf.GGML_QUANT_SIZES[ggml][0]:
        return Q.F16
    if dtype != "q8_0" and gguf_tensor.split(".")[0] in ("token_embd", "output"):
        return Q.Q8_0
    return ggml


def encode(hf: np.ndarray, ggml) -> np.ndarray:
    """A float32 HF-orientation tensor as the bytes GGML type `ggml` stores (quantized blockwise along rows)."""
    if ggml == Q.F32:
        return np.ascontiguousarray(hf, np.float32)
    if ggml == Q.F16:
        return hf.astype(np.float16)
    if ggml == Q.BF16:
        return hf.astype(ml_dtypes.bfloat16).view(np.uint16)
    return gguf.quants.quantize(np.ascontiguousarray(hf, np.float32), ggml)


def as_stored(hf: np.ndarray, dtype: str, gguf_tensor: str) -> np.ndarray:
    """A float32 HF-orientation tensor with the values a GGUF file of `dtype` holds for it (what its reader
    gets back): the reference a quantized or 16-bit export is checked against, like with like. (q/k rows
    are permuted for llama.cpp before quantizing; blocks run along rows, so the order of rows does not
    change them.)"""
    ggml = tensor_type(dtype, gguf_tensor, hf.shape)
    if ggml == Q.F32:
        return hf
    if ggml in (Q.F16, Q.BF16):
        return hf.astype(np.float16 if ggml == Q.F16 else ml_dtypes.bfloat16).astype(np.float32)
    return np.asarray(gguf.quants.dequantize(encode(hf, ggml), ggml), np.float32).reshape(hf.shape)


def stored_source(source, dtype: str):
    """`source` (an open checkpoint) whose every parameter reads as a GGUF file of `dtype` would hold it."""
    import dataclasses

    def whole(t, out_dtype) -> np.ndarray:
        value = source.read(t, dtype=np.float32)
        if not t.per_layer:
            return t.to_ours(as_stored(t.to_hf(value), dtype, gguf_name(t.name))).astype(out_dtype)
        return np.stack([t.to_ours(as_stored(t.to_hf(value[i]), dtype, gguf_name(name)))
                         for i, name in t.hf_names(len(value))]).astype(out_dtype)

    return dataclasses.replace(source, _whole=whole, _block=None, _restore=None, _cached=(None, None))


def gguf_name(hf_name: str) -> str:
    """An HF tensor name -> llama.cpp's (blk.N.attn_q.weight, token_embd.weight, ...)."""
    parts = hf_name.split(".")
    if hf_name.startswith("model.layers."):
        return f"blk.{parts[2]}.{_GGUF_LAYER['.'.join(parts[3:-1])]}.{parts[-1]}"
    return f"{_GGUF_GLOBAL['.'.join(parts[:-1])]}.{parts[-1]}"


def gguf_arch_of(cfg) -> str:
    """llama.cpp's architecture for a config; ConfigError naming what a GGUF file cannot carry."""
    family = FAMILIES[cfg.model_type]
    if family.gguf_arch is None:
        supported = ", ".join(f.architecture for f in FAMILIES.values() if f.gguf_arch)
        raise ConfigError(f"GGUF export: {family.architecture} is not written as GGUF here (supported: {supported})")
    family.gguf_check(cfg)
    return family.gguf_arch


def _tensor_plan(cfg, dtype: str):
    """[(layout, [(layer or None, GGUF name, GGML type)])] in file order."""
    return [(t, [(layer, gguf_name(name), tensor_type(dtype, gguf_name(name), t.hf_shape))
                 for layer, name in t.hf_names(cfg.num_hidden_layers)]) for t in tensor_map(cfg)]


def _add_tokenizer(w: "gguf.GGUFWriter", tokenizer_dir, cfg) -> str:
    """llama.cpp's tokenizer metadata from a byte-level BPE tokenizer.json (GPT-2 style: SmolLM, Qwen, LLaMA 3);
    returns what was written ("gpt2" or "none", when the directory has no such tokenizer)."""
    path = Path(tokenizer_dir) / "tokenizer.json" if tokenizer_dir else None
    spec = json.loads(path.read_text()) if path is not None and path.is_file() else None
    model = (spec or {}).get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        w.add_tokenizer_model("no_vocab")
        return "none"
    tokens = [f"[PAD{i}]" for i in range(cfg.vocab_size)]
    types = [gguf.TokenType.UNUSED] * cfg.vocab_size
    for text, i in model["vocab"].items():
        if i < cfg.vocab_size:
            tokens[i], types[i] = text, gguf.TokenType.NORMAL
    for added in spec.get("added_tokens") or []:
        if added["id"] < cfg.vocab_size:
            tokens[added["id"]] = added["content"]
            types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    return "gpt2"


def write_gguf(path, cfg, read, *, dtype: str = "float32", tokenizer_dir=None, source: str = "",
               progress=iter) -> dict[str, Any]:
    """Write a config's parameters as one GGUF file in llama.cpp's layout for its family's arch: its tensor
    names, q/k rows in its interleaved rotary order where it uses one (llama), the rope as llama.cpp reads
    it (`rope.scaling.*`, from the method's record), float32/float16/bfloat16 or the block-quantized
    q8_0/q5_1/q5_0/q4_1/q4_0 (per tensor as `tensor_type` says), and the tokenizer. Streams one parameter at a time (`read(layout)` -> ours [L, ...]); returns a summary."""
    if dtype not in _FILE_TYPES:
        raise ConfigError(f"GGUF export: dtype {dtype!r}: choose {', '.join(_FILE_TYPES)}")
    arch = gguf_arch_of(cfg)
    rope = cfg.rope.method.gguf_metadata(cfg.rope)  # ConfigError before anything is written
    interleaved = FAMILIES[cfg.model_type].gguf_interleaved
    w = gguf.GGUFWriter(os.fspath(path), arch)
    w.add_name(Path(source).name or "yarn_jax")
    w.add_file_type(_FILE_TYPES[dtype][0])
    w.add_block_count(cfg.num_hidden_layers)
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.rope.rotary_dim)
    for key, value in rope.items():
        full = f"{arch}.rope.{key}"
        if isinstance(value, str):
            w.add_string(full, value)
        elif isinstance(value, int) and not isinstance(value, bool):
            w.add_uint32(full, value)
        else:
            w.add_float32(full, float(value))
    tokenizer = _add_tokenizer(w, tokenizer_dir, cfg)
    for key, value in (("bos", cfg.bos_token_id), ("eos", cfg.eos_token_id), ("padding", cfg.pad_token_id)):
        value = value[0] if isinstance(value, tuple) else value
        if value is not None:
            w.add_uint32(f"tokenizer.ggml.{key}_token_id", int(value))
    plan = _tensor_plan(cfg, dtype)
    for t, names in plan:
        for _, name, ggml in names:
            nbytes = int(np.prod(gguf.quants.quant_shape_to_byte_shape(t.hf_shape, ggml)))
            w.add_tensor_info(name, t.hf_shape, np.dtype(np.float32), nbytes, raw_dtype=ggml)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}
    types: dict[str, int] = {}
    for t, names in progress(plan):
        value = read_checked(t, cfg, read, source)  # ours: [L, ...] per layer, else the whole tensor
        for layer, name, ggml in names:
            hf = t.to_hf(value if layer is None else value[layer]).astype(np.float32)
            kind = name.split(".")[2] if name.startswith("blk.") else None
            if interleaved and kind in heads:
                hf = permute_rotary_rows(hf, heads[kind])
            w.write_tensor_data(np.ascontiguousarray(encode(hf, ggml)))
            types[ggml.name] = types.get(ggml.name, 0) + 1
        del value
    w.close()
    return {"arch": arch, "tokenizer": tokenizer, "rope": rope, "tensors": sum(len(names) for _, names in plan),
            "tensor_types": types}
