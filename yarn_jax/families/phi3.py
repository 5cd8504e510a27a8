"""Phi-3 (`Phi3ForCausalLM`): LLaMA blocks stored with fused projections — one `qkv_proj` ([q; k; v] rows)
and one `gate_up_proj` ([gate; up] rows) per layer — partial rotary (`partial_rotary_factor`, rotating the
first d features), longrope with a top-level `original_max_position_embeddings`, and a `sliding_window` on
every layer when set."""

from __future__ import annotations

from yarn_jax.families.base import Family, sliding_layers


class Phi3(Family):
    model_type = "phi3"
    architecture = "Phi3ForCausalLM"
    defaults = {"rms_norm_eps": 1e-5, "max_position_embeddings": 4096}

    def features(self, d, where):
        # `sliding_window` (e.g. 2047 in Phi-3-mini-4k) applies to every layer
        window = sliding_layers(d, where, d.get("sliding_window"), lambda n: ["sliding_attention"] * n)
        return {"fused_projections": True, **window}

    def feature_fields(self, cfg):
        # HF's longrope reads L0 from the top level first (Phi-3's configs put it there)
        return {"original_max_position_embeddings": cfg.rope.original_max_position_embeddings
                or cfg.max_position_embeddings, "sliding_window": cfg.sliding_window}


PHI3 = Phi3()
