"""Rotary position embeddings and every RoPE context-extension method, as pure functions.

Each method maps ``(RopeConfig, seq_len) -> (inv_freq [d/2] float32, attention_factor)``; the attention
factor multiplies cos and sin (so attention logits are scaled by its square), exactly as HF transformers'
``LlamaRotaryEmbedding`` does. Methods are keyed by HF ``rope_type`` names where one exists
(``default, linear, dynamic, yarn, llama3, longrope``), plus the YaRN paper's variants that HF lacks
(``ntk``, ``ntk_by_parts``, ``dynamic_yarn``). See ../shared/design/METHOD.md for the equations.

``seq_len`` may be a traced scalar: the length-dependent methods (``dynamic``, ``longrope``,
``dynamic_yarn``) use ``jnp.where`` rather than Python branches, so one compiled function serves every
length.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from yarn_jax.errors import ConfigError

# HF `type` spellings and old names accepted as aliases of our canonical rope_type names.
_ALIASES = {"dynamic-yarn": "dynamic_yarn", "ntk-by-parts": "ntk_by_parts", "su": "longrope"}

# Keys each method reads from the rope dict (besides rope_type/type/rope_theta/partial_rotary_factor).
_KEYS: dict[str, set[str]] = {
    "default": set(),
    "linear": {"factor"},
    "dynamic": {"factor"},
    "ntk": {"factor"},
    "yarn": {"factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow",
             "mscale", "mscale_all_dim", "truncate"},
    "ntk_by_parts": {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "truncate"},
    "dynamic_yarn": {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "truncate",
                     "finetuned"},
    "llama3": {"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"},
    "longrope": {"factor", "original_max_position_embeddings", "attention_factor", "short_factor",
                 "long_factor"},
}
ROPE_TYPES = tuple(_KEYS)
# The types transformers itself implements (the others exist only in yarn_jax).
HF_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")
_COMMON_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """A validated rope configuration (hashable, so it can be a static argument of ``jax.jit``)."""

    rope_type: str
    theta: float
    head_dim: int
    max_position_embeddings: int
    partial_rotary_factor: float = 1.0
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    attention_factor: float | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None
    finetuned: bool = False

    @property
    def rotary_dim(self) -> int:
        """d = int(head_dim * partial_rotary_factor), as HF computes it."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def is_dynamic(self) -> bool:
        """True when frequencies depend on the current sequence length."""
        return self.rope_type in ("dynamic", "dynamic_yarn", "longrope")

    def to_dict(self) -> dict[str, Any]:
        """The HF-style dict (transformers-5 ``rope_parameters`` form, ``rope_theta`` inside)."""
        out: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.theta}
        if self.partial_rotary_factor != 1.0:
            out["partial_rotary_factor"] = self.partial_rotary_factor
        for key in sorted(_KEYS[self.rope_type]):
            value = getattr(self, key)
            if value is None:
                continue
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


def _number(d: Mapping[str, Any], key: str, where: str, default: Any = None) -> Any:
    """d[key] as a finite number (None when absent); NaN and inf are refused, naming the field."""
    value = d.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}['{key}'] must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{where}['{key}'] must be finite, got {value!r}")
    return value


