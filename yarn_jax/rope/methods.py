"""Every RoPE context-extension method, one record each: its keys, checks, frequencies and HF form.

A method maps `(RopeConfig, seq_len) -> (inv_freq [d/2] float32, attention_factor)`; the attention factor
multiplies cos and sin (so attention logits are scaled by its square), exactly as HF transformers'
`LlamaRotaryEmbedding` does. Methods are keyed by HF `rope_type` names where one exists (default, linear,
dynamic, yarn, llama3, longrope), plus the YaRN paper's variants HF lacks (ntk, ntk_by_parts,
dynamic_yarn). Equations: docs/methods.md. Adding a method is one record here (and its tests).

`seq_len` may be a traced scalar: length-dependent methods use `jnp.where` rather than Python branches,
so one compiled function serves every length. Static methods return host (numpy) constants.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from yarn_jax.errors import ConfigError
from yarn_jax.rope.config import (
    RopeConfig,
    RopeMethod,
    flag,
    parse,
    number_or,
    optional_number,
    pair_factors,
    param,
    pretraining_context,
    required_number,
    scale_factor,
    temperature_coefficient,
)

# ----------------------------------------------------------------------------------------------------------
# Shared frequency math. Arrays float32 [d/2].


def temperature_factor(scale, k: float = 0.1):
    """YaRN attention factor sqrt(1/t) = k ln(s) + 1 for s > 1, else 1 (paper Eq. 22: k = 0.1)."""
    if isinstance(scale, (int, float)):
        return 1.0 if scale <= 1 else k * math.log(scale) + 1.0
    scale = jnp.asarray(scale, jnp.float32)
    return jnp.where(scale <= 1, 1.0, k * jnp.log(jnp.maximum(scale, 1.0)) + 1.0)


def get_mscale(scale, mscale: float = 1.0):
    """HF's `get_mscale`: 0.1 * mscale * ln(s) + 1 (the temperature factor at k = 0.1 * mscale)."""
    return temperature_factor(scale, 0.1 * mscale)


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


def yarn_correction_range(rope: RopeConfig) -> tuple[float, float]:
    """(low, high) pair indices of the NTK-by-parts ramp (HF `find_correction_range`, float64 math).

    corr(r) = d ln(L0 / (2 pi r)) / (2 ln b); low from beta_fast, high from beta_slow; floor/ceil when
    truncate; clamped to [0, d-1].
    """
    m: _Ramp = rope.method
    d, base, l0 = rope.rotary_dim, rope.theta, m.original_max_position_embeddings

    def corr(rotations: float) -> float:
        return d * math.log(l0 / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = corr(m.beta_fast), corr(m.beta_slow)
    if m.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, d - 1)


