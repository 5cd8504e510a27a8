"""yarn_jax: YaRN and the other RoPE context-extension methods for LLaMA models in JAX/Flax."""

from yarn_jax.api import PretrainedModel, from_pretrained
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import AssetError, CheckpointError, ConfigError, YarnJaxError
from yarn_jax.rope import ROPE_TYPES, RopeConfig, apply_rotary, parse_rope_config, rope_frequencies

__version__ = "0.1.0"

__all__ = [
    "from_pretrained", "PretrainedModel", "LlamaConfig", "RopeConfig", "ROPE_TYPES", "parse_rope_config",
    "rope_frequencies", "apply_rotary", "YarnJaxError", "ConfigError", "CheckpointError", "AssetError",
]
