"""What a model family is to yarn_jax: the HF `model_type` and architecture it answers to, how its config
fields turn on the decoder's features (attention biases, q/k norms, ...), and how it writes them back.

A family names no parameter or tensor itself: the features it sets in the config decide the parameters
(`model.py`) and their HF names (`checkpoint/layout.py`), so readers, writers, conversion and sharding
need no branch per family.
"""

from __future__ import annotations

from typing import Any, Mapping

from yarn_jax.errors import ConfigError

# Config keys of features no family here implements: refused by name when they are set, never ignored.
UNIMPLEMENTED = {
    "num_experts": "mixture of experts", "num_local_experts": "mixture of experts",
    "n_routed_experts": "mixture of experts", "moe_intermediate_size": "mixture of experts",
    "kv_lora_rank": "multi-head latent attention", "q_lora_rank": "multi-head latent attention",
    "attention_sink": "attention sinks", "use_sinks": "attention sinks",
}


def flag(d: Mapping[str, Any], key: str, where: str, default: bool = False) -> bool:
    value = d.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{where}['{key}'] must be true or false, got {value!r}")
    return value


def refuse_sliding_window(d: Mapping[str, Any], where: str) -> None:
    """Sliding-window layers are not implemented yet: refused by name (a model that uses them would
    silently attend too far)."""
    layer_types = d.get("layer_types") or []
    if flag(d, "use_sliding_window", where) or "sliding_attention" in layer_types:
        raise ConfigError(f"{where}: sliding-window attention ('use_sliding_window' / layer_types "
                          "'sliding_attention') is not supported yet")


class Family:
    """A decoder family over the LLaMA blocks. Subclasses set `model_type` and `architecture` and map their
    feature keys in `features` / `feature_fields`."""

    model_type: str
    architecture: str
    gguf_arch: str | None = None  # llama.cpp's `general.architecture` for it, if GGUF files are read
    gguf_interleaved: bool = False  # whether llama.cpp stores its q/k rows in the interleaved rotary order

    def check(self, d: Mapping[str, Any], where: str) -> None:
        """Refuse config keys this family does not implement (by name)."""
        for key, what in UNIMPLEMENTED.items():
            if d.get(key):
                raise ConfigError(f"{where}['{key}']: {what} is not supported")
        if d.get("mlp_bias"):
            raise ConfigError(f"{where}['mlp_bias']=true is not supported (the MLP projections have no bias)")
        refuse_sliding_window(d, where)

    def features(self, d: Mapping[str, Any], where: str) -> dict[str, Any]:
        """The model features this config turns on: LlamaConfig fields (qkv_bias, o_bias, qk_norm)."""
        return {}

    def feature_fields(self, cfg) -> dict[str, Any]:
        """The HF config fields that carry those features back (to_hf_dict)."""
        return {}
