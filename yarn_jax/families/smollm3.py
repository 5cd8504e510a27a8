"""SmolLM3 (`SmolLM3ForCausalLM`): LLaMA with NoPE layers — the layers `no_rope_layers` marks 0 (by default
every `no_rope_layer_interval`-th, i.e. every 4th) use no rotary at all — `attention_bias`, and with
`use_sliding_window` a window on the layers `layer_types` marks (by default the NoPE ones)."""

from __future__ import annotations

from yarn_jax.errors import ConfigError
from yarn_jax.families.base import Family, flag, sliding_fields, sliding_layers


class SmolLM3(Family):
    model_type = "smollm3"
    architecture = "SmolLM3ForCausalLM"
    gguf_arch = "smollm3"
    gguf_interleaved = True  # llama.cpp converts it as LLaMA: q/k rows interleaved
    defaults = {"rope_theta": 2000000.0, "max_position_embeddings": 32768, "tie_word_embeddings": True}

    def features(self, d, where):
        n = d.get("num_hidden_layers")
        flags = d.get("no_rope_layers")
        if flags is None:  # HF's default: every interval-th layer (1-based) is NoPE
            interval = d.get("no_rope_layer_interval", 4)
            if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
                raise ConfigError(f"{where}['no_rope_layer_interval'] must be a positive integer, got {interval!r}")
            flags = [int((i + 1) % interval != 0) for i in range(n)]
        if not isinstance(flags, list) or len(flags) != n or any(f not in (0, 1) or isinstance(f, float) for f in flags):
            raise ConfigError(f"{where}['no_rope_layers'] must list 0 (NoPE) or 1 (rotary) for each of the {n} layers, "
                              f"got {flags!r}")
        bias = flag(d, "attention_bias", where)
        # HF: the window only with `use_sliding_window`; by default on the NoPE layers
        window = d.get("sliding_window") if flag(d, "use_sliding_window", where) else None
        sliding = sliding_layers(d, where, window, lambda n: ["full_attention" if f else "sliding_attention"
                                                              for f in flags])
        return {"qkv_bias": bias, "o_bias": bias, "rope_layers": tuple(bool(f) for f in flags), **sliding}

    def gguf_check(self, cfg):
        super().gguf_check(cfg)
        if cfg.rope_layers not in (None, tuple((i + 1) % 4 != 0 for i in range(cfg.num_hidden_layers))):
            raise ConfigError("GGUF export: llama.cpp's 'smollm3' architecture has a NoPE layer every 4th layer "
                              f"exactly; this model's no_rope_layers differ ({[int(r) for r in cfg.rope_layers]})")

    def feature_fields(self, cfg):
        rope_layers = cfg.rope_layers or (True,) * cfg.num_hidden_layers
        window = ({"use_sliding_window": False} if cfg.sliding_window is None else
                  {"use_sliding_window": True, **sliding_fields(cfg)})
        return {"attention_bias": cfg.qkv_bias, "mlp_bias": False, "no_rope_layers": [int(b) for b in rope_layers],
                **window}


SMOLLM3 = SmolLM3()