def parse_rope_config(
    rope: Mapping[str, Any] | None,
    *,
    head_dim: int,
    max_position_embeddings: int,
    rope_theta: float | None = None,
    partial_rotary_factor: float | None = None,
    original_max_position_embeddings: int | None = None,
    where: str = "rope_scaling",
) -> RopeConfig:
    """Validate an HF rope dict as users have it in config.json and return a RopeConfig.

    Accepts transformers-4 ``rope_scaling`` (theta from the top-level ``rope_theta``) and transformers-5
    ``rope_parameters`` (``rope_theta`` inside); ``type`` is an alias of ``rope_type``. Top-level
    ``original_max_position_embeddings`` (Phi-3 style) takes priority over the dict's, as in HF.
    Unlike HF (which only warns or silently substitutes ``max_position_embeddings``), invalid values raise
    ConfigError naming the field: unknown type, factor < 1, yarn-family without
    ``original_max_position_embeddings``, beta_fast < beta_slow, longrope lists of the wrong length.
    """
    d = dict(rope or {})
    if "rope_type" in d and "type" in d and d["rope_type"] != d["type"]:
        raise ConfigError(f"{where}: 'rope_type'={d['rope_type']!r} and 'type'={d['type']!r} disagree")
    raw_type = d.get("rope_type", d.get("type", "default"))
    if not isinstance(raw_type, str):
        raise ConfigError(f"{where}['rope_type'] must be a string, got {raw_type!r}")
    rope_type = _ALIASES.get(raw_type, raw_type)
    if rope_type not in _KEYS:
        raise ConfigError(
            f"{where}['rope_type']={raw_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}"
        )
    unknown = set(d) - _COMMON_KEYS - _KEYS[rope_type]
    if unknown:  # HF also only warns on unknown keys
        warnings.warn(f"{where}: keys {sorted(unknown)} are not used by rope_type {rope_type!r}", stacklevel=2)

    top = {"rope_theta": rope_theta, "partial_rotary_factor": partial_rotary_factor}  # top-level config fields
    top_where = where.split("[")[0]
    if isinstance(max_position_embeddings, bool) or not isinstance(max_position_embeddings, int) \
            or max_position_embeddings < 1:
        raise ConfigError(f"{top_where}['max_position_embeddings'] must be a positive integer, got "
                          f"{max_position_embeddings!r}")
    theta = _number(d, "rope_theta", where)
    if theta is None:
        theta = _number(top, "rope_theta", top_where)
    theta = float(10000.0 if theta is None else theta)
    if theta <= 1.0:
        raise ConfigError(f"{where}['rope_theta'] must be > 1, got {theta}")
    prf = _number(d, "partial_rotary_factor", where)
    if prf is None:
        prf = _number(top, "partial_rotary_factor", top_where)
    prf = float(1.0 if prf is None else prf)
    if not 0.0 < prf <= 1.0:
        raise ConfigError(f"{where}['partial_rotary_factor'] must be in (0, 1], got {prf}")
    rotary_dim = int(head_dim * prf)
    if rotary_dim < 4 or rotary_dim % 2:
        raise ConfigError(f"{where}: rotary dim int(head_dim*partial_rotary_factor)={rotary_dim} must be even and >= 4")

    kw: dict[str, Any] = dict(rope_type=rope_type, theta=theta, head_dim=int(head_dim),
                              max_position_embeddings=int(max_position_embeddings), partial_rotary_factor=prf)
    if rope_type == "default":
        return RopeConfig(**kw)

    l0 = original_max_position_embeddings if original_max_position_embeddings is not None else d.get(
        "original_max_position_embeddings")
    if l0 is None and rope_type in ("llama3", "longrope"):
        l0 = max_position_embeddings  # HF standardisation fills it in for these
    if l0 is None and rope_type in ("yarn", "ntk_by_parts", "dynamic_yarn"):
        raise ConfigError(
            f"{where}['original_max_position_embeddings'] is required for rope_type {rope_type!r}: the "
            f"pre-training context L0 sets the correction range (HF would silently use "
            f"max_position_embeddings={max_position_embeddings}, the bug of transformers #33783)"
        )
    if l0 is not None:
        if isinstance(l0, bool) or not isinstance(l0, (int, float)) or l0 < 1 or int(l0) != l0:
            raise ConfigError(f"{where}['original_max_position_embeddings'] must be a positive integer, got {l0!r}")
        kw["original_max_position_embeddings"] = int(l0)

    factor = _number(d, "factor", where)
    if factor is None and rope_type in ("yarn", "longrope"):
        factor = max_position_embeddings / kw["original_max_position_embeddings"]  # HF's implicit factor
    if factor is None:
        raise ConfigError(f"{where}['factor'] is required for rope_type {rope_type!r}")
    if factor < 1.0:
        raise ConfigError(f"{where}['factor'] must be >= 1, got {factor}")
    kw["factor"] = float(factor)

    if rope_type in ("yarn", "longrope"):
        af = _number(d, "attention_factor", where)
        if af is not None and af <= 0:
            raise ConfigError(f"{where}['attention_factor'] must be > 0, got {af}")
        kw["attention_factor"] = None if af is None else float(af)
    if rope_type == "yarn":
        for key in ("mscale", "mscale_all_dim"):
            v = _number(d, key, where)
            kw[key] = None if v is None else float(v)
    if rope_type in ("yarn", "ntk_by_parts", "dynamic_yarn"):
        # HF: `beta_fast or 32`, `beta_slow or 1` (0 and None both mean the default)
        kw["beta_fast"] = float(_number(d, "beta_fast", where) or 32)
        kw["beta_slow"] = float(_number(d, "beta_slow", where) or 1)
        if kw["beta_fast"] < kw["beta_slow"]:
            raise ConfigError(
                f"{where}['beta_fast']={kw['beta_fast']} must be >= {where}['beta_slow']={kw['beta_slow']}"
            )
        truncate = d.get("truncate", True)
        if not isinstance(truncate, bool):
            raise ConfigError(f"{where}['truncate'] must be true or false, got {truncate!r}")
        kw["truncate"] = truncate
    if rope_type == "dynamic_yarn":
        finetuned = d.get("finetuned", False)
        if not isinstance(finetuned, bool):
            raise ConfigError(f"{where}['finetuned'] must be true or false, got {finetuned!r}")
        kw["finetuned"] = finetuned
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor"):
            v = _number(d, key, where)
            if v is None:
                raise ConfigError(f"{where}['{key}'] is required for rope_type 'llama3'")
            kw[key] = float(v)
        if kw["high_freq_factor"] <= kw["low_freq_factor"]:
            raise ConfigError(
                f"{where}['high_freq_factor']={kw['high_freq_factor']} must be > "
                f"{where}['low_freq_factor']={kw['low_freq_factor']}"
            )
    if rope_type == "longrope":
        for key in ("short_factor", "long_factor"):
            v = d.get(key)
            if not isinstance(v, (list, tuple)) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in v
            ):
                raise ConfigError(f"{where}['{key}'] must be a list of finite positive numbers, got {v!r}")
            if len(v) != rotary_dim // 2:
                raise ConfigError(
                    f"{where}['{key}'] has length {len(v)}, expected rotary_dim/2 = {rotary_dim // 2}"
                )
            kw[key] = tuple(float(x) for x in v)
    return RopeConfig(**kw)


