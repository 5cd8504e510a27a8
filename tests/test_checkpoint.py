"""HF checkpoint import/export: round trips through transformers, sharded indexes, bf16, and the errors
that name the offending tensor or field."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import random_params, tiny_hf_dict, torch_logits
from safetensors.numpy import load_file, save_file
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

import yarn_jax
from yarn_jax.checkpoint import load_checkpoint, save_hf_checkpoint
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import CheckpointError, ConfigError

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}


def hf_saved_model(tmp_path, tie=False, rope=YARN, seed=0):
    """A random LlamaForCausalLM saved by transformers itself (the independent writer)."""
    torch.manual_seed(seed)
    d = tiny_hf_dict(rope, tie=tie, max_pos=128)
    model = LlamaForCausalLM(HFLlamaConfig(**d)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    path = tmp_path / f"hf_{'tied' if tie else 'untied'}"
    model.save_pretrained(path)
    model.config._attn_implementation = "eager"
    return path, model


@pytest.mark.parametrize("tie", [False, True])
def test_round_trip_hf_params_hf_gives_identical_logits(tmp_path, tie):
    """transformers save -> our params -> our save -> transformers load: bit-identical weights and logits."""
    path, original = hf_saved_model(tmp_path, tie=tie)
    ours = yarn_jax.from_pretrained(path)
    out = ours.save_pretrained(tmp_path / "exported")
    reloaded = LlamaForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert reloaded.config.rope_parameters["rope_type"] == "yarn"
    assert reloaded.config.rope_parameters["factor"] == 4.0
    assert reloaded.config.rope_parameters["original_max_position_embeddings"] == 32
    for (name, a), (_, b) in zip(original.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
    ids = np.random.default_rng(0).integers(0, 97, size=(2, 90))
    np.testing.assert_array_equal(torch_logits(original, ids), torch_logits(reloaded, ids))
    np.testing.assert_allclose(np.asarray(ours.logits(ids)), torch_logits(original, ids), atol=1e-4)


def test_exported_rope_override_is_what_transformers_runs(tmp_path):
    """from_pretrained(rope_scaling=...) overrides the checkpoint's rope; the export carries it."""
    path, _ = hf_saved_model(tmp_path, rope=None)
    rope = {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16, "beta_fast": 24.0}
    ours = yarn_jax.from_pretrained(path, rope_scaling=rope)
    assert ours.config.rope.method.factor == 8.0 and ours.config.rope.method.beta_fast == 24.0
    out = ours.save_pretrained(tmp_path / "exported")
    reloaded = LlamaForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids = np.random.default_rng(1).integers(0, 97, size=(1, 100))
    np.testing.assert_allclose(np.asarray(ours.logits(ids)), torch_logits(reloaded, ids), atol=1e-4)


