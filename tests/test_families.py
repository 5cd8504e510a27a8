"""Model families against transformers' own classes: tiny random Qwen2 / Qwen3 / LLaMA-with-bias / Mistral /
SmolLM3 / OLMo 3 / Phi-3 models built by transformers (sliding windows shorter than the sequence, full and
sliding layers mixed, a rope per layer type), saved as HF directories, loaded by yarn_jax: logits (default
and YaRN rope, below and 2.5x past the original context, the attention backends), the HF round trip,
sharding, decoding, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import yarn_jax
from yarn_jax.errors import ConfigError

L0 = 32
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0}
COMMON = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-6, tie_word_embeddings=False)


WINDOW = 24  # sliding windows: shorter than the original context and than the sequences


def _families():
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Olmo3Config,
                              Olmo3ForCausalLM, Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                              Qwen3Config, Qwen3ForCausalLM, SmolLM3Config, SmolLM3ForCausalLM)

    return {
        # full layer 0, sliding layer 1 (max_window_layers)
        "qwen2_window": (Qwen2Config, Qwen2ForCausalLM, {"use_sliding_window": True, "sliding_window": WINDOW,
                                                         "max_window_layers": 1}),
        "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": WINDOW}),
        # the NoPE layer slides (SmolLM3's default layer types)
        "smollm3_window": (SmolLM3Config, SmolLM3ForCausalLM, {"no_rope_layers": [1, 0], "use_sliding_window": True,
                                                               "sliding_window": WINDOW, "bos_token_id": 1,
                                                               "eos_token_id": 2, "pad_token_id": 0}),
        "olmo3": (Olmo3Config, Olmo3ForCausalLM, {"sliding_window": WINDOW,
                                                  "layer_types": ["sliding_attention", "full_attention"],
                                                  "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}),
        "phi3_window": (Phi3Config, Phi3ForCausalLM, {"sliding_window": WINDOW, "bos_token_id": 1, "eos_token_id": 2,
                                                      "pad_token_id": 0, "original_max_position_embeddings": L0,
                                                      "partial_rotary_factor": 0.5}),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16}),
        "qwen3_bias": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16, "attention_bias": True}),
        "llama_bias": (LlamaConfig, LlamaForCausalLM, {"head_dim": 12, "attention_bias": True}),
        "llama": (LlamaConfig, LlamaForCausalLM, {}),
        "smollm3": (SmolLM3Config, SmolLM3ForCausalLM, {"no_rope_layers": [1, 0], "tie_word_embeddings": True,
                                                         "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}),
        "phi3": (Phi3Config, Phi3ForCausalLM, {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
                                               "original_max_position_embeddings": L0, "partial_rotary_factor": 0.5}),
    }


def hf_model(family: str, rope: dict | None, tmp_path, seed: int = 0, **overrides):
    """A transformers model of the family with large random weights (norms around 1), saved to tmp_path;
    `overrides`: config fields replacing the tiny defaults."""
    config_cls, model_cls, extra = _families()[family]
    if family.startswith("phi3") and rope:  # transformers' Phi-3 takes longrope (its own scaling) where others take yarn
        rope = {"rope_type": "longrope", "factor": 4.0, "short_factor": [1.0, 1.1, 1.3],
                "long_factor": [1.0, 2.0, 5.0]}  # partial rotary 0.5 of head_dim 12: 3 pairs
    rope_parameters = {"rope_type": "default", **(rope or {}), "rope_theta": 10000.0,
                       **({"partial_rotary_factor": extra["partial_rotary_factor"]} if "partial_rotary_factor" in extra
                          else {})}
    if family == "olmo3":  # a rope per layer type: the method on the full layers, another theta on the sliding
        rope_parameters = {"full_attention": rope_parameters,
                           "sliding_attention": {"rope_type": "default", "rope_theta": 5000.0}}
    config = config_cls(**{**COMMON, **extra, **overrides}, max_position_embeddings=4 * L0 if rope else L0,
                        rope_parameters=rope_parameters)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if name.endswith("norm.weight") else 0.2 * torch.randn_like(p))
    path = tmp_path / family
    model.save_pretrained(path)
    return model, path


def logits(model, ids):
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.numpy()


FAMILY_CASES = ["qwen2", "qwen3", "llama_bias", "smollm3", "phi3", "mistral", "olmo3", "qwen2_window",
                "smollm3_window", "phi3_window"]  # (Qwen3 with bias: the sharded and GGUF tests)


@pytest.mark.parametrize("rope", [None, YARN], ids=["default", "yarn"])
@pytest.mark.parametrize("family", FAMILY_CASES)
def test_family_logits_equal_transformers_and_round_trip(family, rope, tmp_path):
    model, path = hf_model(family, rope, tmp_path)
    for backend, lengths in (("blockwise", (20, 80)), ("reference", (80,))):  # below, and 2.5x past, L0
        ours = yarn_jax.from_pretrained(path, attention_backend=backend)
        assert ours.config.model_type == family.split("_")[0]
        for length in lengths:
            ids = np.random.default_rng(length).integers(0, 97, (2, length))
            ref = logits(model, ids)
            err = np.abs(np.asarray(ours.logits(ids)) - ref).max()
            assert err <= 1e-4 and np.abs(ref).max() > 1.0, (family, backend, length, err)
    # the HF round trip: saved by yarn_jax, reloaded by transformers' Auto classes as the same family
    from transformers import AutoModelForCausalLM

    ours.save_pretrained(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == \
        [type(model).__name__]
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert type(back) is type(model)
    ids = np.random.default_rng(1).integers(0, 97, (1, 80))
    np.testing.assert_array_equal(logits(back, ids), logits(model, ids))


@pytest.mark.parametrize("family", ["qwen3_bias", "phi3", "olmo3"])
def test_family_runs_sharded_as_on_one_device(family, tmp_path):
    """Qwen3 (q/k norms, biases), Phi-3 (fused tensors read block by block) and OLMo 3 (post-norm, q/k norms
    over the whole projection, sliding and full layers) on 8 virtual devices (fsdp 2 x sequence 2 x
    tensor 2) = one device."""
    from yarn_jax.sharding import MeshConfig, make_mesh, Sharder

    _, path = hf_model(family, YARN, tmp_path)
    ids = np.random.default_rng(3).integers(0, 97, (2, 64))
    single = np.asarray(yarn_jax.from_pretrained(path).logits(ids))
    sharder = Sharder(make_mesh(MeshConfig(axes={"fsdp": 2, "sequence": 2, "tensor": 2})))
    sharded = yarn_jax.from_pretrained(path, sharder=sharder)
    if family == "qwen3_bias":
        assert sharded.module.layers.q_bias[...].sharding.spec[1] == "tensor"  # biases split with their heads
    np.testing.assert_allclose(np.asarray(sharded.logits(ids)), single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "gemma3", "architectures": ["Gemma3ForCausalLM"]},
     r"unsupported architecture .*supported: LlamaForCausalLM \(llama\), Qwen2ForCausalLM \(qwen2\)"),
    ({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "use_sliding_window": True,
      "sliding_window": 16}, "LlamaForCausalLM has no sliding-window attention"),
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": 16,
      "layer_types": ["sliding_attention", "full_attention"]}, "per-layer types are Ministral's"),
    ({"model_type": "olmo3", "architectures": ["Olmo3ForCausalLM"], "rope_parameters": {
        "rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, r"one rope per layer type"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e4}}},
     "a rope per layer type is not supported for Qwen2ForCausalLM"),
    ({"use_sliding_window": True, "sliding_window": 0}, r"\['sliding_window'\] must be a positive integer"),
    ({"num_experts": 8}, r"\['num_experts'\]: mixture of experts is not supported"),
    ({"mlp_bias": True}, r"\['mlp_bias'\]=true is not supported"),
])
def test_unsupported_architectures_and_features_are_refused_by_name(change, message):
    from transformers import Qwen2Config

    d = {**Qwen2Config(**COMMON).to_dict(), "architectures": ["Qwen2ForCausalLM"], **change}
    with pytest.raises(ConfigError, match=message):
        yarn_jax.LlamaConfig.from_hf_dict(d)


@pytest.mark.parametrize("family", ["qwen2", "olmo3"])
def test_family_converts_to_orbax_and_back_verified_by_transformers(family, tmp_path):
    """HF -> yarn_jax checkpoint (logit check against transformers' class of the family) -> HF, which
    transformers reloads as that class with the source's logits (OLMo 3: its rope per layer type kept)."""
    from transformers import AutoModelForCausalLM

    from yarn_jax.convert import convert

    model, path = hf_model(family, YARN, tmp_path)
    report = convert(path, tmp_path / "ckpt", reference="transformers", verify_tokens=48, progress=False)
    assert report["verify"]["passed"] and report["format"] == "orbax"
    convert(tmp_path / "ckpt", tmp_path / "back", progress=False)
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back", attn_implementation="eager").eval()
    ids = np.random.default_rng(5).integers(0, 97, (1, 80))
    assert type(back) is type(model)
    np.testing.assert_array_equal(logits(back, ids), logits(model, ids))


@pytest.mark.parametrize("family", ["olmo3", "qwen2_window", "phi3_window", "smollm3_window"])
def test_training_gradients_equal_transformers_backward(family, tmp_path):
    """Mean next-token NLL at 2.5x L0 with YaRN (longrope for Phi-3) through the blockwise backend: d loss /
    d every weight equals torch autograd through the family's transformers class — the windowed tiles'
    backward, OLMo's post-norms and projection-wide q/k norms, Phi-3's fused tensors, a NoPE layer that
    slides."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from yarn_jax.checkpoint.layout import params_to_hf
    from yarn_jax.model import flat_params
    from yarn_jax.training.step import loss_terms

    model, path = hf_model(family, YARN, tmp_path)
    ours = yarn_jax.from_pretrained(path, attention_backend="blockwise").module
    # (ids above the special ones: torch's Embedding(padding_idx=pad) never updates the pad row)
    ids = np.random.default_rng(1).integers(3, 97, (2, 80)).astype(np.int32)
    graphdef, state = nnx.split(ours)

    def loss(s):
        total, count = loss_terms(nnx.merge(graphdef, s), {"input_ids": jnp.asarray(ids)}, chunk=16)
        return total / count

    value, grads = jax.value_and_grad(loss)(state)
    got = params_to_hf(ours.config, flat_params(nnx.state(grads, nnx.Param)))
    model.zero_grad()
    out = model(torch.as_tensor(ids, dtype=torch.long), labels=torch.as_tensor(ids, dtype=torch.long))
    out.loss.backward()
    np.testing.assert_allclose(float(value), out.loss.item(), rtol=1e-5)
    ref = {name: p.grad.numpy() for name, p in model.named_parameters()}
    assert set(ref) == set(got), set(ref) ^ set(got)
    for name, g in ref.items():
        scale = np.abs(g).max()
        assert scale > 0, name
        np.testing.assert_allclose(got[name], g, atol=2e-5 * max(scale, 1.0), err_msg=name)


def test_a_rope_method_replaces_the_full_layers_rope_only(tmp_path):
    """What eval methods, training and sweeps do to an OLMo 3 model — `with_rope(yarn)` — equals transformers'
    OLMo 3 configured with YaRN on its full-attention layers and its sliding layers' own rope kept."""
    model_yarn, _ = hf_model("olmo3", YARN, tmp_path / "yarn")
    _, path_default = hf_model("olmo3", None, tmp_path / "default")  # the same weights (seed), default rope
    ours = yarn_jax.from_pretrained(path_default, rope_scaling=YARN)
    assert ours.config.sliding_rope.theta == 5000.0 and ours.config.rope.method.name == "yarn"
    ids = np.random.default_rng(6).integers(0, 97, (1, 80))
    err = np.abs(np.asarray(ours.logits(ids)) - logits(model_yarn, ids)).max()
    assert err <= 1e-4, err


@pytest.mark.parametrize("family", ["smollm3", "olmo3", "mistral"])
def test_decode_from_the_cache_equals_a_full_recompute(family, tmp_path):
    """YaRN models whose layers differ — SmolLM3's NoPE layer, OLMo 3's sliding and full layers with a rope
    each, Mistral's window on every layer — decoded from the cache past the window: the last prompt
    token's next-token logits equal a full forward's, and greedy tokens equal a recompute's."""
    import jax.numpy as jnp

    from yarn_jax.generate import generate_ids, greedy_generate_recompute

    _, path = hf_model(family, YARN, tmp_path)
    model = yarn_jax.from_pretrained(path).module
    prompt = np.random.default_rng(7).integers(0, 97, (2, 70))
    _, (k, v) = model.hidden_states(prompt[:, :69], return_kv=True)
    pad = [(0, 0), (0, 0), (0, 11), (0, 0), (0, 0)]
    step, _, _ = model.decode_step(jnp.asarray(prompt[:, 69]), 69, jnp.pad(k, pad), jnp.pad(v, pad))
    np.testing.assert_allclose(np.asarray(step), np.asarray(model(prompt))[:, -1], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(generate_ids(model, prompt, 8), greedy_generate_recompute(model, prompt, 8))


def test_the_layer_differences_matter(tmp_path):
    """The checks above can fail: rotating SmolLM3's NoPE layer, or dropping Mistral's window, changes the
    logits."""
    import dataclasses

    prompt = np.random.default_rng(7).integers(0, 97, (2, 70))
    _, path = hf_model("smollm3", YARN, tmp_path)
    model = yarn_jax.from_pretrained(path).module
    assert model.config.rope_layers == (True, False)
    rotated = model.replace(config=dataclasses.replace(model.config, rope_layers=None))
    assert np.abs(np.asarray(rotated(prompt)) - np.asarray(model(prompt))).max() > 1e-2
    _, path = hf_model("mistral", YARN, tmp_path)
    model = yarn_jax.from_pretrained(path).module
    assert model.config.layer_types == ("sliding_attention",) * 2 and model.config.sliding_window == WINDOW
    unwindowed = model.replace(config=dataclasses.replace(model.config, layer_types=None))
    assert np.abs(np.asarray(unwindowed(prompt)) - np.asarray(model(prompt))).max() > 1e-2


@pytest.mark.parametrize("backend", ["splash", "gpu_flash"])
def test_windowed_families_through_the_kernels(backend, tmp_path):
    """OLMo 3 (sliding and full layers) and Mistral through the TPU splash kernel (LocalMask) and the GPU
    flash path (its kernel for the full layers, blockwise for the windows), in Pallas interpret mode
    (head_dim 16: the GPU kernel's power of two)."""
    for family in ("olmo3", "mistral"):
        model, path = hf_model(family, YARN, tmp_path, hidden_size=64)
        ours = yarn_jax.from_pretrained(path, attention_backend=backend)
        ids = np.random.default_rng(2).integers(0, 97, (1, 80))
        err = np.abs(np.asarray(ours.logits(ids)) - logits(model, ids)).max()
        assert err <= 1e-4, (family, backend, err)


GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
              "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
              "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}


def write_gguf(model, path, arch: str) -> None:
    """The model as llama.cpp's convert script lays out its file, float32, written with the `gguf` package:
    Qwen2/Qwen3 (NEOX rope: q/k rows as HF's), llama (q/k rows interleaved; Mistral: a llama file with its
    sliding window)."""
    import gguf

    from test_gguf import llama_cpp_permute

    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    if getattr(c, "sliding_window", None):
        w.add_sliding_window(c.sliding_window)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim if getattr(c, "head_dim", None) else c.hidden_size // c.num_attention_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    for name, value in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:  # (tied: llama.cpp writes no output tensor)
            continue
        parts = name.split(".")
        if name.startswith("model.layers."):
            layer, rest = parts[2], ".".join(parts[3:-1])
            out = f"blk.{layer}.{GGUF_NAMES[rest]}.{parts[-1]}"
            if arch in ("llama", "smollm3") and rest in ("self_attn.q_proj", "self_attn.k_proj"):
                heads = c.num_attention_heads if rest == "self_attn.q_proj" else c.num_key_value_heads
                value = torch.as_tensor(llama_cpp_permute(value.numpy(), heads))
        else:
            out = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                   "lm_head.weight": "output.weight"}[name]
        w.add_tensor(out, value.numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("family, arch, overrides", [
    ("qwen2", "qwen2", {}), ("qwen3_bias", "qwen3", {}), ("mistral", "llama", {}),
    ("smollm3", "smollm3", {"num_hidden_layers": 4, "no_rope_layers": None})])  # llama.cpp: NoPE every 4th
def test_gguf_files_of_the_added_archs_load_as_their_hf_weights(family, arch, overrides, tmp_path):
    from yarn_jax.checkpoint import load_checkpoint

    model, path = hf_model(family, None, tmp_path, **overrides)
    write_gguf(model, tmp_path / "m.gguf", arch)
    cfg_gguf, from_gguf = load_checkpoint(tmp_path / "m.gguf")
    cfg_hf, from_hf = load_checkpoint(path)
    assert cfg_gguf.model_type == cfg_hf.model_type == family.split("_")[0]
    for field in ("qkv_bias", "o_bias", "qk_norm", "sliding_window", "layer_types", "rope_layers"):
        assert getattr(cfg_gguf, field) == getattr(cfg_hf, field), field
    assert from_gguf.keys() == from_hf.keys()
    for k in from_hf:
        np.testing.assert_array_equal(from_gguf[k], from_hf[k], err_msg=str(k))