def parse_rope_spec(spec: str) -> dict[str, Any] | None:
    """A rope dict from the command line: HF-style JSON / YAML flow mapping, or the short form
    `yarn:factor=4,original_max_position_embeddings=8192` (`default` or `none` for no scaling)."""
    spec = spec.strip()
    if spec.startswith("{"):  # JSON, or a YAML flow mapping ({rope_type: yarn, factor: 4})
        import yaml

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


# ----------------------------------------------------------------------------------------------------------
# Frequencies. All arrays float32, shapes [d/2]; `seq_len` is an int or a traced integer scalar.


def get_mscale(scale, mscale: float = 1.0):
    """YaRN attention factor sqrt(1/t) = 0.1 * mscale * ln(s) + 1 for s > 1, else 1 (paper Eq. 22; HF)."""
    if isinstance(scale, (int, float)):
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0
    scale = jnp.asarray(scale, jnp.float32)
    return jnp.where(scale <= 1, 1.0, 0.1 * mscale * jnp.log(jnp.maximum(scale, 1.0)) + 1.0)


def _exponents(dim: int) -> np.ndarray:
    """2j/d for j = 0 .. d/2-1 (float32), as HF: arange(0, d, 2).float() / d."""
    return np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)


def theta_powers(theta: float, dim: int) -> np.ndarray:
    """theta^(2j/d) [d/2] float32, evaluated eagerly even under jit (XLA's powf agrees with torch's to the
    bit far more often than numpy's; the rest of the static math runs in float32 numpy, whose divisions
    are exact IEEE operations like torch's, where XLA may rewrite a division by a constant)."""
    with jax.ensure_compile_time_eval():
        return np.asarray(jnp.float32(theta) ** jnp.asarray(_exponents(dim)))


def default_inv_freq(theta, dim: int):
    """omega_j = theta^(-2j/d) [d/2]; host constant for a static theta, traced otherwise."""
    if isinstance(theta, (int, float)):
        return np.float32(1.0) / theta_powers(theta, dim)
    return 1.0 / (jnp.asarray(theta, jnp.float32) ** _exponents(dim))