def test_sharded_index_and_bf16(tmp_path):
    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict(YARN, max_pos=128))
    params = random_params(cfg)
    out = save_hf_checkpoint(tmp_path / "sharded", cfg, params, max_shard_bytes=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    cfg2, params2 = load_checkpoint(out)
    assert cfg2 == cfg
    for k in params:
        np.testing.assert_array_equal(params[k], params2[k])
    reloaded = LlamaForCausalLM.from_pretrained(out, attn_implementation="eager").eval()  # transformers too
    ids = np.random.default_rng(2).integers(0, 97, size=(1, 40))
    model = yarn_jax.from_pretrained(out)
    np.testing.assert_allclose(np.asarray(model.logits(ids)), torch_logits(reloaded, ids), atol=1e-4)

    bf16 = save_hf_checkpoint(tmp_path / "bf16", cfg, params, dtype="bfloat16")
    _, params3 = load_checkpoint(bf16)
    for k in params:
        np.testing.assert_allclose(np.asarray(params3[k], np.float32), params[k], rtol=1e-2, atol=1e-2)


def test_old_checkpoints_rotary_buffers_are_ignored(tmp_path):
    path, _ = hf_saved_model(tmp_path)
    tensors = load_file(str(path / "model.safetensors"))
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
    save_file(tensors, str(path / "model.safetensors"))
    load_checkpoint(path)


# ---- errors that name the tensor / field --------------------------------------------------------------


def _mutate_tensors(path, fn):
    tensors = load_file(str(path / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def _mutate_config(path, fn):
    d = json.loads((path / "config.json").read_text())
    fn(d)
    (path / "config.json").write_text(json.dumps(d))


@pytest.mark.parametrize("mutation,message", [
    (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"), "missing tensors ['model.layers.1.mlp.up_proj.weight']"),
    (lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)}),
     "unexpected tensors ['model.layers.0.self_attn.q_proj.bias']"),
    (lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": np.zeros((16, 48), np.float32)}),
     "tensor 'model.layers.0.self_attn.k_proj.weight' has shape (16, 48), expected (32, 48)"),
])
def test_bad_tensors_are_named(tmp_path, mutation, message):
    path, _ = hf_saved_model(tmp_path)
    _mutate_tensors(path, mutation)
    with pytest.raises(CheckpointError, match=message.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
        load_checkpoint(path)


@pytest.mark.parametrize("mutation,message", [
    (lambda d: d.update(architectures=["Gemma3ForCausalLM"], model_type="gemma3_text"), "unsupported architecture"),
    (lambda d: d.update(mlp_bias=True), "'mlp_bias'"),  # (attention_bias is supported: test_families.py)
    (lambda d: d.pop("hidden_size"), "missing required field 'hidden_size'"),
    (lambda d: d.update(num_key_value_heads=3), "'num_key_value_heads'=3"),
    (lambda d: d["rope_parameters"].update(rope_type="xpos"), r"\['rope_type'\]='xpos' is not supported"),
    (lambda d: d["rope_parameters"].update(factor=0.5), r"\['factor'\] must be >= 1"),
    (lambda d: d["rope_parameters"].pop("original_max_position_embeddings"),
     r"\['original_max_position_embeddings'\] is required for rope_type 'yarn'"),
    (lambda d: d["rope_parameters"].update(beta_fast=1.0, beta_slow=32.0), r"\['beta_fast'\]=1.0 must be >="),
    (lambda d: d.update(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "factor": 4.0,
                                         "short_factor": [1.0] * 8, "long_factor": [1.0] * 7}),
     r"\['long_factor'\] has length 7, expected rotary_dim/2 = 8"),
    (lambda d: d.update(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0,
                                         "low_freq_factor": 4.0, "high_freq_factor": 1.0}),
     r"\['high_freq_factor'\]=1.0 must be >"),
    (lambda d: d.update(rms_norm_eps=float("nan")), r"\['rms_norm_eps'\] must be a finite number"),
    (lambda d: d.update(rms_norm_eps=0.0), "'rms_norm_eps' must be a finite number > 0"),
    (lambda d: d.update(num_attention_heads=0), r"\['num_attention_heads'\] must be a positive integer, got 0"),
    (lambda d: d.update(max_position_embeddings=0), r"\['max_position_embeddings'\] must be a positive integer"),
    (lambda d: d["rope_parameters"].update(rope_theta=float("nan")), r"\['rope_theta'\] must be finite"),
    (lambda d: d["rope_parameters"].update(factor=float("inf")), r"\['factor'\] must be finite"),
    (lambda d: d.update(bos_token_id=97), "'bos_token_id'=97 is not a token id of the vocabulary"),
    (lambda d: d.update(eos_token_id=[2, 500]), "'eos_token_id'=500 is not a token id of the vocabulary"),
    (lambda d: d.update(architectures="LlamaForCausalLM"), r"\['architectures'\] must be a list"),
])
def test_bad_configs_are_named(tmp_path, mutation, message):
    path, _ = hf_saved_model(tmp_path)
    _mutate_config(path, mutation)
    with pytest.raises(ConfigError, match=message):
        load_checkpoint(path)


def test_bad_rope_override_is_named(tmp_path):
    path, _ = hf_saved_model(tmp_path)
    with pytest.raises(ConfigError, match=r"rope_scaling argument\['factor'\] must be >= 1"):
        yarn_jax.from_pretrained(path, rope_scaling={"rope_type": "linear", "factor": 0.25})
    with pytest.raises(ConfigError, match="rope_scaling argument\\['rope_type'\\]='ntk_aware' is not supported"):
        yarn_jax.from_pretrained(path, rope_scaling={"type": "ntk_aware", "factor": 2})


