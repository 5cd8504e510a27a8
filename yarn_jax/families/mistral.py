"""Mistral (`MistralForCausalLM`): LLaMA with a `sliding_window` on every layer (HF's default 4096 when the
key is absent; null for none). Per-layer `layer_types` are Ministral's, which MistralForCausalLM ignores:
refused rather than silently dropped."""

from __future__ import annotations

from yarn_jax.errors import ConfigError
from yarn_jax.families.base import Family, sliding_layers


class Mistral(Family):
    model_type = "mistral"
    architecture = "MistralForCausalLM"
    gguf_arch = None  # llama.cpp files Mistral under "llama" (read as LLaMA: it has no sliding window there)
    defaults = {"max_position_embeddings": 4096 * 32, "sliding_window": 4096}

    def features(self, d, where):
        types = d.get("layer_types")
        if types is not None and set(types) != {"sliding_attention" if d["sliding_window"] else "full_attention"}:
            raise ConfigError(f"{where}['layer_types']: MistralForCausalLM applies 'sliding_window' to every layer; "
                              "per-layer types are Ministral's, which is not supported")
        return sliding_layers(d, where, d["sliding_window"], lambda n: ["sliding_attention"] * n)

    def feature_fields(self, cfg):
        return {"sliding_window": cfg.sliding_window}


MISTRAL = Mistral()