def yarn_correction_range(cfg: RopeConfig) -> tuple[float, float]:
    """(low, high) pair indices of the NTK-by-parts ramp (HF `find_correction_range`, float64 math).

    corr(r) = d ln(L0 / (2 pi r)) / (2 ln b); low from beta_fast, high from beta_slow; floor/ceil when
    truncate; clamped to [0, d-1].
    """
    d, base, l0 = cfg.rotary_dim, cfg.theta, cfg.original_max_position_embeddings

    def corr(rotations: float) -> float:
        return d * math.log(l0 / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = corr(cfg.beta_fast), corr(cfg.beta_slow)
    if cfg.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, d - 1)


def yarn_ramp(cfg: RopeConfig) -> np.ndarray:
    """ramp_j = clamp((j - low)/(high - low), 0, 1) [d/2] float32: 0 keeps omega_j, 1 divides it by s."""
    low, high = yarn_correction_range(cfg)
    if low == high:
        high += 0.001  # HF: prevent a zero-width ramp
    ramp = (np.arange(cfg.rotary_dim // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(ramp, 0.0, 1.0)


def yarn_inv_freq(cfg: RopeConfig, scale):
    """NTK-by-parts frequencies (ramp in the pair index, as every implementation does) [d/2].

    inv_j = (omega_j / s) * ramp_j + omega_j * (1 - ramp_j). `scale` may be traced (Dynamic-YaRN); the
    ramp depends only on d, b, L0 and the betas.
    """
    xp = np if isinstance(scale, (int, float)) else jnp
    pos_freqs = theta_powers(cfg.theta, cfg.rotary_dim)
    extrapolation = np.float32(1.0) / pos_freqs
    interpolation = 1.0 / (xp.asarray(scale, xp.float32) * pos_freqs)
    extrapolation_weight = np.float32(1.0) - yarn_ramp(cfg)
    return interpolation * (1.0 - extrapolation_weight) + extrapolation * extrapolation_weight


def _yarn(cfg: RopeConfig, seq_len):
    if cfg.attention_factor is not None:
        af = cfg.attention_factor
    elif cfg.mscale and cfg.mscale_all_dim:  # DeepSeek: ratio of two mscales (1.0 when equal)
        af = get_mscale(cfg.factor, cfg.mscale) / get_mscale(cfg.factor, cfg.mscale_all_dim)
    else:
        af = get_mscale(cfg.factor)
    return yarn_inv_freq(cfg, cfg.factor), af


def _ntk_by_parts(cfg: RopeConfig, seq_len):
    return yarn_inv_freq(cfg, cfg.factor), 1.0


def _dynamic_yarn(cfg: RopeConfig, seq_len):
    """s = max(s_ft if finetuned else 1, l / L0) from the current length l (paper §3.3; reference repo)."""
    floor = cfg.factor if cfg.finetuned else 1.0
    scale = jnp.maximum(jnp.asarray(seq_len, jnp.float32) / cfg.original_max_position_embeddings, floor)
    return yarn_inv_freq(cfg, scale), get_mscale(scale)


def _default(cfg: RopeConfig, seq_len):
    return default_inv_freq(cfg.theta, cfg.rotary_dim), 1.0


def _linear(cfg: RopeConfig, seq_len):
    """Position Interpolation: omega / s."""
    return default_inv_freq(cfg.theta, cfg.rotary_dim) / np.float32(cfg.factor), 1.0


def _ntk(cfg: RopeConfig, seq_len):
    """Static NTK-aware: base b' = b * s^(d/(d-2)) (paper Eq. 16)."""
    d = cfg.rotary_dim
    return default_inv_freq(cfg.theta * cfg.factor ** (d / (d - 2)), d), 1.0


def _dynamic_ntk(cfg: RopeConfig, seq_len):
    """HF dynamic NTK: b' = b * (s*l/L - (s-1))^(d/(d-2)) for l > L = max_position_embeddings, else b.

    Mirrors HF's float32 tensor arithmetic of `_compute_dynamic_ntk_parameters` with a tensor seq_len.
    """
    d, big_l, s = cfg.rotary_dim, cfg.max_position_embeddings, cfg.factor
    seq = jnp.maximum(jnp.asarray(seq_len, jnp.int32), big_l).astype(jnp.float32)
    base = jnp.float32(cfg.theta) * ((jnp.float32(s) * seq / big_l) - jnp.float32(s - 1)) ** jnp.float32(d / (d - 2))
    grown = 1.0 / (base ** _exponents(d))
    return jnp.where(jnp.asarray(seq_len) > big_l, grown, default_inv_freq(cfg.theta, d)), 1.0


def _llama3(cfg: RopeConfig, seq_len):
    """Llama-3.1 wavelength bands (HF `_compute_llama3_parameters`, the same float32 operations)."""
    f32 = np.float32
    inv = default_inv_freq(cfg.theta, cfg.rotary_dim)
    s, lf, hf, l0 = f32(cfg.factor), cfg.low_freq_factor, cfg.high_freq_factor, cfg.original_max_position_embeddings
    low_wavelen, high_wavelen = l0 / lf, l0 / hf
    wavelen = f32(2 * math.pi) / inv
    inv_llama = np.where(wavelen > low_wavelen, inv / s, inv)
    smooth = (f32(l0) / wavelen - f32(lf)) / f32(hf - lf)
    smoothed = (1 - smooth) * inv_llama / s + smooth * inv_llama
    is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(is_medium, smoothed, inv_llama).astype(np.float32), 1.0


def _longrope(cfg: RopeConfig, seq_len):
    """LongRoPE (Phi-3): per-pair factors, long set when l > L0; factor sqrt(1 + ln s / ln L0)."""
    l0 = cfg.original_max_position_embeddings
    if cfg.attention_factor is not None:
        af = cfg.attention_factor
    else:
        af = 1.0 if cfg.factor <= 1.0 else math.sqrt(1 + math.log(cfg.factor) / math.log(l0))
    pos_freqs = theta_powers(cfg.theta, cfg.rotary_dim)
    short = np.float32(1.0) / (np.asarray(cfg.short_factor, np.float32) * pos_freqs)
    long = np.float32(1.0) / (np.asarray(cfg.long_factor, np.float32) * pos_freqs)
    return jnp.where(jnp.asarray(seq_len) > l0, long, short), af


ROPE_FUNCTIONS: dict[str, Callable[[RopeConfig, Any], tuple[Any, Any]]] = {
    "default": _default,
    "linear": _linear,
    "dynamic": _dynamic_ntk,
    "ntk": _ntk,
    "yarn": _yarn,
    "ntk_by_parts": _ntk_by_parts,
    "dynamic_yarn": _dynamic_yarn,
    "llama3": _llama3,
    "longrope": _longrope,
}


def rope_frequencies(cfg: RopeConfig, seq_len):
    """(inv_freq [d/2] float32, attention_factor float32 scalar) for the current sequence length.

    `seq_len` follows HF: max(position_ids) + 1 of the current call. It may be a traced scalar.
    """
    inv_freq, attention_factor = ROPE_FUNCTIONS[cfg.rope_type](cfg, seq_len)
    return jnp.asarray(inv_freq, jnp.float32), jnp.asarray(attention_factor, jnp.float32)


# ----------------------------------------------------------------------------------------------------------
# Applying the rotation (HF half-split layout: pair j is (x_j, x_{j+d/2})).


def rotary_cos_sin(positions, inv_freq, attention_factor):
    """cos, sin [B, T, d] float32 for integer positions [B, T]; both multiplied by the attention factor."""
    freqs = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, d/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # [B, T, d]
    return jnp.cos(emb) * attention_factor, jnp.sin(emb) * attention_factor


def rotate_half(x):
    """[x1, x2] -> [-x2, x1] on the last axis."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x, cos, sin):
    """Rotate the first d features of x [B, T, H, D] by cos/sin [B, T, d]; the rest pass through.

    Angles come in float32; like HF, cos/sin are cast to x's dtype before the multiply.
    """
    d = cos.shape[-1]
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    if d == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :d], x[..., d:]
    return jnp.concatenate([x_rot * cos + rotate_half(x_rot) * sin, x_pass], axis=-1)
