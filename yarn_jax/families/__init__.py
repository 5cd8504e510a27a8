"""Model families, one module each, registered by HF `model_type` (and architecture name). LLaMA is the
base; the others turn on features of the same blocks (see base.py)."""

from __future__ import annotations

from typing import Any, Mapping

from yarn_jax.errors import ConfigError
from yarn_jax.families.base import Family
from yarn_jax.families.llama import LLAMA
from yarn_jax.families.mistral import MISTRAL
from yarn_jax.families.olmo3 import OLMO3
from yarn_jax.families.phi3 import PHI3
from yarn_jax.families.qwen2 import QWEN2
from yarn_jax.families.qwen3 import QWEN3
from yarn_jax.families.smollm3 import SMOLLM3

FAMILIES: dict[str, Family] = {f.model_type: f for f in (LLAMA, QWEN2, QWEN3, MISTRAL, SMOLLM3, OLMO3, PHI3)}
GGUF_ARCHS: dict[str, Family] = {f.gguf_arch: f for f in FAMILIES.values() if f.gguf_arch}


def family_of(d: Mapping[str, Any], where: str) -> Family:
    """The family of an HF config dict, by `model_type`, else by `architectures`; ConfigError naming the
    model and listing the supported ones otherwise."""
    archs = d.get("architectures") or []
    if not isinstance(archs, list):
        raise ConfigError(f"{where}['architectures'] must be a list, got {archs!r}")
    model_type = d.get("model_type")
    by_arch = [f for f in FAMILIES.values() if f.architecture in archs]
    family = FAMILIES.get(model_type) if model_type is not None else (by_arch[0] if by_arch else LLAMA)
    if family is None or (archs and family not in by_arch):
        supported = ", ".join(f"{f.architecture} ({f.model_type})" for f in FAMILIES.values())
        raise ConfigError(f"{where}: unsupported architecture {archs or model_type!r} (model_type={model_type!r}); "
                          f"supported: {supported}")
    return family


__all__ = ["FAMILIES", "GGUF_ARCHS", "Family", "family_of"]
