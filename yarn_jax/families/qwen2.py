"""Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): LLaMA with a bias on the q, k and v projections (not on o); with
`use_sliding_window`, a `sliding_window` on the layers from `max_window_layers` on (or as `layer_types`
lists them)."""

from __future__ import annotations

from yarn_jax.families.base import Family, flag, sliding_fields, sliding_layers


def qwen_sliding_layers(d, where) -> dict:
    """Qwen2/Qwen3's rule (HF's config __post_init__): the window only with `use_sliding_window`; layers
    i >= `max_window_layers` slide unless `layer_types` says otherwise."""
    window = d.get("sliding_window", 4096) if flag(d, "use_sliding_window", where) else None
    first = d.get("max_window_layers", 28)
    return sliding_layers(d, where, window,
                          lambda n: ["sliding_attention" if i >= first else "full_attention" for i in range(n)])


def qwen_sliding_fields(cfg) -> dict:
    if cfg.sliding_window is None:
        return {"use_sliding_window": False}
    return {"use_sliding_window": True, **sliding_fields(cfg)}


class Qwen2(Family):
    model_type = "qwen2"
    architecture = "Qwen2ForCausalLM"
    gguf_arch = "qwen2"  # (NEOX rope in llama.cpp: q/k rows kept in HF's order)
    defaults = {"max_position_embeddings": 32768}

    def features(self, d, where):
        return {"qkv_bias": True, "o_bias": False, **qwen_sliding_layers(d, where)}

    def feature_fields(self, cfg):
        return qwen_sliding_fields(cfg)


QWEN2 = Qwen2()
