"""The Flax LLaMA against transformers' PyTorch LlamaForCausalLM (float32, eager attention) on random tiny
configs: GQA, tied and untied embeddings, every rope type, lengths below and >= 2x above the original
context. Partial rotary against transformers' Phi-3 (LLaMA structure with HF's partial-rotary code)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_params, tiny_hf_dict, torch_llama, torch_logits

from yarn_jax.checkpoint.layout import params_to_hf
from yarn_jax.config import LlamaConfig
from yarn_jax.model import Llama, model_from_params

L0 = 32  # original context of the tiny models
LENGTHS = (20, 80)  # below, and 2.5x above, the original context
TOL = 1e-4

LONG = np.linspace(1.0, 6.0, 8).tolist()
SHORT = np.linspace(1.0, 1.5, 8).tolist()
HF_ROPES = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0},
    "yarn_deepseek": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0,
                      "mscale": 1.0, "mscale_all_dim": 0.5, "beta_fast": 16.0, "beta_slow": 2.0},
    "yarn_untruncated": {"rope_type": "yarn", "factor": 3.0, "original_max_position_embeddings": L0,
                         "truncate": False, "attention_factor": 1.3},
    "llama3": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": L0},
    "longrope": {"rope_type": "longrope", "factor": 4.0, "original_max_position_embeddings": L0,
                 "short_factor": SHORT, "long_factor": LONG},
    "proportional": {"rope_type": "proportional", "factor": 2.0, "partial_rotary_factor": 0.5},
}


def ids_for(length, vocab, seed=0, batch=2):
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, length), dtype=np.int64)


def our_logits(cfg, params, ids, **kw):
    model = model_from_params(cfg, params, **kw)
    return np.asarray(model(np.asarray(ids, np.int32)))


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("name", list(HF_ROPES))
def test_logits_match_transformers(name, tie):
    rope = HF_ROPES[name]
    max_pos = L0 if name in ("default", "dynamic", "linear") else 4 * L0
    d = tiny_hf_dict(rope, tie=tie, max_pos=max_pos, head_dim=16, heads=4, kv_heads=2, hidden=48)
    cfg = LlamaConfig.from_hf_dict(d)
    params = random_params(cfg, seed=1)
    hf_tensors = params_to_hf(cfg, params)
    for length in LENGTHS:
        ids = ids_for(length, cfg.vocab_size)
        hf = torch_llama(d, hf_tensors)  # fresh model per length: HF's dynamic state starts clean
        ref = torch_logits(hf, ids)
        ours = our_logits(cfg, params, ids)
        err = np.abs(ours - ref).max()
        assert err <= TOL, f"{name} tie={tie} T={length}: max |dlogit| {err:.3g}"
        assert np.abs(ref).max() > 1.0  # not a degenerate comparison
        # and we are as close to the float64 truth as transformers' own float32 run is
        truth = torch_logits(torch_llama(d, hf_tensors), ids, float64=True)
        assert np.abs(ours - truth).max() <= 2 * np.abs(ref - truth).max() + 1e-5


@pytest.mark.parametrize("name", ["ntk", "ntk_by_parts"])
def test_paper_variants_equal_their_hf_equivalents(name):
    """ntk == HF default with base b s^(d/(d-2)); ntk_by_parts == HF yarn with attention_factor 1."""
    rope = {"rope_type": name, "factor": 4.0, "original_max_position_embeddings": L0}
    if name == "ntk":
        rope.pop("original_max_position_embeddings")
    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict(rope, max_pos=4 * L0))
    params = random_params(cfg, seed=2)
    if name == "ntk":
        d = 16
        hf_dict = tiny_hf_dict(None, max_pos=4 * L0, theta=1e4 * 4.0 ** (d / (d - 2)))
    else:
        hf_dict = tiny_hf_dict({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0,
                                "attention_factor": 1.0}, max_pos=4 * L0)
    for length in LENGTHS:
        ids = ids_for(length, cfg.vocab_size, seed=3)
        ref = torch_logits(torch_llama(hf_dict, params_to_hf(cfg, params)), ids)
        assert np.abs(our_logits(cfg, params, ids) - ref).max() <= TOL


@pytest.mark.parametrize("finetuned", [False, True])
def test_dynamic_yarn_equals_hf_yarn_at_the_current_scale(finetuned):
    """Dynamic-YaRN at length l is HF yarn with factor max(s_ft or 1, l/L0)."""
    rope = {"rope_type": "dynamic_yarn", "factor": 2.0, "original_max_position_embeddings": L0,
            "finetuned": finetuned}
    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict(rope, max_pos=L0))
    params = random_params(cfg, seed=4)
    for length in (20, 64, 100):
        s = max(2.0 if finetuned else 1.0, length / L0)
        hf_rope = None if s == 1.0 else {"rope_type": "yarn", "factor": s, "original_max_position_embeddings": L0}
        ids = ids_for(length, cfg.vocab_size, seed=5)
        ref = torch_logits(torch_llama(tiny_hf_dict(hf_rope, max_pos=L0), params_to_hf(cfg, params)), ids)
        assert np.abs(our_logits(cfg, params, ids) - ref).max() <= TOL, (finetuned, length)


def torch_phi3(cfg: LlamaConfig, hf_tensors, rope: dict | None, partial: float):
    """transformers' Phi3ForCausalLM with our weights fused into its qkv/gate_up layout and HF's rotary
    frequencies for `rope` (Phi-3 itself only accepts default/longrope, so static types are installed from
    transformers' ROPE_INIT_FUNCTIONS, computed with the same partial_rotary_factor)."""
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers import Phi3Config, Phi3ForCausalLM
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    native = rope if rope is None or rope["rope_type"] == "longrope" else None
    config = Phi3Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        original_max_position_embeddings=L0, rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings, pad_token_id=0,
        rope_parameters={"rope_type": "default", **(native or {}), "rope_theta": 1e4,
                         "partial_rotary_factor": partial})
    config._attn_implementation = "eager"
    model = Phi3ForCausalLM(config).eval()
    state = {}
    for name, w in hf_tensors.items():
        if ".self_attn.q_proj." in name:
            stem = name.replace("q_proj", "qkv_proj")
            state[stem] = np.concatenate([w, hf_tensors[name.replace("q_proj", "k_proj")],
                                          hf_tensors[name.replace("q_proj", "v_proj")]])
        elif ".mlp.gate_proj." in name:
            state[name.replace("gate_proj", "gate_up_proj")] = np.concatenate(
                [w, hf_tensors[name.replace("gate_proj", "up_proj")]])
        elif not any(k in name for k in (".k_proj.", ".v_proj.", ".up_proj.")):
            state[name] = w
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=False)
    if rope is not None and native is None:
        hf_cfg = HFLlamaConfig(hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
                               head_dim=cfg.head_dim, max_position_embeddings=cfg.max_position_embeddings,
                               rope_parameters={**rope, "rope_theta": 1e4, "partial_rotary_factor": partial})
        inv, af = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf_cfg, None)
        rotary = model.model.rotary_emb
        rotary.inv_freq.copy_(inv)
        rotary.original_inv_freq.copy_(inv)
        rotary.attention_scaling = af
    return model


