"""A validated rope configuration, and the generic reader that turns an HF rope dict into one.

Three levels, three names: the HF dict (`rope_scaling` / `rope_parameters` in config.json) ->
`RopeConfig` (validated and hashable: the fields every method shares plus `method`, a record of the
method's own parameters) -> frequency arrays (`RopeConfig.frequencies`, `rope_frequencies`). Each method
is one record class (`methods.py`) that declares its keys as dataclass fields with a reader each and owns
its frequencies, its checks and its HF form; nothing here knows a method by name.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable, ClassVar, Mapping

from yarn_jax.errors import ConfigError

L0 = "original_max_position_embeddings"
COMMON_KEYS = frozenset({"rope_type", "type", "rope_theta", "partial_rotary_factor"})


@dataclasses.dataclass(frozen=True)
class Context:
    """What reading one rope dict needs besides the dict."""

    where: str  # the dict's name in messages, e.g. "config.json['rope_parameters']"
    rope_type: str
    max_position_embeddings: int
    rotary_dim: int
    top_l0: int | None = None  # a top-level original_max_position_embeddings (Phi-3): wins over the dict's


Reader = Callable[[Mapping[str, Any], str, Context, dict], Any]


def param(reader: Reader, default: Any = None):
    """A method parameter: a dataclass field read from the rope dict by `reader(d, key, ctx, read_so_far)`
    (a reader marked `required` refuses an absent key)."""
    return dataclasses.field(default=default, metadata={"read": reader,
                                                        "required": getattr(reader, "required", False)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeMethod:
    """One rope method: its fields are its keys in the HF dict (read in declaration order)."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()  # other spellings of rope_type (HF `type`, old names)
    in_transformers: ClassVar[bool] = True  # transformers implements it (HF-exact parity applies)
    length_dependent: ClassVar[bool] = False  # its frequencies change with the sequence length
    gguf_type: ClassVar[str | None] = None  # llama.cpp's `rope.scaling.type` for it, if any
    title: ClassVar[str] = ""  # the name papers and figures use ("YaRN", "PI (linear)"); default: `name`

    @classmethod
    def keys(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))

    @classmethod
    def needs_l0(cls) -> bool:
        """Whether it reads the pre-training context L0 (original_max_position_embeddings)."""
        return L0 in cls.keys()

    @classmethod
    def nameable(cls) -> bool:
        """Whether a name and a scale factor alone configure it (a named method of the eval CLI)."""
        return "factor" in cls.keys() and not any(f.metadata["required"] for f in dataclasses.fields(cls)
                                                   if f.name not in ("factor", L0))

    @classmethod
    def read(cls, d: Mapping[str, Any], ctx: Context) -> "RopeMethod":
        """The record from an HF dict: every field by its reader, then the cross-field checks."""
        got: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            got[f.name] = f.metadata["read"](d, f.name, ctx, got)
        method = cls(**got)
        method.check(ctx.where)
        return method

    def check(self, where: str) -> None:
        """Checks across fields (ConfigError naming them)."""

    def frequencies(self, rope: "RopeConfig", seq_len) -> tuple[Any, Any]:
        """(inv_freq [d/2], attention_factor) at the current length (which may be traced)."""
        raise NotImplementedError

    def parameters(self) -> dict[str, Any]:
        """The method's keys with their values (None omitted; tuples as lists), sorted."""
        out = {}
        for f in sorted(dataclasses.fields(self), key=lambda f: f.name):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def hf_parameters(self, rope: "RopeConfig") -> dict[str, Any]:
        """transformers' `rope_parameters` for this method (rope_theta inside); ConfigError if it has none."""
        return rope.to_dict()

    def gguf_metadata(self, rope: "RopeConfig") -> dict[str, Any]:
        """llama.cpp's `{arch}.rope.*` keys (without the prefix) that make its rope kernel compute these
        frequencies; ConfigError where llama.cpp has no such rope."""
        if self.gguf_type is None:
            raise ConfigError(f"rope_type {self.name!r} has no llama.cpp equivalent; a GGUF file cannot carry it "
                              "(llama.cpp reads default, linear and yarn)")
        return {"freq_base": rope.theta, "scaling.type": self.gguf_type, "scaling.factor": self.factor}


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """A validated rope configuration (hashable, so it can be a static argument of `jax.jit`)."""

    method: RopeMethod
    theta: float
    head_dim: int
    max_position_embeddings: int
    partial_rotary_factor: float = 1.0

    @property
    def rope_type(self) -> str:
        return self.method.name

    @property
    def rotary_dim(self) -> int:
        """d = int(head_dim * partial_rotary_factor), as HF computes it."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def original_max_position_embeddings(self) -> int | None:
        """The pre-training context L0 the method was configured with, if it reads one."""
        return getattr(self.method, L0, None)

    @property
    def designed_context(self) -> int:
        """The context the rope is configured for: L0 x factor for a scaling method (the paper's s = L'/L),
        else the model's max_position_embeddings."""
        l0, factor = self.original_max_position_embeddings, getattr(self.method, "factor", None)
        if l0 is None or factor is None:
            return self.max_position_embeddings
        return int(round(l0 * factor))

    def frequencies(self, seq_len):
        """(inv_freq [d/2], attention_factor) of the method at this length (host or traced values)."""
        return self.method.frequencies(self, seq_len)

    def to_dict(self) -> dict[str, Any]:
        """The rope dict in transformers-5 `rope_parameters` form (rope_theta inside); parses back to self."""
        out: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.theta}
        if self.partial_rotary_factor != 1.0:
            out["partial_rotary_factor"] = self.partial_rotary_factor
        return {**out, **self.method.parameters()}

    def hf_parameters(self) -> dict[str, Any]:
        """transformers' `rope_parameters` (an exact HF equivalent for yarn_jax-only methods where one
        exists; ConfigError where none does)."""
        return self.method.hf_parameters(self)


