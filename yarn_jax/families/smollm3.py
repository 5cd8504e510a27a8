"""SmolLM3 (`SmolLM3ForCausalLM`): LLaMA with NoPE layers — the layers `no_rope_layers` marks 0 (by default
every `no_rope_layer_interval`-th, i.e. every 4th) use no rotary at all — and `attention_bias`."""

from __future__ import annotations

from yarn_jax.errors import ConfigError
from yarn_jax.families.base import Family, flag


class SmolLM3(Family):
    model_type = "smollm3"
    architecture = "SmolLM3ForCausalLM"

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
        return {"qkv_bias": bias, "o_bias": bias, "rope_layers": tuple(bool(f) for f in flags)}

    def feature_fields(self, cfg):
        rope_layers = cfg.rope_layers or (True,) * cfg.num_hidden_layers
        return {"attention_bias": cfg.qkv_bias, "mlp_bias": False, "use_sliding_window": False,
                "no_rope_layers": [int(b) for b in rope_layers]}


SMOLLM3 = SmolLM3()