def test_out_of_vocabulary_ids_are_refused(tmp_path):
    path, _ = hf_saved_model(tmp_path)
    model = yarn_jax.from_pretrained(path)
    with pytest.raises(ConfigError, match=r"input_ids must lie in \[0, vocab_size=97\), got values in \[0, 97\]"):
        model.logits(np.array([[0, 5, 97]]))
    with pytest.raises(ConfigError, match="integer array"):
        model.logits(np.zeros((1, 3), np.float32))
    # 64-bit ids are checked before any narrowing: 2**32 + 5 would wrap to the valid int32 id 5
    with pytest.raises(ConfigError, match=r"got values in \[5, 4294967301\]"):
        model.logits(np.array([[5, 2**32 + 5]], np.int64))
    with pytest.raises(ConfigError, match="non-empty"):
        model.logits(np.zeros((1, 0), np.int32))


def test_missing_paths_and_pickles_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text(json.dumps(tiny_hf_dict(None)))
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_checkpoint(tmp_path / "pickled")
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(CheckpointError, match="bad.gguf: not a readable GGUF file"):
        load_checkpoint(tmp_path / "bad.gguf")


def test_hf_config_round_trip_for_paper_variants():
    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict({"rope_type": "ntk", "factor": 4.0}))
    d = cfg.to_hf_dict()
    assert d["rope_parameters"]["rope_type"] == "default"
    assert d["rope_parameters"]["rope_theta"] == pytest.approx(1e4 * 4.0 ** (16 / 14))
    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict({"rope_type": "dynamic_yarn", "factor": 4.0,
                                                 "original_max_position_embeddings": 32}))
    with pytest.raises(ConfigError, match="dynamic_yarn"):
        cfg.to_hf_dict()


# --- safetensors headers and indexes: as strict as the safetensors library -----------------------------------

def _raw_safetensors(path, entries: dict, data: bytes):
    """A safetensors file with a hand-written header: {name: (dtype, shape, [begin, end])}."""
    header = {k: {"dtype": dt, "shape": list(shape), "data_offsets": list(off)} for k, (dt, shape, off) in entries.items()}
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    path.write_bytes(len(body).to_bytes(8, "little") + body + data)


@pytest.mark.parametrize("entries, nbytes, message", [
    ({"a": ("F32", [4], [0, 16]), "b": ("F32", [4], [0, 16])}, 16, "must be contiguous and must not overlap"),
    ({"a": ("F32", [4], [0, 16]), "b": ("F32", [2], [8, 16])}, 16, "must be contiguous and must not overlap"),
    ({"a": ("F32", [4], [0, 16]), "b": ("F32", [4], [32, 48])}, 48, "data starts at byte 32, expected 16"),
    ({"a": ("F32", [4], [-16, 0])}, 0, "not two non-negative integers"),
    ({"a": ("F32", [4], [4, 20])}, 20, "data starts at byte 4, expected 0"),
    ({"a": ("F32", [-4], [0, 16])}, 16, "not a list of non-negative integers"),
], ids=["same-range", "overlap", "gap", "negative", "before-start", "negative-dim"])
def test_safetensors_byte_ranges_are_checked_like_the_library(tmp_path, entries, nbytes, message):
    """Every header the safetensors library refuses, TensorFile refuses too (the library is the reference)."""
    from safetensors import safe_open

    from yarn_jax.checkpoint.hf import TensorFile

    f = tmp_path / "model.safetensors"
    _raw_safetensors(f, entries, bytes(nbytes))
    with pytest.raises(Exception):  # the reference refuses this file
        with safe_open(str(f), "np") as g:
            [g.get_tensor(k) for k in g.keys()]
    from etils import epath

    with pytest.raises(CheckpointError, match=message):
        TensorFile(epath.Path(f))
    # and a well-formed file with tensors stored out of name order is accepted by both
    _raw_safetensors(f, {"a": ("F32", [2], [8, 16]), "b": ("F32", [2], [0, 8])}, np.arange(4, dtype="<f4").tobytes())
    assert TensorFile(epath.Path(f)).read("a").tolist() == [2.0, 3.0]
    with safe_open(str(f), "np") as g:
        assert g.get_tensor("a").tolist() == [2.0, 3.0]


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/model.safetensors",
                                   "..", "model.bin"])
def test_sharded_index_names_only_files_inside_the_model_directory(tmp_path, shard):
    path, _ = hf_saved_model(tmp_path)
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"\0" * 12345)
    weight_map = {k: "model.safetensors" for k in load_file(str(path / "model.safetensors"))}
    weight_map["model.norm.weight"] = shard
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="is not a .safetensors file name inside the model directory") as e:
        load_checkpoint(path)
    assert "12345" not in str(e.value) and "outside" not in str(e.value).replace(shard, "")
