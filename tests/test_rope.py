"""Rotary frequencies and attention factors against transformers' `modeling_rope_utils` (the reference),
the check values of docs/methods.md, and the paper's formulas for the variants HF lacks."""

from __future__ import annotations

import itertools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as hf_apply_rotary
from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb as hf_apply_partial_rotary

from yarn_jax.rope import (
    apply_rotary,
    get_mscale,
    parse_rope_config,
    rope_frequencies,
    rotary_cos_sin,
    yarn_correction_range,
)

HEAD_DIMS = (64, 128)
BASES = (1e4, 1e5, 5e5)
FACTORS = (2, 4, 8, 16, 32, 40)
L0S = (2048, 4096, 8192)
RTOL = 1e-6


def hf_config(rope: dict, head_dim: int, max_pos: int, theta: float) -> HFLlamaConfig:
    return HFLlamaConfig(hidden_size=2 * head_dim, num_attention_heads=2, head_dim=head_dim,
                         max_position_embeddings=max_pos, rope_parameters={**rope, "rope_theta": theta})


def ours(rope: dict, head_dim: int, max_pos: int, theta: float, seq_len: int):
    cfg = parse_rope_config(rope, head_dim=head_dim, max_position_embeddings=max_pos, rope_theta=theta)
    inv, af = rope_frequencies(cfg, seq_len)
    return np.asarray(inv, np.float64), float(af)


def assert_rel(ours_arr, ref_arr, rtol=RTOL, what=""):
    ours_arr, ref_arr = np.asarray(ours_arr, np.float64), np.asarray(ref_arr, np.float64)
    assert ours_arr.shape == ref_arr.shape, (what, ours_arr.shape, ref_arr.shape)
    rel = np.max(np.abs(ours_arr - ref_arr) / np.abs(ref_arr))
    assert rel <= rtol, f"{what}: max relative error {rel:.3g} > {rtol}"


def grid():
    return itertools.product(FACTORS, L0S)