def parse(d: Mapping[str, Any] | None, methods: Mapping[str, type[RopeMethod]], *, head_dim: int,
          max_position_embeddings: int, rope_theta: float | None, partial_rotary_factor: float | None,
          original_max_position_embeddings: int | None, where: str) -> RopeConfig:
    """The generic reader behind `parse_rope_config`: the common fields, then the method's record."""
    d = dict(d or {})
    aliases = {a: name for name, m in methods.items() for a in m.aliases}
    if "rope_type" in d and "type" in d and d["rope_type"] != d["type"]:
        raise ConfigError(f"{where}: 'rope_type'={d['rope_type']!r} and 'type'={d['type']!r} disagree")
    raw_type = d.get("rope_type", d.get("type", "default"))
    if not isinstance(raw_type, str):
        raise ConfigError(f"{where}['rope_type'] must be a string, got {raw_type!r}")
    method = methods.get(aliases.get(raw_type, raw_type))
    if method is None:
        raise ConfigError(f"{where}['rope_type']={raw_type!r} is not supported; supported: {', '.join(methods)}")
    unknown = set(d) - COMMON_KEYS - method.keys()
    if unknown:  # HF also only warns on unknown keys
        warnings.warn(f"{where}: keys {sorted(unknown)} are not used by rope_type {method.name!r}", stacklevel=3)

    top = {"rope_theta": rope_theta, "partial_rotary_factor": partial_rotary_factor}  # top-level config fields
    top_where = where.split("[")[0]
    if isinstance(max_position_embeddings, bool) or not isinstance(max_position_embeddings, int) \
            or max_position_embeddings < 1:
        raise ConfigError(f"{top_where}['max_position_embeddings'] must be a positive integer, got "
                          f"{max_position_embeddings!r}")
    theta = number(d, "rope_theta", where)
    if theta is None:
        theta = number(top, "rope_theta", top_where)
    theta = float(10000.0 if theta is None else theta)
    if theta <= 1.0:
        raise ConfigError(f"{where}['rope_theta'] must be > 1, got {theta}")
    prf = number(d, "partial_rotary_factor", where)
    if prf is None:
        prf = number(top, "partial_rotary_factor", top_where)
    prf = float(1.0 if prf is None else prf)
    if not 0.0 < prf <= 1.0:
        raise ConfigError(f"{where}['partial_rotary_factor'] must be in (0, 1], got {prf}")
    rotary_dim = int(head_dim * prf)
    if rotary_dim < 4 or rotary_dim % 2:
        raise ConfigError(f"{where}: rotary dim int(head_dim*partial_rotary_factor)={rotary_dim} must be even and >= 4")
    ctx = Context(where, method.name, int(max_position_embeddings), rotary_dim, original_max_position_embeddings)
    return RopeConfig(method.read(d, ctx), theta, int(head_dim), int(max_position_embeddings), prf)


