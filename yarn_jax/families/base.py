"""What a model family is to yarn_jax: the HF `model_type` and architecture it answers to, how its config
fields turn on the decoder's features (attention biases, q/k norms, ...), and how it writes them back.

A family names no parameter or tensor itself: the features it sets in the config decide the parameters
(`model.py`) and their HF names (`checkpoint/layout.py`), so readers, writers, conversion and sharding
need no branch per family.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

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


LAYER_TYPES = ("full_attention", "sliding_attention")


def sliding_layers(d: Mapping[str, Any], where: str, window, default_types: Callable[[int], list[str]]) -> dict:
    """The sliding-window features of a config: {"sliding_window", "layer_types"} — empty when no layer
    slides. `window`: the family's effective window (None: none); the layer types are the config's
    `layer_types`, else `default_types(num_hidden_layers)` (the family's HF rule)."""
    if window is None:
        return {}
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"{where}['sliding_window'] must be a positive integer or null, got {window!r}")
    n = d["num_hidden_layers"]
    types = d.get("layer_types")
    types = default_types(n) if types is None else types
    if not isinstance(types, list) or len(types) != n or not set(types) <= set(LAYER_TYPES):
        raise ConfigError(f"{where}['layer_types'] must name one of {list(LAYER_TYPES)} for each of the {n} layers, "
                          f"got {types!r}")
    if "sliding_attention" not in types:
        return {}
    return {"sliding_window": window, "layer_types": tuple(types)}


def sliding_fields(cfg) -> dict[str, Any]:
    """The HF fields of the sliding-window layers (`sliding_layers` inverted)."""
    return {"sliding_window": cfg.sliding_window, "layer_types": list(cfg.layer_kinds())}


class Family:
    """A decoder family over the LLaMA blocks. Subclasses set `model_type` and `architecture` and map their
    feature keys in `features` / `feature_fields`."""

    model_type: str
    architecture: str
    gguf_arch: str | None = None  # llama.cpp's `general.architecture` for it, if GGUF files are read
    gguf_interleaved: bool = False  # whether llama.cpp stores its q/k rows in the interleaved rotary order
    defaults: Mapping[str, Any] = {}  # HF's defaults of this family's config class for fields a config omits
    rope_per_layer_type: bool = False  # rope_parameters keyed by layer type (full / sliding attention)

    def check(self, d: Mapping[str, Any], where: str) -> None:
        """Refuse config keys this family does not implement (by name)."""
        for key, what in UNIMPLEMENTED.items():
            if d.get(key):
                raise ConfigError(f"{where}['{key}']: {what} is not supported")
        if d.get("mlp_bias"):
            raise ConfigError(f"{where}['mlp_bias']=true is not supported (the MLP projections have no bias)")

    def features(self, d: Mapping[str, Any], where: str) -> dict[str, Any]:
        """The model features this config turns on: LlamaConfig fields (qkv_bias, o_bias, qk_norm, post_norm,
        rope_layers, fused_projections, sliding_window, layer_types)."""
        return {}

    def feature_fields(self, cfg) -> dict[str, Any]:
        """The HF config fields that carry those features back (to_hf_dict)."""
        return {}

    def gguf_check(self, cfg) -> None:
        """Refuse (ConfigError) what llama.cpp's architecture for this family (`gguf_arch`) cannot hold."""
        if cfg.sliding_window is not None:
            raise ConfigError(f"GGUF export: llama.cpp's {self.gguf_arch!r} architecture has no sliding-window layers")