@pytest.mark.parametrize("name", ["default", "linear", "yarn", "llama3", "longrope"])
@pytest.mark.parametrize("partial", [0.5, 0.25])
def test_partial_rotary_matches_transformers_phi3(name, partial):
    rope = HF_ROPES[name]
    if rope is not None and rope["rope_type"] == "longrope":
        n = int(16 * partial) // 2
        rope = {**rope, "short_factor": SHORT[:n], "long_factor": LONG[:n]}
    d = tiny_hf_dict(rope, max_pos=4 * L0, head_dim=16, heads=4, kv_heads=2, hidden=64,
                     partial_rotary_factor=partial)
    cfg = LlamaConfig.from_hf_dict(d)
    assert cfg.rope.rotary_dim == int(16 * partial)
    params = random_params(cfg, seed=6)
    for length in LENGTHS:
        ids = ids_for(length, cfg.vocab_size, seed=7)
        ref = torch_logits(torch_phi3(cfg, params_to_hf(cfg, params), rope, partial), ids)
        err = np.abs(our_logits(cfg, params, ids) - ref).max()
        assert err <= TOL, f"partial={partial} {name} T={length}: {err:.3g}"


def test_bf16_compute_close_to_float32():
    """bf16 compute (float32 params, float32 accumulation) stays near the float32 logits."""
    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict(HF_ROPES["yarn"], max_pos=4 * L0))
    params = random_params(cfg, seed=8, std=0.1)
    ids = ids_for(80, cfg.vocab_size)
    exact = our_logits(cfg, params, ids)
    low = our_logits(cfg, params, ids, dtype="bfloat16")
    assert np.abs(low - exact).max() <= 0.05 * np.abs(exact).max()