def yarn_ramp(rope: RopeConfig) -> np.ndarray:
    """ramp_j = clamp((j - low)/(high - low), 0, 1) [d/2] float32: 0 keeps omega_j, 1 divides it by s."""
    low, high = yarn_correction_range(rope)
    if low == high:
        high += 0.001  # HF: prevent a zero-width ramp
    ramp = (np.arange(rope.rotary_dim // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(ramp, 0.0, 1.0)


def yarn_inv_freq(rope: RopeConfig, scale):
    """NTK-by-parts frequencies (ramp in the pair index, as every implementation does) [d/2].

    inv_j = (omega_j / s) * ramp_j + omega_j * (1 - ramp_j). `scale` may be traced (Dynamic-YaRN); the
    ramp depends only on d, b, L0 and the betas.
    """
    xp = np if isinstance(scale, (int, float)) else jnp
    pos_freqs = theta_powers(rope.theta, rope.rotary_dim)
    extrapolation = np.float32(1.0) / pos_freqs
    interpolation = 1.0 / (xp.asarray(scale, xp.float32) * pos_freqs)
    extrapolation_weight = np.float32(1.0) - yarn_ramp(rope)
    return interpolation * (1.0 - extrapolation_weight) + extrapolation * extrapolation_weight


# ----------------------------------------------------------------------------------------------------------
# The records, in the order the eval CLI lists its named methods.


@dataclasses.dataclass(frozen=True, kw_only=True)
class Default(RopeMethod):
    """Unscaled RoPE: omega_j = b^(-2j/d) (paper Eq. 10)."""

    name = "default"
    title = "RoPE"

    def frequencies(self, rope, seq_len):
        return default_inv_freq(rope.theta, rope.rotary_dim), 1.0

    def gguf_metadata(self, rope):
        return {"freq_base": rope.theta}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Linear(RopeMethod):
    """Position Interpolation: omega / s (paper Eq. 12)."""

    name = "linear"
    title = "PI (linear)"
    gguf_type = "linear"
    factor: float = param(scale_factor())

    def frequencies(self, rope, seq_len):
        return default_inv_freq(rope.theta, rope.rotary_dim) / np.float32(self.factor), 1.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class NTK(RopeMethod):
    """Static NTK-aware: base b' = b * s^(d/(d-2)) (paper Eq. 16)."""

    name = "ntk"
    title = "NTK-aware"
    in_transformers = False
    factor: float = param(scale_factor())

    def base(self, rope) -> float:
        d = rope.rotary_dim
        return rope.theta * self.factor ** (d / (d - 2))

    def frequencies(self, rope, seq_len):
        return default_inv_freq(self.base(rope), rope.rotary_dim), 1.0

    def gguf_metadata(self, rope):
        """The unscaled rotary at the enlarged base."""
        return {"freq_base": self.base(rope)}

    def hf_parameters(self, rope):
        """Exactly HF `default` with the changed base."""
        return dataclasses.replace(rope, method=Default(), theta=self.base(rope)).to_dict()


@dataclasses.dataclass(frozen=True, kw_only=True)
class DynamicNTK(RopeMethod):
    """HF dynamic NTK: b' = b * (s*l/L - (s-1))^(d/(d-2)) for l > L = max_position_embeddings, else b."""

    name = "dynamic"
    title = "Dynamic NTK"
    length_dependent = True
    factor: float = param(scale_factor())

    def frequencies(self, rope, seq_len):
        """HF's float32 tensor arithmetic of `_compute_dynamic_ntk_parameters` with a tensor seq_len."""
        d, big_l, s = rope.rotary_dim, rope.max_position_embeddings, self.factor
        seq = jnp.maximum(jnp.asarray(seq_len, jnp.int32), big_l).astype(jnp.float32)
        base = jnp.float32(rope.theta) * ((jnp.float32(s) * seq / big_l) - jnp.float32(s - 1)) ** jnp.float32(
            d / (d - 2))
        grown = 1.0 / (base ** _exponents(d))
        return jnp.where(jnp.asarray(seq_len) > big_l, grown, default_inv_freq(rope.theta, d)), 1.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Ramp(RopeMethod):
    """The fields and checks the NTK-by-parts family shares (paper Eq. 17-19): the ramp between beta_fast
    and beta_slow rotations over the pre-training context L0."""

    original_max_position_embeddings: int = param(pretraining_context(required=True))
    factor: float = param(scale_factor())
    beta_fast: float = param(number_or(32), 32.0)  # HF: `beta_fast or 32`
    beta_slow: float = param(number_or(1), 1.0)
    truncate: bool = param(flag(True), True)

    def check(self, where):
        if self.beta_fast < self.beta_slow:
            raise ConfigError(f"{where}['beta_fast']={self.beta_fast} must be >= {where}['beta_slow']={self.beta_slow}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ByParts(_Ramp):
    """NTK-by-parts: the ramp's frequencies without a temperature."""

    name = "ntk_by_parts"
    title = "NTK-by-parts"
    aliases = ("ntk-by-parts",)
    in_transformers = False

    def frequencies(self, rope, seq_len):
        return yarn_inv_freq(rope, self.factor), 1.0

    def hf_parameters(self, rope):
        """Exactly HF `yarn` with attention_factor 1."""
        return {**rope.to_dict(), "rope_type": "yarn", "attention_factor": 1.0}

    def gguf_metadata(self, rope):
        return yarn_gguf_metadata(rope, self, 1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Yarn(_Ramp):
    """YaRN: NTK-by-parts plus the temperature sqrt(1/t) = 0.1 ln s + 1 (paper Eq. 20-22); DeepSeek's
    mscale / mscale_all_dim ratio and an explicit attention_factor as in HF; `temperature` k (yarn_jax's
    key, not HF's) sets sqrt(1/t) = k ln s + 1 — 0.1 is the paper's, 0 is NTK-by-parts."""

    name = "yarn"
    title = "YaRN"
    gguf_type = "yarn"
    factor: float = param(scale_factor(implicit=True))
    attention_factor: float | None = param(optional_number(positive=True))
    mscale: float | None = param(optional_number())
    mscale_all_dim: float | None = param(optional_number())
    temperature: float | None = param(temperature_coefficient)

    def check(self, where):
        super().check(where)
        given = [k for k in ("attention_factor", "mscale", "mscale_all_dim") if getattr(self, k) is not None]
        if self.temperature is not None and given:
            raise ConfigError(f"{where}['temperature'] and {where}['{given[0]}'] both set the attention factor; "
                              "give one")

    def frequencies(self, rope, seq_len):
        if self.attention_factor is not None:
            af = self.attention_factor
        elif self.temperature is not None:
            af = temperature_factor(self.factor, self.temperature)
        elif self.mscale and self.mscale_all_dim:  # DeepSeek: ratio of two mscales (1.0 when equal)
            af = get_mscale(self.factor, self.mscale) / get_mscale(self.factor, self.mscale_all_dim)
        else:
            af = get_mscale(self.factor)
        return yarn_inv_freq(rope, self.factor), af

    def hf_parameters(self, rope):
        """HF's yarn; a temperature becomes the attention_factor it gives."""
        if self.temperature is None:
            return rope.to_dict()
        out = {k: v for k, v in rope.to_dict().items() if k != "temperature"}
        return {**out, "attention_factor": float(self.frequencies(rope, None)[1])}

    def gguf_metadata(self, rope):
        return yarn_gguf_metadata(rope, self, float(self.frequencies(rope, None)[1]))


def yarn_gguf_metadata(rope, m: _Ramp, attention_factor: float) -> dict[str, Any]:
    """llama.cpp's YaRN: its kernel multiplies cos/sin by attn_factor * (1 + 0.1 ln s) itself (ggml's
    `rope_yarn`), so the factor written is HF's attention factor divided by that temperature; the ramp is
    the same (corr dims from beta_fast / beta_slow over L0, floored and ceiled as HF's `truncate`)."""
    if not m.truncate:
        raise ConfigError("yarn with truncate=false has no llama.cpp equivalent (its ramp ends are always rounded)")
    return {"freq_base": rope.theta, "scaling.type": "yarn", "scaling.factor": m.factor,
            "scaling.original_context_length": m.original_max_position_embeddings,
            "scaling.attn_factor": attention_factor / get_mscale(m.factor),
            "scaling.yarn_beta_fast": m.beta_fast, "scaling.yarn_beta_slow": m.beta_slow}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DynamicYarn(_Ramp):
    """Dynamic-YaRN: s = max(s_ft if finetuned else 1, l / L0) from the current length l (paper §3.3)."""

    name = "dynamic_yarn"
    title = "Dynamic-YaRN"
    aliases = ("dynamic-yarn",)
    in_transformers = False
    length_dependent = True
    finetuned: bool = param(flag(False), False)
    temperature: float | None = param(temperature_coefficient)  # as yarn's (absent: 0.1)

    def frequencies(self, rope, seq_len):
        floor = self.factor if self.finetuned else 1.0
        k = 0.1 if self.temperature is None else self.temperature
        if isinstance(seq_len, (int, np.integer)):  # a concrete length: exactly the static yarn at that s
            scale = max(float(np.float32(seq_len) / np.float32(self.original_max_position_embeddings)), floor)
            return yarn_inv_freq(rope, scale), temperature_factor(scale, k)
        scale = jnp.maximum(jnp.asarray(seq_len, jnp.float32) / self.original_max_position_embeddings, floor)
        return yarn_inv_freq(rope, scale), temperature_factor(scale, k)

    def hf_parameters(self, rope):
        raise ConfigError("rope_type 'dynamic_yarn' has no transformers equivalent; cannot write an HF config")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Llama3(RopeMethod):
    """Llama-3.1 wavelength bands (HF `_compute_llama3_parameters`, the same float32 operations)."""

    name = "llama3"
    title = "Llama 3"
    original_max_position_embeddings: int = param(pretraining_context(required=False))
    factor: float = param(scale_factor())
    low_freq_factor: float = param(required_number)
    high_freq_factor: float = param(required_number)

    def check(self, where):
        if self.high_freq_factor <= self.low_freq_factor:
            raise ConfigError(f"{where}['high_freq_factor']={self.high_freq_factor} must be > "
                              f"{where}['low_freq_factor']={self.low_freq_factor}")

    def frequencies(self, rope, seq_len):
        f32 = np.float32
        inv = default_inv_freq(rope.theta, rope.rotary_dim)
        s, lf, hf, l0 = f32(self.factor), self.low_freq_factor, self.high_freq_factor, \
            self.original_max_position_embeddings
        low_wavelen, high_wavelen = l0 / lf, l0 / hf
        wavelen = f32(2 * math.pi) / inv
        inv_llama = np.where(wavelen > low_wavelen, inv / s, inv)
        smooth = (f32(l0) / wavelen - f32(lf)) / f32(hf - lf)
        smoothed = (1 - smooth) * inv_llama / s + smooth * inv_llama
        is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(is_medium, smoothed, inv_llama).astype(np.float32), 1.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class LongRope(RopeMethod):
    """LongRoPE (Phi-3): per-pair factors, the long set when l > L0; factor sqrt(1 + ln s / ln L0)."""

    name = "longrope"
    title = "LongRoPE"
    aliases = ("su",)
    length_dependent = True
    original_max_position_embeddings: int = param(pretraining_context(required=False))
    factor: float = param(scale_factor(implicit=True))
    attention_factor: float | None = param(optional_number(positive=True))
    short_factor: tuple[float, ...] = param(pair_factors)
    long_factor: tuple[float, ...] = param(pair_factors)

    def frequencies(self, rope, seq_len):
        l0 = self.original_max_position_embeddings
        if self.attention_factor is not None:
            af = self.attention_factor
        else:
            af = 1.0 if self.factor <= 1.0 else math.sqrt(1 + math.log(self.factor) / math.log(l0))
        pos_freqs = theta_powers(rope.theta, rope.rotary_dim)
        short = np.float32(1.0) / (np.asarray(self.short_factor, np.float32) * pos_freqs)
        long = np.float32(1.0) / (np.asarray(self.long_factor, np.float32) * pos_freqs)
        return jnp.where(jnp.asarray(seq_len) > l0, long, short), af


@dataclasses.dataclass(frozen=True, kw_only=True)
class Proportional(RopeMethod):
    """Proportional RoPE (Gemma 4; HF `_compute_proportional_rope_parameters`): the first
    int(partial_rotary_factor * head_dim / 2) pairs rotate at b^(-2j/head_dim) — exponents over the whole
    head, not the rotary part — the remaining pairs at frequency 0, all divided by `factor`; the frequencies
    span the whole head (head_dim/2 of them), so the rotation pairs j with j + head_dim/2."""

    name = "proportional"
    title = "proportional"
    factor: float = param(scale_factor(default=1.0), 1.0)

    def frequencies(self, rope, seq_len):
        half = rope.head_dim // 2
        angles = int(rope.partial_rotary_factor * rope.head_dim // 2)
        inv = np.zeros(half, np.float32)
        inv[:angles] = (np.float32(1.0) / theta_powers(rope.theta, rope.head_dim))[:angles]
        return inv / np.float32(self.factor), 1.0


METHODS: dict[str, type[RopeMethod]] = {m.name: m for m in (Default, Linear, NTK, DynamicNTK, ByParts, Yarn,
                                                              DynamicYarn, Llama3, LongRope, Proportional)}
ROPE_TYPES = tuple(METHODS)
HF_ROPE_TYPES = tuple(name for name, m in METHODS.items() if m.in_transformers)  # what transformers implements
# name -> whether it takes L0: the methods a name and a scale factor configure (the eval CLI's named methods)
NAMED = {name: m.needs_l0() for name, m in METHODS.items() if m.nameable()}
GGUF_TYPES = {m.gguf_type: m for m in METHODS.values() if m.gguf_type}


def parse_rope_config(
    rope: dict[str, Any] | None,
    *,
    head_dim: int,
    max_position_embeddings: int,
    rope_theta: float | None = None,
    partial_rotary_factor: float | None = None,
    original_max_position_embeddings: int | None = None,
    where: str = "rope_scaling",
) -> RopeConfig:
    """Validate an HF rope dict as users have it in config.json and return a RopeConfig.

    Accepts transformers-4 `rope_scaling` (theta from the top-level `rope_theta`) and transformers-5
    `rope_parameters` (`rope_theta` inside); `type` is an alias of `rope_type`. Top-level
    `original_max_position_embeddings` (Phi-3 style) takes priority over the dict's, as in HF.
    Unlike HF (which only warns or silently substitutes `max_position_embeddings`), invalid values raise
    ConfigError naming the field: unknown type, factor < 1, yarn-family without
    `original_max_position_embeddings`, beta_fast < beta_slow, longrope lists of the wrong length.
    """
    return parse(rope, METHODS, head_dim=head_dim, max_position_embeddings=max_position_embeddings,
                 rope_theta=rope_theta, partial_rotary_factor=partial_rotary_factor,
                 original_max_position_embeddings=original_max_position_embeddings, where=where)


def rope_frequencies(rope: RopeConfig, seq_len):
    """(inv_freq [d/2] float32, attention_factor float32 scalar) for the current sequence length.

    `seq_len` follows HF: max(position_ids) + 1 of the current call. It may be a traced scalar.
    """
    inv_freq, attention_factor = rope.frequencies(seq_len)
    return jnp.asarray(inv_freq, jnp.float32), jnp.asarray(attention_factor, jnp.float32)
