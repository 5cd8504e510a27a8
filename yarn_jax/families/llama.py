"""LLaMA (`LlamaForCausalLM`): the base family — RMSNorm, SwiGLU, GQA, rotary; `attention_bias` puts a bias
on all four attention projections."""

from __future__ import annotations

from yarn_jax.errors import ConfigError
from yarn_jax.families.base import Family, flag


class Llama(Family):
    model_type = "llama"
    architecture = "LlamaForCausalLM"
    gguf_arch = "llama"
    gguf_interleaved = True  # llama.cpp's convert script permutes q/k rows for its rope kernel

    def check(self, d, where):
        super().check(d, where)
        # LlamaForCausalLM has no sliding-window layers: a config asking for them is not a LLaMA
        if flag(d, "use_sliding_window", where) or "sliding_attention" in (d.get("layer_types") or []):
            raise ConfigError(f"{where}: LlamaForCausalLM has no sliding-window attention ('use_sliding_window' / "
                              "layer_types 'sliding_attention'); a model with it is another family")

    def features(self, d, where):
        bias = flag(d, "attention_bias", where)
        return {"qkv_bias": bias, "o_bias": bias}

    def feature_fields(self, cfg):
        return {"attention_bias": cfg.qkv_bias, "mlp_bias": False}


LLAMA = Llama()
