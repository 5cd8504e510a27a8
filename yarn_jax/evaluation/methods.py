"""Context-extension methods by name, at a scale factor, as HF-style rope dicts.

`none` keeps the checkpoint's own rope. The named methods are the rope types a scale factor alone
configures (`rope.NAMED`, read from the method records): linear = Position Interpolation, ntk =
NTK-aware (b' = b s^(d/(d-2))), dynamic (HF's dynamic NTK), ntk_by_parts, yarn (NTK-by-parts +
temperature), dynamic_yarn. A named method with parameters but no factor (`yarn:temperature=0.07`,
`dynamic_yarn:beta_fast=16`) is scaled like the bare name, its parameters added. Any other entry is a full
rope spec (JSON or the short form `yarn:factor=4,beta_fast=16`) and is used as given.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from yarn_jax.errors import ConfigError
from yarn_jax.rope import METHODS, NAMED, parse_rope_spec


@dataclasses.dataclass(frozen=True)
class Method:
    label: str  # e.g. "yarn x2"; unique within a run
    rope: dict[str, Any] | None  # None: the checkpoint's rope

    @property
    def key(self) -> str:
        """A stable string for result files (the label plus the exact rope dict)."""
        return f"{self.label} {json.dumps(self.rope, sort_keys=True)}"


def display_label(label: str) -> str:
    """A method's label as a figure shows it: the rope type by the name papers use and `×` for the scale
    ("yarn x2" -> "YaRN ×2", "linear x4 (beta=1)" -> "PI (linear) ×4 (beta=1)"); `none` and full specs as
    they are."""
    head, sep, rest = label.partition(" ")
    method = METHODS.get(head)
    if method is None or (sep and not rest.startswith("x")):
        return label
    return (method.title or method.name) + (" ×" + rest[1:] if sep else "")


def _fmt(x: float) -> str:
    return f"{x:g}"


def parse_method(spec: str, scale: float, original_context: int) -> Method:
    """'yarn' -> Method('yarn x2', {...factor: 2, original_max_position_embeddings: L0}); 'none' -> no
    override; anything else: a rope spec (ConfigError naming it if malformed)."""
    name = spec.strip()
    if name in ("none", "default"):
        return Method("none", None)
    rope = {"rope_type": name} if name in NAMED else parse_rope_spec(name)
    if rope is None:
        return Method("none", None)
    named = rope.get("rope_type") in NAMED and "factor" not in rope and "type" not in rope
    if named:  # scaled by `scale`, from L0
        if scale < 1:
            raise ConfigError(f"scale must be >= 1, got {scale}")
        rope["factor"] = float(scale)
        if NAMED[rope["rope_type"]]:
            rope.setdefault("original_max_position_embeddings", int(original_context))
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


def parse_pairs(entries, methods: list[Method], scales, original_context: int) -> list[tuple[Method, Method]]:
    """`compare` entries 'A vs B' -> pairs of the run's methods. A side is a label ('yarn x2') or a method
    spec as given to --methods ('yarn'), which names it at every scale; two such sides pair scale by scale."""
    by_key = {m.key: m for m in methods}
    labels = [m.label for m in methods]

    def side(text: str, entry: str) -> list[Method]:
        named = [m for m in methods if m.label == text]
        if not named:
            try:
                named = [by_key[k] for k in dict.fromkeys(parse_method(text, s, original_context).key for s in scales)
                         if k in by_key]
            except ConfigError:
                named = []
        if not named:
            raise ConfigError(f"compare: {text!r} in {entry!r} is not one of this run's methods {labels}")
        return named

    pairs = []
    for entry in entries:
        parts = entry.split(" vs ")
        if len(parts) != 2:
            raise ConfigError(f"compare: {entry!r} must read 'A vs B' (method labels or names, e.g. 'yarn vs ntk')")
        a, b = side(parts[0].strip(), entry), side(parts[1].strip(), entry)
        if len(a) != len(b) and 1 not in (len(a), len(b)):
            raise ConfigError(f"compare: {entry!r} pairs {len(a)} methods with {len(b)}")
        n = max(len(a), len(b))
        pairs += [(a[i % len(a)], b[i % len(b)]) for i in range(n)]
    return list({(a.key, b.key): (a, b) for a, b in pairs}.values())  # duplicates dropped
