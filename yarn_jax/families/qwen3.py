"""Qwen3 (`Qwen3ForCausalLM`): LLaMA with an RMSNorm over head_dim on every query and key head before the
rotary, an explicit head_dim, `attention_bias` on all four projections, and Qwen2's sliding-window rule."""

from __future__ import annotations

from yarn_jax.errors import ConfigError
from yarn_jax.families.base import Family, flag
from yarn_jax.families.qwen2 import qwen_sliding_fields, qwen_sliding_layers


class Qwen3(Family):
    model_type = "qwen3"
    architecture = "Qwen3ForCausalLM"
    gguf_arch = "qwen3"
    defaults = {"max_position_embeddings": 32768}

    def features(self, d, where):
        bias = flag(d, "attention_bias", where)
        return {"qkv_bias": bias, "o_bias": bias, "qk_norm": "head", **qwen_sliding_layers(d, where)}

    def gguf_check(self, cfg):
        super().gguf_check(cfg)
        if cfg.qkv_bias:  # llama.cpp refuses to load such a file (measured: llama-cpp-python 0.3.36)
            raise ConfigError("GGUF export: llama.cpp's 'qwen3' architecture has no attention biases")

    def feature_fields(self, cfg):
        return {"attention_bias": cfg.qkv_bias, **qwen_sliding_fields(cfg)}


QWEN3 = Qwen3()
