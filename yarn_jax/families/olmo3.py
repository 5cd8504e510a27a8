"""OLMo 3 (`Olmo3ForCausalLM`): LLaMA blocks with post-norm (RMSNorm on the attention and MLP outputs, none
on their inputs; HF's norm scales in float32), an RMSNorm on the whole q and k projections before the
rotary, three sliding-window layers to each full one (`layer_types`), and a rope per layer type —
`rope_parameters` = {"full_attention": {...}, "sliding_attention": {...}}: YaRN on the full layers, the
plain rotary on the sliding ones. A transformers-4 `rope_scaling` applies to the full layers only."""

from __future__ import annotations

from yarn_jax.families.base import Family, flag, sliding_fields, sliding_layers


class Olmo3(Family):
    model_type = "olmo3"
    architecture = "Olmo3ForCausalLM"
    defaults = {"rope_theta": 500000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 2048,
                "sliding_window": 4096}
    rope_per_layer_type = True

    def features(self, d, where):
        bias = flag(d, "attention_bias", where)
        sliding = sliding_layers(d, where, d["sliding_window"], lambda n: [
            "sliding_attention" if (i + 1) % 4 else "full_attention" for i in range(n)])
        return {"qkv_bias": bias, "o_bias": bias, "qk_norm": "projection", "post_norm": True, **sliding}

    def feature_fields(self, cfg):
        return {"attention_bias": cfg.qkv_bias, **sliding_fields(cfg)}


OLMO3 = Olmo3()
