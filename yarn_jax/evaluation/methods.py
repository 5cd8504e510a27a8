"""Context-extension methods by name, at a scale factor, as HF-style rope dicts.

`none` keeps the checkpoint's own rope. The named methods are the rope types a scale factor alone
configures (`rope.NAMED`, read from the method records): linear = Position Interpolation, ntk =
NTK-aware (b' = b s^(d/(d-2))), dynamic (HF's dynamic NTK), ntk_by_parts, yarn (NTK-by-parts +
temperature), dynamic_yarn. Any other entry is a full rope spec (JSON or the short form
`yarn:factor=4,beta_fast=16`) and is used as given.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from yarn_jax.errors import ConfigError
from yarn_jax.rope import NAMED, parse_rope_spec


@dataclasses.dataclass(frozen=True)
class Method:
    label: str  # e.g. "yarn x2"; unique within a run
    rope: dict[str, Any] | None  # None: the checkpoint's rope

    @property
    def key(self) -> str:
        """A stable string for result files (the label plus the exact rope dict)."""
        return f"{self.label} {json.dumps(self.rope, sort_keys=True)}"


def _fmt(x: float) -> str:
    return f"{x:g}"


def parse_method(spec: str, scale: float, original_context: int) -> Method:
    """'yarn' -> Method('yarn x2', {...factor: 2, original_max_position_embeddings: L0}); 'none' -> no
    override; anything else: a rope spec (ConfigError naming it if malformed)."""
    name = spec.strip()
    if name in ("none", "default"):
        return Method("none", None)
    if name in NAMED:
        if scale < 1:
            raise ConfigError(f"scale must be >= 1, got {scale}")
        rope: dict[str, Any] = {"rope_type": name, "factor": float(scale)}
        if NAMED[name]:
            rope["original_max_position_embeddings"] = int(original_context)
        return Method(f"{name} x{_fmt(scale)}", rope)
    rope = parse_rope_spec(name)
    if rope is None:
        return Method("none", None)
    label = rope.get("rope_type", rope.get("type", "?"))
    if "factor" in rope:
        label += f" x{_fmt(float(rope['factor']))}"
    extra = {k: v for k, v in rope.items() if k not in ("rope_type", "type", "factor",
                                                         "original_max_position_embeddings")}
    if extra:
        label += " (" + ", ".join(f"{k}={v}" for k, v in sorted(extra.items())) + ")"
    return Method(label, rope)


def parse_methods(specs, scales, original_context: int) -> list[Method]:
    """Every spec at every scale (named methods only; `none` and full specs once), duplicates dropped."""
    out: dict[str, Method] = {}
    for spec in specs:
        for scale in scales:
            m = parse_method(spec, scale, original_context)
            out.setdefault(m.key, m)
    labels = [m.label for m in out.values()]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"methods: two different rope configurations share a label in {labels}")
    return list(out.values())
