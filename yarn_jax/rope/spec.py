"""The command-line spelling of a rope dict: HF-style JSON / a YAML flow mapping, or the short form
`yarn:factor=4,original_max_position_embeddings=8192` (`default` or `none` for no scaling)."""

from __future__ import annotations

from typing import Any

import yaml

from yarn_jax.errors import ConfigError


def parse_rope_spec(spec: str) -> dict[str, Any] | None:
    """The rope dict a spec names (None for no scaling); ConfigError naming the spec when malformed."""
    spec = spec.strip()
    if spec.startswith("{"):  # JSON, or a YAML flow mapping ({rope_type: yarn, factor: 4})
        try:
            d = yaml.safe_load(spec)
        except yaml.YAMLError as e:
            raise ConfigError(f"rope spec {spec!r} is not valid JSON/YAML ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"rope spec {spec!r} must be a mapping")
        return d
    rope_type, _, rest = spec.partition(":")
    if rope_type in ("", "none", "default") and not rest:
        return None
    d: dict[str, Any] = {"rope_type": rope_type}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"rope spec {spec!r}: expected key=value, got {item!r}")
        if value.lower() in ("true", "false"):
            d[key.strip()] = value.lower() == "true"
            continue
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"rope spec {spec!r}: value of {key!r} must be a number or true/false") from None
        d[key.strip()] = int(number) if number.is_integer() and "." not in value and "e" not in value else number
    return d