# ----------------------------------------------------------------------------------------------------------
# Readers of one key (the `param` readers of the method records).


def number(d: Mapping[str, Any], key: str, where: str, default: Any = None) -> Any:
    """d[key] as a finite number (None when absent); NaN and inf are refused, naming the field."""
    value = d.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}['{key}'] must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{where}['{key}'] must be finite, got {value!r}")
    return value


def scale_factor(implicit: bool = False, default: float | None = None) -> Reader:
    """The scale factor s >= 1; `implicit`: absent means max_position_embeddings / L0 (HF's yarn/longrope);
    else absent means `default` (an error when there is none)."""
    def read(d, key, ctx, got):
        factor = number(d, key, ctx.where, default)
        if factor is None and implicit:
            factor = ctx.max_position_embeddings / got[L0]
        if factor is None:
            raise ConfigError(f"{ctx.where}['{key}'] is required for rope_type {ctx.rope_type!r}")
        if factor < 1.0:
            raise ConfigError(f"{ctx.where}['{key}'] must be >= 1, got {factor}")
        return float(factor)
    return read


def pretraining_context(required: bool) -> Reader:
    """L0 (the top-level field first, as HF); absent: an error when `required` (the yarn family), else
    max_position_embeddings (HF's standardisation fills it in for llama3 and longrope)."""
    def read(d, key, ctx, got):
        l0 = ctx.top_l0 if ctx.top_l0 is not None else d.get(key)
        if l0 is None and required:
            raise ConfigError(
                f"{ctx.where}['{key}'] is required for rope_type {ctx.rope_type!r}: the "
                f"pre-training context L0 sets the correction range (HF would silently use "
                f"max_position_embeddings={ctx.max_position_embeddings}, the bug of transformers #33783)")
        l0 = ctx.max_position_embeddings if l0 is None else l0
        if isinstance(l0, bool) or not isinstance(l0, (int, float)) or l0 < 1 or int(l0) != l0:
            raise ConfigError(f"{ctx.where}['{key}'] must be a positive integer, got {l0!r}")
        return int(l0)
    return read


def optional_number(positive: bool = False) -> Reader:
    def read(d, key, ctx, got):
        value = number(d, key, ctx.where)
        if value is not None and positive and value <= 0:
            raise ConfigError(f"{ctx.where}['{key}'] must be > 0, got {value}")
        return None if value is None else float(value)
    return read


def temperature_coefficient(d, key, ctx, got) -> float | None:
    """YaRN's k in sqrt(1/t) = k ln s + 1 (paper Eq. 22: 0.1): a number >= 0, or absent."""
    value = number(d, key, ctx.where)
    if value is not None and value < 0:
        raise ConfigError(f"{ctx.where}['{key}'] must be >= 0 (0: no temperature, NTK-by-parts), got {value}")
    return None if value is None else float(value)


def required_number(d, key, ctx, got) -> float:
    value = number(d, key, ctx.where)
    if value is None:
        raise ConfigError(f"{ctx.where}['{key}'] is required for rope_type {ctx.rope_type!r}")
    return float(value)


required_number.required = True


def number_or(default: float) -> Reader:
    """HF's `d.get(key) or default`: absent, None and 0 all mean the default."""
    return lambda d, key, ctx, got: float(number(d, key, ctx.where) or default)


def flag(default: bool) -> Reader:
    def read(d, key, ctx, got):
        value = d.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{ctx.where}['{key}'] must be true or false, got {value!r}")
        return value
    return read


def pair_factors(d, key, ctx, got) -> tuple[float, ...]:
    """One positive finite number per rotary pair (rotary_dim / 2 of them)."""
    v = d.get(key)
    if not isinstance(v, (list, tuple)) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in v):
        raise ConfigError(f"{ctx.where}['{key}'] must be a list of finite positive numbers, got {v!r}")
    if len(v) != ctx.rotary_dim // 2:
        raise ConfigError(f"{ctx.where}['{key}'] has length {len(v)}, expected rotary_dim/2 = {ctx.rotary_dim // 2}")
    return tuple(float(x) for x in v)


pair_factors.required = True