@pytest.mark.parametrize("head_dim,theta", list(itertools.product(HEAD_DIMS, BASES)))
def test_static_types_match_hf_init_functions(head_dim, theta):
    """default, linear, yarn, llama3 over the grid: inv_freq and attention_factor rel. error <= 1e-6."""
    for factor, l0 in grid():
        max_pos = int(factor * l0)
        cases = {
            "linear": {"rope_type": "linear", "factor": float(factor)},
            "yarn": {"rope_type": "yarn", "factor": float(factor), "original_max_position_embeddings": l0},
            "llama3": {"rope_type": "llama3", "factor": float(factor), "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": l0},
        }
        for name, rope in cases.items():
            ref_inv, ref_af = ROPE_INIT_FUNCTIONS[name](hf_config(rope, head_dim, max_pos, theta), None)
            for seq_len in (l0 // 2, 2 * max_pos):  # static methods: independent of the length
                inv, af = ours(rope, head_dim, max_pos, theta, seq_len)
                assert_rel(inv, ref_inv.numpy(), what=f"{name} s={factor} L0={l0} seq={seq_len}")
                assert_rel([af], [ref_af], what=f"{name} attention_factor")
    ref_inv, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(hf_config({}, head_dim, 4096, theta))
    assert_rel(ours({}, head_dim, 4096, theta, 100)[0], ref_inv.numpy(), what="default")


@pytest.mark.parametrize("head_dim,theta", list(itertools.product(HEAD_DIMS, BASES)))
def test_dynamic_ntk_matches_hf_update_rule(head_dim, theta):
    """HF dynamic NTK at lengths below and above L = max_position_embeddings, through the module's
    `dynamic_rope_update` (fresh module per length, as HF's growth rule first fires)."""
    for factor, big_l in grid():
        rope = {"rope_type": "dynamic", "factor": float(factor)}
        for seq_len in (big_l // 2, big_l, big_l + 1, 2 * big_l + 7, factor * big_l):
            module = LlamaRotaryEmbedding(hf_config(rope, head_dim, big_l, theta))
            x = torch.zeros(1, 1, head_dim)
            module(x, torch.arange(seq_len)[None])
            inv, af = ours(rope, head_dim, big_l, theta, seq_len)
            assert_rel(inv, module.inv_freq.numpy(), what=f"dynamic s={factor} L={big_l} seq={seq_len}")
            assert af == module.attention_scaling == 1.0


@pytest.mark.parametrize("head_dim,theta", list(itertools.product(HEAD_DIMS, BASES)))
def test_longrope_matches_hf_switching(head_dim, theta):
    """longrope: short factors up to L0, long factors beyond (HF's update rule), factor sqrt(1+ln s/ln L0)."""
    rng = np.random.default_rng(head_dim + int(theta))
    for factor, l0 in grid():
        rope = {"rope_type": "longrope", "factor": float(factor), "original_max_position_embeddings": l0,
                "short_factor": (1 + rng.random(head_dim // 2)).tolist(),
                "long_factor": (1 + 10 * rng.random(head_dim // 2)).tolist()}
        for seq_len in (l0 // 2, l0, l0 + 1, 3 * l0):
            module = LlamaRotaryEmbedding(hf_config(rope, head_dim, factor * l0, theta))
            module(torch.zeros(1, 1, head_dim), torch.arange(seq_len)[None])
            inv, af = ours(rope, head_dim, factor * l0, theta, seq_len)
            assert_rel(inv, module.inv_freq.numpy(), what=f"longrope s={factor} L0={l0} seq={seq_len}")
            assert_rel([af], [module.attention_scaling], what="longrope attention factor")


YARN_VARIANTS = [
    {"truncate": False},
    {"beta_fast": 16, "beta_slow": 2},
    {"beta_fast": 0, "beta_slow": 0},  # HF: `or` defaults, so 0 means 32 / 1
    {"attention_factor": 0.8},
    {"mscale": 0.707, "mscale_all_dim": 0.707},  # ratio 1.0
    {"mscale": 1.0, "mscale_all_dim": 0.707},
    {"mscale": 1.0},  # only one given: plain get_mscale(s)
    {"partial_rotary_factor": 0.5},
    {"partial_rotary_factor": 0.25, "truncate": False},
]


@pytest.mark.parametrize("variant", YARN_VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()))
def test_yarn_every_hf_key(variant):
    for head_dim, theta, factor, l0 in itertools.product(HEAD_DIMS, BASES, (4, 16, 40), L0S):
        rope = {"rope_type": "yarn", "factor": float(factor), "original_max_position_embeddings": l0, **variant}
        ref_inv, ref_af = ROPE_INIT_FUNCTIONS["yarn"](hf_config(rope, head_dim, factor * l0, theta), None)
        inv, af = ours(rope, head_dim, factor * l0, theta, 10)
        assert_rel(inv, ref_inv.numpy(), what=f"yarn {variant} d={head_dim} b={theta} s={factor} L0={l0}")
        assert_rel([af], [ref_af], what="yarn attention factor")


def test_type_alias_and_transformers4_dict():
    """`type` is an alias of `rope_type`; transformers-4 rope_scaling takes theta from the config."""
    a = parse_rope_config({"type": "yarn", "factor": 8, "original_max_position_embeddings": 4096},
                          head_dim=128, max_position_embeddings=32768, rope_theta=5e5)
    b = parse_rope_config({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096,
                           "rope_theta": 5e5}, head_dim=128, max_position_embeddings=32768)
    assert a == b and a.theta == 5e5


# ---- docs/methods.md check values ---------------------------------------------------------------------------


@pytest.mark.parametrize("d,base,l0,raw,truncated", [
    (128, 1e4, 4096, (20.9445, 45.0269), (20, 46)),
    (128, 1e4, 2048, (16.128, 40.210), (16, 41)),
    (64, 1.5e5, 4096, (8.0928, 17.3980), (8, 18)),
    (128, 1e6, 32768, (23.596, 39.651), (23, 40)),
    (128, 5e5, 8192, (18.081, 34.984), (18, 35)),
])
def test_correction_range_check_values(d, base, l0, raw, truncated):
    for truncate, expected, tol in ((False, raw, 1e-3), (True, truncated, 0)):
        cfg = parse_rope_config({"rope_type": "yarn", "factor": 16, "original_max_position_embeddings": l0,
                                 "truncate": truncate}, head_dim=d, max_position_embeddings=16 * l0,
                                rope_theta=base)
        low, high = yarn_correction_range(cfg)
        assert abs(low - expected[0]) <= tol and abs(high - expected[1]) <= tol, (low, high, expected)


@pytest.mark.parametrize("s,expected", [(2, 1.069315), (4, 1.138629), (8, 1.207944), (16, 1.277259),
                                        (32, 1.346574), (40, 1.368888), (64, 1.415888), (1, 1.0), (0.5, 1.0)])
def test_get_mscale_check_values(s, expected):
    assert abs(get_mscale(s) - expected) < 1e-6
    assert abs(float(get_mscale(jnp.float32(s))) - expected) < 1e-6  # traced path
    cfg = parse_rope_config({"rope_type": "yarn", "factor": max(s, 1), "original_max_position_embeddings": 4096},
                            head_dim=128, max_position_embeddings=4096, rope_theta=1e4)
    assert abs(float(rope_frequencies(cfg, 10)[1]) - expected) < 1e-6


def test_llama2_yarn_s16_inv_freq_check_values():
    cfg = parse_rope_config({"rope_type": "yarn", "factor": 16, "original_max_position_embeddings": 4096},
                            head_dim=128, max_position_embeddings=65536, rope_theta=1e4)
    inv = np.asarray(rope_frequencies(cfg, 10)[0])
    table = {0: 1.0, 20: 5.623413e-2, 21: 4.694086e-2, 33: 4.600435e-3, 45: 1.517716e-4, 46: 8.334509e-5,
             63: 7.217387e-6}
    for j, value in table.items():
        assert abs(inv[j] / value - 1) < 1e-6, (j, inv[j], value)
    omega = 1e4 ** (-np.arange(0, 128, 2) / 128)
    np.testing.assert_allclose(inv[:21], omega[:21], rtol=1e-6)  # j <= low: extrapolated (unchanged)
    np.testing.assert_allclose(inv[46:], omega[46:] / 16, rtol=1e-6)  # j >= high: fully interpolated


# ---- the paper's variants HF lacks -----------------------------------------------------------------


@pytest.mark.parametrize("head_dim,theta", list(itertools.product(HEAD_DIMS, BASES)))
def test_ntk_static_formula_and_hf_dynamic_equivalence(head_dim, theta):
    """NTK-aware b' = b s^(d/(d-2)) (paper Eq. 16), in float64; equals HF dynamic (factor 1) at l = s L."""
    d = head_dim
    for factor, l0 in grid():
        inv, af = ours({"rope_type": "ntk", "factor": factor}, head_dim, l0, theta, 7)
        expected = (theta * factor ** (d / (d - 2))) ** (-np.arange(0, d, 2) / d)
        assert_rel(inv, expected, what=f"ntk s={factor}")
        assert af == 1.0
        assert_rel(inv[-1], theta ** (-(d - 2) / d) / factor, what="lowest frequency divided by exactly s")
        hf_inv, _ = ROPE_INIT_FUNCTIONS["dynamic"](
            hf_config({"rope_type": "dynamic", "factor": 1.0}, head_dim, l0, theta), None,
            seq_len=torch.tensor(factor * l0))
        assert_rel(inv, hf_inv.numpy(), rtol=2e-6, what="ntk == HF dynamic(factor=1, seq=s*L)")


def ntk_by_parts_float64(d, base, s, l0, beta_fast=32.0, beta_slow=1.0):
    """docs/methods.md (the NTK-by-parts ramp) written out in float64 numpy (ramp in the pair index, truncated range)."""
    j = np.arange(d // 2)
    theta = base ** (-2 * j / d)
    corr = lambda r: d * math.log(l0 / (2 * math.pi * r)) / (2 * math.log(base))  # noqa: E731
    low, high = max(math.floor(corr(beta_fast)), 0), min(math.ceil(corr(beta_slow)), d - 1)
    ramp = np.clip((j - low) / (high - low), 0, 1)
    w = 1 - ramp
    return theta / s * (1 - w) + theta * w


@pytest.mark.parametrize("head_dim,theta", list(itertools.product(HEAD_DIMS, BASES)))
def test_ntk_by_parts_formula(head_dim, theta):
    for factor, l0 in grid():
        rope = {"rope_type": "ntk_by_parts", "factor": factor, "original_max_position_embeddings": l0}
        inv, af = ours(rope, head_dim, factor * l0, theta, 5)
        assert_rel(inv, ntk_by_parts_float64(head_dim, theta, factor, l0), what=f"ntk_by_parts s={factor}")
        assert af == 1.0  # no temperature: that is what separates it from YaRN


def test_dynamic_yarn_tracks_length():
    """s = max(1, l/L0) (or max(s_ft, l/L0) when finetuned); frequencies = HF yarn at that s."""
    head_dim, theta, l0 = 128, 1e4, 4096

    def hf_yarn(s):
        rope = {"rope_type": "yarn", "factor": float(s), "original_max_position_embeddings": l0}
        inv, af = ROPE_INIT_FUNCTIONS["yarn"](hf_config(rope, head_dim, l0, theta), None)
        return inv.numpy(), af

    base_rope = {"rope_type": "dynamic_yarn", "factor": 8, "original_max_position_embeddings": l0}
    default = 1 / theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
    for seq_len in (100, l0):  # not finetuned, l <= L0: plain RoPE, factor 1
        inv, af = ours(base_rope, head_dim, l0, theta, seq_len)
        assert_rel(inv, default, what="dynamic_yarn at l <= L0")
        assert af == 1.0
    for seq_len in (l0 + 1, 3 * l0 + 5, 16 * l0, 32 * l0):
        inv, af = ours(base_rope, head_dim, l0, theta, seq_len)
        ref_inv, ref_af = hf_yarn(seq_len / l0)
        assert_rel(inv, ref_inv, what=f"dynamic_yarn l={seq_len}")
        assert_rel([af], [ref_af], what="dynamic_yarn factor")
    finetuned = {**base_rope, "finetuned": True}
    for seq_len, s in ((100, 8), (8 * l0, 8), (8 * l0 + 1000, (8 * l0 + 1000) / l0), (20 * l0, 20)):
        inv, af = ours(finetuned, head_dim, l0, theta, seq_len)
        ref_inv, ref_af = hf_yarn(s)
        assert_rel(inv, ref_inv, what=f"finetuned dynamic_yarn l={seq_len}")
        assert_rel([af], [ref_af], what="finetuned dynamic_yarn factor")


@pytest.mark.parametrize("k", [0.0, 0.07, 0.1, 0.25])
def test_yarn_temperature_coefficient(k):
    """`temperature` k: sqrt(1/t) = k ln s + 1 by hand; k = 0.1 is the paper's yarn to the bit, k = 0 is
    NTK-by-parts; its HF form (an attention_factor) gives the same numbers in transformers; Dynamic-YaRN
    takes the same k at its length's scale."""
    from yarn_jax.rope import parse_rope_spec

    head_dim, theta, l0, s = 64, 1e4, 4096, 8.0
    base = {"rope_type": "yarn", "factor": s, "original_max_position_embeddings": l0}
    inv, af = ours({**base, "temperature": k}, head_dim, l0, theta, 10)
    assert af == pytest.approx(k * math.log(s) + 1, rel=1e-7)
    assert np.array_equal(inv, ours(base, head_dim, l0, theta, 10)[0])
    if k == 0.1:
        assert af == ours(base, head_dim, l0, theta, 10)[1]
    if k == 0.0:
        parts, parts_af = ours({**base, "rope_type": "ntk_by_parts"}, head_dim, l0, theta, 10)
        assert np.array_equal(inv, parts) and af == parts_af == 1.0
    cfg = parse_rope_config({**base, "temperature": k}, head_dim=head_dim, max_position_embeddings=l0,
                            rope_theta=theta)
    hf = cfg.hf_parameters()
    assert "temperature" not in hf and hf["attention_factor"] == pytest.approx(k * math.log(s) + 1, rel=1e-7)
    ref_inv, ref_af = ROPE_INIT_FUNCTIONS["yarn"](hf_config(hf, head_dim, l0, theta), None)
    assert_rel(inv, ref_inv.numpy(), what="yarn temperature via HF")
    assert_rel([af], [ref_af], what="yarn temperature factor via HF")
    dyn = {**base, "rope_type": "dynamic_yarn", "temperature": k}
    for seq_len, scale in ((l0 // 2, 1.0), (3 * l0, 3.0)):
        dinv, daf = ours(dyn, head_dim, l0, theta, seq_len)
        assert daf == pytest.approx(k * math.log(scale) + 1, rel=1e-6)
    assert parse_rope_spec(f"yarn:temperature={k}")["temperature"] == k


def test_dynamic_yarn_at_a_concrete_length_is_static_yarn_to_the_bit():
    """At a known length l, Dynamic-YaRN is YaRN at s = l/L0 exactly (so an evaluation copies the cell of
    `yarn xs` instead of recomputing it); traced inside jit it agrees to float32 rounding."""
    l0, head_dim, theta = 4096, 64, 1e4
    dyn = parse_rope_config({"rope_type": "dynamic_yarn", "factor": 2.0, "original_max_position_embeddings": l0},
                            head_dim=head_dim, max_position_embeddings=l0, rope_theta=theta)
    for seq_len in (2 * l0, 3 * l0 + 5):
        static = parse_rope_config({"rope_type": "yarn", "factor": seq_len / l0, "original_max_position_embeddings":
                                    l0}, head_dim=head_dim, max_position_embeddings=l0, rope_theta=theta)
        inv, af = rope_frequencies(dyn, seq_len)
        ref_inv, ref_af = rope_frequencies(static, None)
        if seq_len == 2 * l0:  # s exactly representable: the same bytes
            assert np.asarray(inv).tobytes() == np.asarray(ref_inv).tobytes() and float(af) == float(ref_af)
        traced_inv, traced_af = jax.jit(lambda n: rope_frequencies(dyn, n))(seq_len)
        assert_rel(traced_inv, ref_inv, rtol=1e-6, what="traced dynamic_yarn")
        assert_rel([traced_af], [ref_af], rtol=1e-6, what="traced dynamic_yarn factor")


def test_temperature_conflicts_and_range_are_refused():
    from yarn_jax.errors import ConfigError

    base = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}
    for extra, message in (({"temperature": 0.07, "attention_factor": 1.2}, "both set the attention factor"),
                           ({"temperature": 0.07, "mscale": 1.0}, "both set the attention factor"),
                           ({"temperature": -0.1}, "'temperature'] must be >= 0")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_rope_config({**base, **extra}, head_dim=64, max_position_embeddings=4096, rope_theta=1e4)


@pytest.mark.parametrize("rope", [
    {"rope_type": "dynamic", "factor": 4.0},
    {"rope_type": "dynamic_yarn", "factor": 4.0, "original_max_position_embeddings": 4096},
    {"rope_type": "longrope", "factor": 4.0, "original_max_position_embeddings": 4096,
     "short_factor": [1.0] * 32, "long_factor": [2.0] * 32},
], ids=lambda r: r["rope_type"])
def test_dynamic_methods_do_not_recompile_per_length(rope):
    """One compiled rotary computation serves lengths 4k, 8k and 16k (seq_len is traced)."""
    cfg = parse_rope_config(rope, head_dim=64, max_position_embeddings=4096, rope_theta=1e4)
    compiled = jax.jit(lambda c, n: rope_frequencies(c, n), static_argnums=0)  # a fresh function: own cache
    results = [compiled(cfg, jnp.int32(n)) for n in (4096, 8192, 16384)]
    assert compiled._cache_size() == 1
    for n, (inv, af) in zip((4096, 8192, 16384), results):
        eager_inv, eager_af = rope_frequencies(cfg, n)
        np.testing.assert_allclose(inv, eager_inv, rtol=1e-6)
        np.testing.assert_allclose(af, eager_af, rtol=1e-6)
    assert not np.allclose(results[0][0], results[2][0])  # the frequencies really change with length
    lowered = compiled.lower(cfg, jnp.int32(0)).as_text()
    assert "s32[]" in lowered or "i32" in lowered  # the length is an argument, not a baked-in constant


# ---- applying the rotation ---------------------------------------------------------------------------


@pytest.mark.parametrize("partial", [1.0, 0.5])
def test_apply_rotary_matches_hf(partial):
    """Half-split rotation (and partial rotary, Phi-3's HF implementation) against transformers."""
    rng = np.random.default_rng(0)
    b, t, h, d = 2, 37, 3, 64
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
            "partial_rotary_factor": partial}
    cfg = parse_rope_config(rope, head_dim=d, max_position_embeddings=64, rope_theta=1e4)
    positions = np.stack([np.arange(t), np.arange(t) + 1000])
    cos, sin = rotary_cos_sin(jnp.asarray(positions), *rope_frequencies(cfg, t))
    q = rng.standard_normal((b, t, h, d)).astype(np.float32)
    ours_q = np.asarray(apply_rotary(jnp.asarray(q), cos, sin))
    hf_rot = LlamaRotaryEmbedding(hf_config(rope, d, 64, 1e4))
    hf_cos, hf_sin = hf_rot(torch.zeros(1, dtype=torch.float32), torch.as_tensor(positions))
    np.testing.assert_allclose(np.asarray(cos), hf_cos.numpy(), atol=2e-6)
    qt = torch.from_numpy(q).transpose(1, 2)  # HF: [B, H, T, D]
    fn = hf_apply_rotary if partial == 1.0 else hf_apply_partial_rotary
    ref_q, _ = fn(qt, qt, hf_cos, hf_sin)
    np.testing.assert_allclose(ours_q, ref_q.transpose(1, 2).numpy(), atol=2e-5)
    if partial < 1.0:
        np.testing.assert_array_equal(ours_q[..., int(d * partial):], q[..., int(d * partial):])


def test_bf16_activations_use_float32_angles():
    """At position ~60k a bfloat16 angle would be off by tens of radians; ours stays within bf16 rounding."""
    cfg = parse_rope_config(None, head_dim=64, max_position_embeddings=4096, rope_theta=1e4)
    positions = jnp.arange(60000, 60064)[None]
    cos, sin = rotary_cos_sin(positions, *rope_frequencies(cfg, 60064))
    assert cos.dtype == jnp.float32
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 64, 2, 64))
    exact = apply_rotary(x, cos, sin)
    low = apply_rotary(x.astype(jnp.bfloat16), cos, sin)
    assert low.dtype == jnp.bfloat16
    assert float(jnp.max(jnp.abs(low.astype(jnp.float32) - exact))) < 0.05
    bf16_angle = positions[..., None].astype(jnp.bfloat16) * rope_frequencies(cfg, 1)[0].astype(jnp.bfloat16)
    assert float(jnp.max(jnp.abs(bf16_angle.astype(jnp.float32) - positions[..., None] *
                                 rope_frequencies(cfg, 1)[0]))) > 10  # what the float32 angle avoids


YARN_OK = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}


@pytest.mark.parametrize("rope, kwargs, message", [
    ({**YARN_OK, "factor": float("nan")}, {}, r"\['factor'\] must be finite, got nan"),
    ({**YARN_OK, "factor": float("inf")}, {}, r"\['factor'\] must be finite, got inf"),
    ({"rope_type": "linear", "factor": float("nan")}, {}, r"\['factor'\] must be finite"),
    ({**YARN_OK, "attention_factor": float("nan")}, {}, r"\['attention_factor'\] must be finite"),
    ({**YARN_OK, "beta_fast": float("nan")}, {}, r"\['beta_fast'\] must be finite"),
    ({**YARN_OK, "mscale": float("inf")}, {}, r"\['mscale'\] must be finite"),
    ({**YARN_OK, "rope_theta": float("nan")}, {}, r"\['rope'\]\['rope_theta'\] must be finite"),
    (YARN_OK, {"rope_theta": float("nan")}, r"config.json\['rope_theta'\] must be finite"),
    (YARN_OK, {"partial_rotary_factor": float("nan")}, r"config.json\['partial_rotary_factor'\] must be finite"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": float("nan"), "high_freq_factor": 4.0}, {},
     r"\['low_freq_factor'\] must be finite"),
    ({"rope_type": "longrope", "factor": 4.0, "short_factor": [1.0] * 31 + [float("nan")], "long_factor": [1.0] * 32},
     {}, r"\['short_factor'\] must be a list of finite positive numbers"),
    ({"rope_type": "dynamic", "factor": 2.0}, {"max_position_embeddings": 0},
     r"\['max_position_embeddings'\] must be a positive integer, got 0"),
])
def test_non_finite_and_out_of_range_numbers_are_refused(rope, kwargs, message):
    """NaN passes every `x < bound` check: each of these gave NaN logits or a perplexity without position
    information at exit 0 before they were refused."""
    from yarn_jax.errors import ConfigError

    kw = {"head_dim": 64, "max_position_embeddings": 8192, **kwargs}
    with pytest.raises(ConfigError, match=message):
        parse_rope_config(rope, where="config.json['rope']", **kw)


def test_short_form_rope_specs_are_validated_like_dicts():
    from yarn_jax.errors import ConfigError
    from yarn_jax.rope import parse_rope_spec

    for spec in ("yarn:factor=nan,original_max_position_embeddings=4096", "linear:factor=inf",
                 "{rope_type: linear, factor: .nan}"):
        with pytest.raises(ConfigError, match=r"\['factor'\] must be finite"):
            parse_rope_config(parse_rope_spec(spec), head_dim=64, max_position_embeddings=8192, where="--rope")


# ---- the method records ------------------------------------------------------------------------------

SAMPLES = {  # one configuration per method record (head_dim 64, max_position_embeddings 8192)
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 4.0},
    "ntk": {"rope_type": "ntk", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "ntk_by_parts": {"rope_type": "ntk_by_parts", "factor": 4.0, "original_max_position_embeddings": 2048,
                     "beta_fast": 16},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048, "truncate": False},
    "dynamic_yarn": {"rope_type": "dynamic_yarn", "factor": 4.0, "original_max_position_embeddings": 2048,
                     "finetuned": True},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 2048},
    "longrope": {"rope_type": "longrope", "factor": 4.0, "original_max_position_embeddings": 2048,
                 "short_factor": [1.0 + j / 64 for j in range(32)], "long_factor": [1.0 + j / 8 for j in range(32)]},
    "proportional": {"rope_type": "proportional", "factor": 2.0, "partial_rotary_factor": 0.25},
}


def test_every_method_record_round_trips_and_its_hf_form_is_exact():
    """For every record: its dict parses back to the same RopeConfig; where it has an HF form, transformers'
    own init function (with HF's dynamic update rule for length-dependent ones, at a length past L0)
    gives our frequencies and attention factor from that form; the derived tables agree with the records."""
    from yarn_jax.errors import ConfigError
    from yarn_jax.rope import GGUF_TYPES, HF_ROPE_TYPES, METHODS, NAMED

    assert set(SAMPLES) == set(METHODS)
    for name, rope in SAMPLES.items():
        cfg = parse_rope_config(rope, head_dim=64, max_position_embeddings=8192, rope_theta=1e4)
        assert cfg.rope_type == name
        assert parse_rope_config(cfg.to_dict(), head_dim=64, max_position_embeddings=8192) == cfg
        try:
            hf = cfg.hf_parameters()
        except ConfigError:
            assert name == "dynamic_yarn"  # the one method transformers cannot express
            continue
        for seq_len in (1000, 20000):
            module = LlamaRotaryEmbedding(hf_config(hf, 64, 8192, hf["rope_theta"]))
            module(torch.zeros(1, 1, 64), torch.arange(seq_len)[None])
            inv, af = rope_frequencies(cfg, seq_len)
            np.testing.assert_allclose(inv, module.inv_freq.numpy(), rtol=RTOL, atol=0,  # (zeros: proportional)
                                       err_msg=f"{name} via its HF form at {seq_len}")
            assert abs(float(af) - module.attention_scaling) <= 1e-6, name
    assert set(HF_ROPE_TYPES) == (set(ROPE_INIT_FUNCTIONS) | {"default"}) & set(METHODS)  # HF's own types
    assert NAMED == {"linear": False, "ntk": False, "dynamic": False, "ntk_by_parts": True, "yarn": True,
                     "dynamic_yarn": True, "proportional": False}
    assert {k: m.name for k, m in GGUF_TYPES.items()} == {"linear": "linear", "yarn": "yarn"}
    assert {n for n, m in METHODS.items() if m.length_dependent} == {"dynamic", "dynamic_yarn", "longrope"}


def test_importing_the_rope_package_loads_no_model_checkpoint_or_transformers():
    """The package facade is lazy (PEP 562): `import yarn_jax.rope` stays light, `yarn_jax.X` still works."""
    import subprocess
    import sys

    code = ("import sys, yarn_jax.rope; heavy = [m for m in ('yarn_jax.model', 'yarn_jax.checkpoint', "
            "'yarn_jax.api', 'transformers', 'torch', 'orbax') if m in sys.modules]; assert not heavy, heavy; "
            "import yarn_jax; assert yarn_jax.RopeConfig is yarn_jax.rope.RopeConfig; "
            "assert callable(yarn_jax.from_pretrained)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
