"""Model shapes to compile without weights: an HF config.json, a checkpoint's own config, or a preset
(the public config.json fields of the models the paper and our users fine-tune)."""

from __future__ import annotations

import os
from pathlib import Path

from yarn_jax.checkpoint import read_config
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import ConfigError

_LLAMA2 = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=32000, max_position_embeddings=4096,
               rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)

# HF config.json fields (meta-llama/Llama-2-*-hf, HuggingFaceTB/SmolLM2-135M-Instruct)
PRESETS: dict[str, dict] = {
    "llama-2-7b": dict(_LLAMA2, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32),
    "llama-2-13b": dict(_LLAMA2, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                        num_attention_heads=40, num_key_value_heads=40),
    "smollm2-135m": dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=49152, hidden_size=576,
                         intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
}
ALIASES = {"smollm2": "smollm2-135m"}


def model_config(spec: str | None, model: str) -> tuple[LlamaConfig, str]:
    """(config, where it came from): `spec` (a preset name or a config.json path) if given, else the
    `model` the train/eval config names — its own config when it is on this machine, otherwise the preset
    its directory name starts with (`/data/llama-2-7b-hf` -> llama-2-7b), said in the result."""
    if spec:
        name = ALIASES.get(spec, spec)
        if name in PRESETS:
            return LlamaConfig.from_hf_dict(PRESETS[name], where=f"preset {name}"), f"preset {name}"
        if os.path.isfile(spec):
            return LlamaConfig.from_json_file(spec), spec
        raise ConfigError(f"model_config {spec!r}: neither a preset ({', '.join(PRESETS)}) nor a config.json file")
    name = ALIASES.get(model, model)
    if name in PRESETS:
        return LlamaConfig.from_hf_dict(PRESETS[name], where=f"preset {name}"), f"preset {name}"
    if os.path.exists(model):
        return read_config(model), model
    stem = Path(model.rstrip("/")).name.lower()
    matches = [p for p in PRESETS if stem == p or stem.startswith(p + "-") or stem.startswith(p + "_")]
    if len(matches) == 1:
        return (LlamaConfig.from_hf_dict(PRESETS[matches[0]], where=f"preset {matches[0]}"),
                f"preset {matches[0]} (model {model} is not on this machine; its name matches the preset)")
    raise ConfigError(f"model {model}: not on this machine and its name matches no preset; pass --model-config "
                      f"with a preset ({', '.join(PRESETS)}) or a config.json")
