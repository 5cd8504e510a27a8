"""GGUF import: the q/k row permutation, and the real SmolLM2 file against transformers' GGUF loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from yarn_jax.checkpoint.gguf import open_gguf, unpermute_rotary_rows
from yarn_jax.errors import ConfigError


def llama_cpp_llama(path, n_ctx: int):
    """llama.cpp (llama-cpp-python) on a GGUF file: logits of every position, float32 KV cache, no flash
    attention — and no "extra buffer types" (llama.cpp's repacked CPU/AMX weight layouts for quantized
    tensors, which crash with a segmentation fault in this sandbox's VM)."""
    import llama_cpp
    import llama_cpp.llama as llama_module

    default = llama_cpp.llama_model_default_params

    def plain_buffers():
        params = default()
        params.use_extra_bufts = False
        return params

    llama_module.llama_cpp.llama_model_default_params = plain_buffers
    try:
        return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=512, logits_all=True, type_k=0, type_v=0,
                               flash_attn=False, verbose=False)
    finally:
        llama_module.llama_cpp.llama_model_default_params = default


def llama_cpp_permute(w, n_heads):
    """What llama.cpp's convert_hf_to_gguf.py does to q/k rows (half-split -> interleaved pairs)."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


@pytest.mark.parametrize("n_heads,head_dim", [(9, 64), (3, 64), (4, 16)])
def test_unpermute_inverts_llama_cpp(n_heads, head_dim):
    w = np.random.default_rng(0).standard_normal((n_heads * head_dim, 24)).astype(np.float32)
    np.testing.assert_array_equal(unpermute_rotary_rows(llama_cpp_permute(w, n_heads), n_heads), w)
    # row 1 of a head (interleaved partner of row 0) goes to row head_dim/2 (half-split partner)
    interleaved = llama_cpp_permute(w, n_heads)
    np.testing.assert_array_equal(interleaved[1], w[head_dim // 2])


@pytest.fixture(scope="module")
def transformers_gguf_model(assets):
    from transformers import LlamaForCausalLM

    path = assets["smollm2_gguf"]
    return LlamaForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)


def test_smollm2_gguf_weights_equal_transformers_loader(assets, transformers_gguf_model):
    config, _, loaders = open_gguf(assets["smollm2_gguf"])
    tensors = {name: load() for name, load in loaders.items()}
    hf = transformers_gguf_model
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"],
            config["head_dim"], config["vocab_size"], config["max_position_embeddings"]) == (
        30, 9, 3, 64, 49152, 8192)
    assert config["rope_theta"] == hf.config.rope_parameters["rope_theta"] == 1e5
    assert config["tie_word_embeddings"] and hf.config.tie_word_embeddings
    state = {k: v.numpy() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    assert set(state) == set(tensors)
    for name, value in state.items():
        np.testing.assert_array_equal(tensors[name], value, err_msg=name)


def test_smollm2_gguf_and_converted_directory_give_the_same_logits(assets):
    import yarn_jax

    ids = np.arange(1, 65)[None] * 37 % 49152
    a = yarn_jax.from_pretrained(assets["smollm2_gguf"]).logits(ids)
    b = yarn_jax.from_pretrained(assets["smollm2"]).logits(ids)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- export ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])  # (biased LLaMA: read back by yarn_jax below)
def test_gguf_export_is_read_by_transformers_gguf_loader_as_the_source_model(family, tmp_path):
    """HF -> GGUF by `convert` (its logit check reads the file back through yarn_jax), then transformers' own
    GGUF loader (an independent reader: llama.cpp's names, q/k row order, metadata) builds the same model:
    identical weights and logits."""
    from transformers import AutoModelForCausalLM

    from test_families import hf_model, logits
    from yarn_jax.convert import convert

    # (transformers' GGUF reader takes Qwen3's head_dim from its config default, 128, not the file's key_length)
    model, path = hf_model(family, None, tmp_path, **({"head_dim": 128} if family == "qwen3" else {}))
    report = convert(path, tmp_path / "m.gguf", verify_tokens=48, progress=False)
    assert report["format"] == "gguf" and report["verify"]["passed"] and report["verify"]["max_abs_logit_diff"] == 0
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    assert type(back) is type(model)
    state = back.state_dict()
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(state[name].numpy(), value.numpy(), err_msg=name)
    ids = np.random.default_rng(4).integers(0, 97, (1, 40))
    # GGUF stores rms_norm_eps as float32 (1e-6 -> 9.99999997e-07): float32-rounding-level logit differences
    np.testing.assert_allclose(logits(back, ids), logits(model, ids), atol=2e-5, rtol=0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


@pytest.mark.parametrize("rope, keys", [
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
     {"scaling.type": "yarn", "scaling.factor": 4.0, "scaling.original_context_length": 32,
      "scaling.attn_factor": 1.0, "scaling.yarn_beta_fast": 32.0, "scaling.yarn_beta_slow": 1.0}),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "attention_factor": 1.5,
      "beta_fast": 16.0}, {"scaling.type": "yarn", "scaling.attn_factor": 1.5 / (1 + 0.1 * np.log(4.0)),
                            "scaling.yarn_beta_fast": 16.0}),
    ({"rope_type": "linear", "factor": 2.0}, {"scaling.type": "linear", "scaling.factor": 2.0}),
])
def test_gguf_export_writes_the_rope_as_llama_cpp_reads_it_and_reads_it_back(rope, keys, tmp_path):
    """llama.cpp's rope keys (its YaRN kernel applies the 0.1 ln s + 1 temperature itself, so attn_factor is
    HF's attention factor over it); read back, the file has the source's rope and weights; bfloat16 files
    hold the bf16-rounded matrices (norms stay float32)."""
    import gguf as gguf_pkg
    import ml_dtypes

    from test_families import hf_model
    from yarn_jax.checkpoint import load_checkpoint
    from yarn_jax.checkpoint.layout import tensor_map
    from yarn_jax.convert import convert

    _, path = hf_model("llama_bias", rope, tmp_path)
    convert(path, tmp_path / "f32.gguf", progress=False, verify_tokens=48)
    reader = gguf_pkg.GGUFReader(str(tmp_path / "f32.gguf"))
    for key, want in keys.items():
        got = reader.fields[f"llama.rope.{key}"].contents()
        assert got == want if isinstance(want, str) else abs(got - want) < 1e-6 * abs(want), (key, got, want)
    cfg_src, src = load_checkpoint(path)
    cfg_back, back = load_checkpoint(tmp_path / "f32.gguf")
    assert cfg_back.rope == cfg_src.rope
    for k in src:
        np.testing.assert_array_equal(back[k], src[k], err_msg=str(k))
    convert(path, tmp_path / "bf16.gguf", dtype="bfloat16", progress=False, verify_logits=False)
    _, half = load_checkpoint(tmp_path / "bf16.gguf")
    one_d = {t.path for t in tensor_map(cfg_src) if len(t.hf_shape) == 1}  # norms and biases
    assert one_d and set(src) - one_d
    for k in src:
        rounded = src[k].astype(ml_dtypes.bfloat16).astype(np.float32)
        np.testing.assert_array_equal(half[k], src[k] if k in one_d else rounded, err_msg=str(k))


def test_gguf_export_refuses_what_llama_cpp_cannot_hold(tmp_path):
    from test_families import hf_model
    from yarn_jax.convert import convert

    _, phi = hf_model("phi3", None, tmp_path)
    with pytest.raises(ConfigError, match="Phi3ForCausalLM is not written as GGUF here"):
        convert(phi, tmp_path / "phi.gguf", progress=False)
    _, mistral = hf_model("mistral", None, tmp_path)
    with pytest.raises(ConfigError, match="Mistral"):
        convert(mistral, tmp_path / "m.gguf", progress=False)
    _, llama = hf_model("llama_bias", None, tmp_path)
    with pytest.raises(ConfigError, match="'llama3' has no llama.cpp equivalent"):
        convert(llama, tmp_path / "l.gguf", progress=False, rope={
            "rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 32,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0})
    _, qwen3_bias = hf_model("qwen3_bias", None, tmp_path)
    with pytest.raises(ConfigError, match="'qwen3' architecture has no attention biases"):
        convert(qwen3_bias, tmp_path / "q.gguf", progress=False)
    _, smol = hf_model("smollm3", None, tmp_path)  # no_rope_layers [1, 0]: llama.cpp's is every 4th layer
    with pytest.raises(ConfigError, match="NoPE layer every 4th layer exactly"):
        convert(smol, tmp_path / "s.gguf", progress=False)
    (tmp_path / "notes.gguf").write_text("my notes")
    with pytest.raises(ConfigError, match="is not a GGUF file"):
        convert(llama, tmp_path / "notes.gguf", progress=False, overwrite=True)
    assert (tmp_path / "notes.gguf").read_text() == "my notes"
    assert not (tmp_path / "phi.gguf").exists() and not (tmp_path / "l.gguf").exists()


@pytest.mark.parametrize("family", ["llama_bias", "qwen2", "qwen3", "smollm3"])
def test_llama_cpp_runs_each_exported_family_as_transformers_does(family, tmp_path):
    """Tiny random models of each family llama.cpp has (4 layers: SmolLM3's 4th is NoPE, as llama.cpp fixes
    it), YaRN x4, exported by `convert` (no tokenizer: token ids in), run by llama.cpp at 80 tokens (2.5x
    L0) with a float32 KV cache: its logits equal transformers'. Opt-in, as below."""
    pytest.importorskip("llama_cpp", reason="opt-in: pip install llama-cpp-python (README, GGUF export)")
    from test_families import YARN, hf_model, logits
    from yarn_jax.convert import convert

    extra = {"no_rope_layers": None} if family == "smollm3" else {}
    model, path = hf_model(family, YARN, tmp_path, num_hidden_layers=4, **extra)
    convert(path, tmp_path / "m.gguf", progress=False, verify_tokens=48)
    ids = [int(x) for x in np.random.default_rng(0).integers(3, 97, 80)]
    llm = llama_cpp_llama(tmp_path / "m.gguf", n_ctx=128)
    llm.eval(ids)
    ref = logits(model, np.asarray([ids]))[0]
    err = np.abs(np.asarray(llm.scores[:80]) - ref).max()
    print(f"{family}: llama.cpp vs transformers max |dlogit| {err:.2e}")
    assert err <= 1e-4 and np.abs(ref).max() > 1.0


def test_llama_cpp_runs_the_exported_smollm2_with_yarn_as_yarn_jax_does(assets, tmp_path):
    """The real client: llama.cpp (llama-cpp-python) loads SmolLM2 exported with YaRN x2 as a float32 GGUF and
    scores 9,000 tokens of Hamlet (past the 8,192-token pre-training context); its per-token log-probabilities
    and perplexity equal yarn_jax's. Opt-in: llama-cpp-python is built from source (see the README)."""
    pytest.importorskip("llama_cpp", reason="opt-in: pip install llama-cpp-python (README, GGUF export)")
    import jax

    import yarn_jax
    from yarn_jax import assets as assets_module
    from yarn_jax.convert import convert
    from yarn_jax.model import next_token_log_probs

    n = 9000
    yarn = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 8192}
    convert(assets["smollm2"], tmp_path / "smollm2-yarn2.gguf", rope=yarn, verify_tokens=256, progress=False)
    model = yarn_jax.from_pretrained(assets["smollm2"], rope_scaling=yarn)
    ids = model.tokenizer().encode(assets_module.play_text("hamlet")).ids[:n]
    assert len(ids) == n
    ours = np.asarray(jax.jit(next_token_log_probs)(model.module, np.asarray([ids])))[0]  # [n - 1]
    llm = llama_cpp_llama(tmp_path / "smollm2-yarn2.gguf", n_ctx=16384)  # float32 KV cache
    llm.eval(ids)
    scores = np.asarray(llm.scores[:n], np.float64)  # [n, V] logits
    theirs = (scores - np.logaddexp.reduce(scores, axis=-1, keepdims=True))[np.arange(n - 1), ids[1:]]
    mean_abs = float(np.abs(ours - theirs).mean())
    ppl_ours, ppl_theirs = float(np.exp(-ours.mean())), float(np.exp(-theirs.mean()))
    print(f"llama.cpp vs yarn_jax, SmolLM2 YaRN x2, {n} tokens: mean |dlogprob| {mean_abs:.2e}, "
          f"perplexity {ppl_theirs:.4f} vs {ppl_ours:.4f} (rel {abs(ppl_theirs / ppl_ours - 1):.2e})")
    assert mean_abs <= 1e-3 and abs(ppl_theirs / ppl_ours - 1) <= 1e-3


