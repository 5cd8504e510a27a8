"""GGUF import: the q/k row permutation, and the real SmolLM2 file against transformers' GGUF loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from yarn_jax.checkpoint.gguf import open_gguf, unpermute_rotary_rows


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