def test_scan_compile_time_does_not_grow_with_depth():
    """Layers are scanned: the lowered program has one layer body whatever the depth."""
    import jax
    from flax import nnx

    sizes = []
    for layers in (2, 8):
        cfg = LlamaConfig.from_hf_dict(tiny_hf_dict(None, layers=layers))
        model = Llama(cfg, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)
        text = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, np.zeros((1, 8), np.int32)).as_text()
        sizes.append(len(text))
    assert abs(sizes[1] - sizes[0]) < 0.05 * sizes[0], sizes


def test_remat_policies_give_the_same_gradients():
    import jax
    from flax import nnx

    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict(HF_ROPES["yarn"], max_pos=4 * L0))
    params = random_params(cfg, seed=9, std=0.1)
    ids = ids_for(24, cfg.vocab_size)
    grads = {}
    for remat in ("none", "full", "attention", "dots"):
        graphdef, state = nnx.split(model_from_params(cfg, params, remat=remat))

        def loss(s):
            logits = nnx.merge(graphdef, s)(ids[:, :-1])
            return -jax.numpy.mean(jax.numpy.take_along_axis(jax.nn.log_softmax(logits), ids[:, 1:, None], -1))

        grads[remat] = jax.tree.leaves(jax.grad(loss)(state))
    for remat in ("full", "attention", "dots"):
        for a, b in zip(grads["none"], grads[remat]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_attention_remat_keeps_the_kernel_output_and_runs_its_forward_once():
    """jax's own accounting of what the scanned layers save for the backward: `attention` keeps what `full`
    keeps plus exactly the blockwise kernel's output [L, B, K, G, T, D] and log-sum-exp [L, B, K, G, T]
    (stacked over layers), and the gradient program holds one attention forward loop fewer (the backward
    reruns no kernel)."""
    import contextlib
    import io

    import jax
    from flax import nnx
    from jax.ad_checkpoint import print_saved_residuals

    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict(HF_ROPES["yarn"], max_pos=4 * L0))
    params = random_params(cfg, seed=9, std=0.1)
    ids = ids_for(24, cfg.vocab_size)
    saved, loops = {}, {}
    for remat in ("full", "attention"):
        graphdef, state = nnx.split(model_from_params(cfg, params, remat=remat, attention_backend="blockwise"))

        def loss(s):
            return nnx.merge(graphdef, s)(ids).sum()

        with contextlib.redirect_stdout(io.StringIO()) as printed:  # jax's public form of the list
            print_saved_residuals(loss, state)
        saved[remat] = sorted(line.split()[0] for line in printed.getvalue().splitlines() if "output of scan" in line)
        loops[remat] = str(jax.make_jaxpr(jax.grad(loss))(state)).count("while[")
    b, t = ids.shape
    kv, g, d = cfg.num_key_value_heads, cfg.num_attention_heads // cfg.num_key_value_heads, cfg.head_dim
    kernel = [f"f32[{cfg.num_hidden_layers},{b},{kv},{g},{t},{d}]", f"f32[{cfg.num_hidden_layers},{b},{kv},{g},{t}]"]
    assert saved["attention"] == sorted(saved["full"] + kernel), saved
    assert loops["attention"] == loops["full"] - 1, loops


def test_parameters_carry_logical_axis_names():
    from flax import nnx

    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict(None))
    state = nnx.state(Llama(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    names = {tuple(p): v.get_metadata()["out_sharding"] for p, v in nnx.to_flat_state(state)}
    assert names[("embed_tokens",)] == ("vocab", "embed")
    assert names[("layers", "q_proj")] == ("layers", "embed", "heads", "head_dim")
    assert names[("layers", "k_proj")] == ("layers", "embed", "kv_heads", "head_dim")
    assert names[("layers", "down_proj")] == ("layers", "mlp", "embed")
    assert names[("lm_head",)] == ("embed", "vocab")
    for path, value in nnx.to_flat_state(state):
        assert len(names[tuple(path)]) == value.get_value().ndim, path