@pytest.mark.parametrize("dtype", ["q8_0", "q4_0", "q5_1", "bfloat16"])
@pytest.mark.parametrize("reference", ["yarn_jax", "transformers"])
def test_quantized_gguf_export_is_checked_like_with_like(dtype, reference, tmp_path):
    """HF -> quantized GGUF: every tensor stored as `tensor_type` says (2-D weights in the file's type, the
    embedding and head Q8_0 in a 4/5-bit file, rows not a whole number of blocks F16, norms F32), read
    back by the gguf package to exactly the quantize -> dequantize of the source tensor; the logit check,
    against the source with its weights as the file stores them (yarn_jax or transformers), passes at the
    float32 thresholds, and the report gives what the quantization itself costs."""
    import gguf

    from test_families import hf_model
    from yarn_jax.checkpoint.gguf import as_stored, gguf_name, tensor_type
    from yarn_jax.convert import convert

    # hidden 96 / intermediate 96: rows of whole 32-value blocks, except o_proj's 48 (3 heads x 16): F16
    model, path = hf_model("llama", None, tmp_path, hidden_size=96, intermediate_size=96, num_attention_heads=3,
                           num_key_value_heads=1, head_dim=16)
    report = convert(path, tmp_path / "m.gguf", dtype=dtype, verify_tokens=48, progress=False, reference=reference)
    v = report["verify"]
    assert v["passed"] and v["max_abs_logit_diff"] <= 1e-3 and v["mean_kl"] <= 1e-6, v
    assert v["rounding_vs_float32_source"]["max_abs_logit_diff"] > 1e-3  # the quantization is real
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    stored = {t.name: t for t in reader.tensors}
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    seen = set()
    for name, w in state.items():
        g = gguf_name(name)
        t = stored[g]
        want_type = tensor_type(dtype, g, w.shape)
        assert t.tensor_type == want_type, (g, t.tensor_type, want_type)
        seen.add(want_type.name)
        back = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(w.shape)
        if g.endswith(("attn_q.weight", "attn_k.weight")):
            from yarn_jax.checkpoint.gguf import unpermute_rotary_rows

            back = unpermute_rotary_rows(back, 3 if "attn_q" in g else 1)
        np.testing.assert_array_equal(back, as_stored(w, dtype, g), err_msg=g)
    if dtype in ("q4_0", "q5_1"):
        assert {"Q8_0", "F16", "F32", dtype.upper()} <= seen, seen
    assert report["gguf"]["tensor_types"] and sum(report["gguf"]["tensor_types"].values()) == len(state)


