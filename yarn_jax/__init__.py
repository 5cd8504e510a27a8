"""yarn_jax: YaRN and the other RoPE context-extension methods for LLaMA models in JAX/Flax.

The names below load on first use (PEP 562): `import yarn_jax.rope` does not pull in the model,
checkpoints or transformers. Code inside the package imports the defining modules, not this facade.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "from_pretrained": "yarn_jax.api", "PretrainedModel": "yarn_jax.api",
    "LlamaConfig": "yarn_jax.config",
    "RopeConfig": "yarn_jax.rope", "ROPE_TYPES": "yarn_jax.rope", "parse_rope_config": "yarn_jax.rope",
    "rope_frequencies": "yarn_jax.rope", "apply_rotary": "yarn_jax.rope",
    "YarnJaxError": "yarn_jax.errors", "ConfigError": "yarn_jax.errors", "CheckpointError": "yarn_jax.errors",
    "AssetError": "yarn_jax.errors",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'yarn_jax' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])
