"""Phi-3 (`Phi3ForCausalLM`): LLaMA blocks stored with fused projections — one `qkv_proj` ([q; k; v] rows)
and one `gate_up_proj` ([gate; up] rows) per layer — partial rotary (`partial_rotary_factor`, rotating the
first d features) and longrope with a top-level `original_max_position_embeddings`."""

from __future__ import annotations

from yarn_jax.errors import ConfigError
from yarn_jax.families.base import Family


class Phi3(Family):
    model_type = "phi3"
    architecture = "Phi3ForCausalLM"

    def check(self, d, where):
        super().check(d, where)
        if d.get("sliding_window") is not None:
            raise ConfigError(f"{where}['sliding_window']={d['sliding_window']!r}: sliding-window attention is not "
                              "supported yet")

    def features(self, d, where):
        return {"fused_projections": True}

    def feature_fields(self, cfg):
        # HF's longrope reads L0 from the top level first (Phi-3's configs put it there)
        return {"original_max_position_embeddings": cfg.rope.original_max_position_embeddings
                or cfg.max_position_embeddings, "sliding_window": None}


PHI3 = Phi3()