def test_block_quantized_dtypes_are_refused_outside_gguf(tmp_path):
    from test_families import hf_model
    from yarn_jax.convert import convert

    _, path = hf_model("llama", None, tmp_path)
    with pytest.raises(ConfigError, match=r"--dtype 'q8_0': choose float32, bfloat16, float16 for --to hf "
                                          r"\(block-quantized types are GGUF's\)"):
        convert(path, tmp_path / "out", to="hf", dtype="q8_0", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype", ["q8_0", "q4_0"])
def test_llama_cpp_reads_the_quantized_smollm2_as_yarn_jax_does(dtype, assets, tmp_path):
    """Opt-in (llama-cpp-python). SmolLM2 exported as a quantized GGUF: llama.cpp's perplexity of 2,048
    tokens of Hamlet equals yarn_jax's reading of the same file within 1e-2 relative. llama.cpp multiplies
    the quantized blocks by activations it rounds to 8 bits itself (measured: 6.7e-3 for q8_0 and 5.6e-3 for
    q4_0 here; 3.2e-3 to 5.1e-3 over 4,096 tokens, bench/results/gguf_quantized_perplexity.json), while a
    layout mistake — rows, blocks, the q/k order — moves perplexity by orders of magnitude."""
    pytest.importorskip("llama_cpp", reason="opt-in: pip install llama-cpp-python (README, GGUF export)")
    import jax

    import yarn_jax
    from yarn_jax import assets as assets_module
    from yarn_jax.convert import convert
    from yarn_jax.model import next_token_log_probs

    path = tmp_path / f"smollm2-{dtype}.gguf"
    convert(assets["smollm2"], path, dtype=dtype, verify_tokens=128, progress=False)
    model = yarn_jax.from_pretrained(path)
    ids = [model.config.bos_token_id] + model.tokenizer().encode(
        assets_module.play_text("hamlet"), add_special_tokens=False).ids[:2047]
    ours = np.asarray(jax.jit(next_token_log_probs)(model.module, np.asarray([ids])))[0]
    llm = llama_cpp_llama(path, n_ctx=2048)
    llm.eval(ids)
    scores = np.asarray(llm.scores[:len(ids)], np.float64)
    theirs = (scores - np.logaddexp.reduce(scores, axis=-1, keepdims=True))[np.arange(len(ids) - 1), ids[1:]]
    ppl_ours, ppl_theirs = float(np.exp(-ours.mean())), float(np.exp(-theirs.mean()))
    print(f"{dtype}: llama.cpp {ppl_theirs:.4f} vs yarn_jax {ppl_ours:.4f} (rel {ppl_theirs / ppl_ours - 1:+.2e})")
    assert abs(ppl_theirs / ppl_ours - 1) <= 1e-2 and ppl_ours < 40
