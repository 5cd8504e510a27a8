"""The Python API on the object from_pretrained returns (yarn_jax/api.py): log-probabilities, perplexity and
greedy generation against transformers' own LlamaForCausalLM on the same checkpoint (a tiny random model
with SmolLM2's tokenizer), the sampling filters against transformers' top-k / top-p warpers, the BOS rule,
bundled names, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import yarn_jax
from tests.conftest import random_params, tiny_hf_dict
from yarn_jax.checkpoint import save_hf_checkpoint
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import ConfigError
from yarn_jax.generate import Sampling, filtered_logits

TEXT = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer the slings"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, assets):
    d = tiny_hf_dict(None, max_pos=64, vocab=49152, hidden=32, heads=2, kv_heads=1)
    d["bos_token_id"], d["eos_token_id"] = 1, 2
    cfg = LlamaConfig.from_hf_dict(d)
    out = tmp_path_factory.mktemp("tiny") / "model"
    save_hf_checkpoint(out, cfg, random_params(cfg, seed=5, std=0.1), tokenizer_dir=str(assets["smollm2"]))
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    return yarn_jax.from_pretrained(out), hf


def _hf_log_probs(hf, ids):
    with torch.no_grad():
        lp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), -1).numpy()
    return lp[np.arange(len(ids) - 1), ids[1:]]


def test_encode_applies_the_bos_rule(tiny):
    model, _ = tiny
    ids = model.encode(TEXT)
    assert ids[0] == 1 and ids[1:].tolist() == model.tokenizer().encode(TEXT, add_special_tokens=False).ids
    assert model.encode(TEXT, bos=False).tolist() == ids[1:].tolist()
    assert model.decode(ids) == TEXT


def test_log_probs_and_perplexity_equal_transformers(tiny):
    model, hf = tiny
    ids = model.encode(TEXT)
    want = _hf_log_probs(hf, ids.tolist())
    np.testing.assert_allclose(model.log_probs(TEXT), want, atol=2e-5)
    np.testing.assert_allclose(model.log_probs(ids), want, atol=2e-5)
    # one window with BOS (the default length), and truncate to 16 positions: BOS + the first 15 tokens
    assert model.perplexity(TEXT) == pytest.approx(float(np.exp(-want.mean())), rel=1e-5)
    assert model.perplexity(TEXT, length=16, protocol="truncate") == pytest.approx(
        float(np.exp(-want[:15].mean())), rel=1e-5)


def test_sliding_perplexity_scores_each_token_once_with_its_window(tiny):
    """length 12, stride 5: the reference loop over windows, each [BOS] + up to 11 tokens, scoring the new ones."""
    model, hf = tiny
    doc = model.encode(TEXT, bos=False).tolist()
    nll, prev_end, begin = [], 0, 0
    while True:
        end = min(begin + 11, len(doc))
        lp = _hf_log_probs(hf, [1] + doc[begin:end])
        nll += (-lp[-(end - prev_end):]).tolist()
        if end == len(doc):
            break
        prev_end, begin = end, begin + 5
    assert len(nll) == len(doc)
    assert model.perplexity(TEXT, length=12, protocol="sliding", stride=5) == pytest.approx(float(np.exp(np.mean(nll))), rel=1e-5)


def test_greedy_generation_equals_transformers_generate(tiny):
    model, hf = tiny
    ids = model.encode("Once upon a time")
    with torch.no_grad():
        want = hf.generate(torch.tensor([ids.tolist()]), max_new_tokens=12, do_sample=False,
                           eos_token_id=None, pad_token_id=0)[0, ids.size:].numpy()
    got = model.generate(ids, max_new_tokens=12, stop=[])
    np.testing.assert_array_equal(got, want)
    assert model.generate("Once upon a time", max_new_tokens=12, stop=[]) == model.decode(want)


def test_sampling_filters_equal_transformers_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = np.random.default_rng(0).normal(size=(4, 50)).astype(np.float32) * 3
    for top_k, top_p in [(5, None), (None, 0.7), (None, 0.05), (8, 0.9)]:
        want = torch.tensor(logits)
        if top_k:
            want = TopKLogitsWarper(top_k)(None, want)
        if top_p:
            want = TopPLogitsWarper(top_p)(None, want)
        got = np.asarray(filtered_logits(logits, top_k, top_p))
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want.numpy()), err_msg=f"{top_k} {top_p}")


def test_sampling_follows_the_nucleus_distribution_and_its_seed():
    """p = (0.5, 0.3, 0.15, 0.05), top_p 0.8: only the first two, at 0.625 / 0.375 (hand-computed)."""
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    draws = np.array([int(Sampling(top_p=0.8, seed=3)(logits, step)[0]) for step in range(4000)])
    assert set(draws) <= {0, 1} and abs(np.mean(draws == 0) - 0.625) < 0.025
    again = np.array([int(Sampling(top_p=0.8, seed=3)(logits, step)[0]) for step in range(50)])
    np.testing.assert_array_equal(again, draws[:50])


def test_sampled_generation_is_reproducible_and_top_k_1_is_greedy(tiny):
    model, _ = tiny
    a = model.generate("Once upon a time", max_new_tokens=8, temperature=1.0, seed=7, stop=[])
    assert a == model.generate("Once upon a time", max_new_tokens=8, temperature=1.0, seed=7, stop=[])
    greedy = model.generate("Once upon a time", max_new_tokens=8, stop=[])
    assert model.generate("Once upon a time", max_new_tokens=8, temperature=1.3, top_k=1, seed=1, stop=[]) == greedy


def test_text_stops_are_cut(tiny):
    model, _ = tiny
    full = model.generate("Once upon a time", max_new_tokens=10, stop=[])
    word = full.strip().split()[1] if len(full.strip().split()) > 1 else full.strip()
    cut = model.generate("Once upon a time", max_new_tokens=10, stop=[word])
    assert word not in cut and full.startswith(cut)


@pytest.mark.parametrize("call, field", [
    (lambda m: m.generate("x", max_new_tokens=0), "max_new_tokens"),
    (lambda m: m.generate("x", temperature=-1.0), "temperature"),
    (lambda m: m.generate("x", top_p=1.5), "top_p"),
    (lambda m: m.log_probs([5]), "at least 2 tokens"),
    (lambda m: m.log_probs(np.array([0, 10 ** 6])), "vocab_size"),
])
def test_bad_arguments_name_themselves(tiny, call, field):
    with pytest.raises(ConfigError, match=field):
        call(tiny[0])


def test_bundled_names_resolve(assets):
    model = yarn_jax.from_pretrained("smollm2")
    assert model.source == str(assets["smollm2"]) and model.config.max_position_embeddings == 8192
    assert model.encode("Hi")[0] == model.config.bos_token_id
