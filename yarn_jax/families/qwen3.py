"""Qwen3 (`Qwen3ForCausalLM`): LLaMA with an RMSNorm over head_dim on every query and key head before the
rotary, an explicit head_dim, and `attention_bias` on all four projections."""

from __future__ import annotations

from yarn_jax.families.base import Family, flag


class Qwen3(Family):
    model_type = "qwen3"
    architecture = "Qwen3ForCausalLM"
    gguf_arch = "qwen3"

    def features(self, d, where):
        bias = flag(d, "attention_bias", where)
        return {"qkv_bias": bias, "o_bias": bias, "qk_norm": True}

    def feature_fields(self, cfg):
        return {"attention_bias": cfg.qkv_bias, "use_sliding_window": False}


QWEN3 = Qwen3()
