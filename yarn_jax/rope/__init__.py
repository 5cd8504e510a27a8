"""Rotary position embeddings and every RoPE context-extension method, as pure functions.

`config.py`: `RopeConfig` and the generic reader of HF rope dicts; `methods.py`: one record per method
(keys, checks, frequencies, HF form) and `parse_rope_config` / `rope_frequencies`; `rotary.py`: cos/sin
and the rotation; `spec.py`: the command-line spelling of a rope dict.
"""

from yarn_jax.rope.config import RopeConfig, RopeMethod
from yarn_jax.rope.methods import (
    GGUF_TYPES,
    HF_ROPE_TYPES,
    METHODS,
    NAMED,
    ROPE_TYPES,
    get_mscale,
    parse_rope_config,
    rope_frequencies,
    yarn_correction_range,
)
from yarn_jax.rope.rotary import apply_rotary, rotary_cos_sin
from yarn_jax.rope.spec import parse_rope_spec

__all__ = ["RopeConfig", "RopeMethod", "METHODS", "ROPE_TYPES", "HF_ROPE_TYPES", "NAMED", "GGUF_TYPES",
           "parse_rope_config", "rope_frequencies", "get_mscale", "yarn_correction_range", "apply_rotary",
           "rotary_cos_sin", "parse_rope_spec"]
