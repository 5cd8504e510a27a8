"""Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): LLaMA with a bias on the q, k and v projections (not on o)."""

from __future__ import annotations

from yarn_jax.families.base import Family


class Qwen2(Family):
    model_type = "qwen2"
    architecture = "Qwen2ForCausalLM"
    gguf_arch = "qwen2"  # (NEOX rope in llama.cpp: q/k rows kept in HF's order)

    def features(self, d, where):
        return {"qkv_bias": True, "o_bias": False}

    def feature_fields(self, cfg):
        return {"use_sliding_window": False}


QWEN2 = Qwen2()
