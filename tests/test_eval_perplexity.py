"""Perplexity protocols against an independent transformers implementation of the reference repo's loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import random_params, tiny_hf_dict, torch_llama

from yarn_jax.checkpoint.layout import params_to_hf
from yarn_jax.config import LlamaConfig
from yarn_jax.data.corpus import Document
from yarn_jax.evaluation.methods import parse_method
from yarn_jax.evaluation.perplexity import PerplexityScorer, Window, aggregate, position_buckets, windows
from yarn_jax.model import model_from_params

L0 = 32


def test_windows_follow_the_reference_loop():
    # n=1000, L=512, S=256, BOS: span 511 -> [0,511) all scored, [256,767) last 256, [512,1000) last 233
    assert windows(1000, 512, 256, bos=True, protocol="sliding") == [
        Window(0, 511, 511), Window(256, 767, 256), Window(512, 1000, 233)]
    assert windows(1000, 512, 256, bos=True, protocol="truncate") == [Window(0, 511, 511)]
    assert windows(1000, 512, 256, bos=False, protocol="truncate") == [Window(0, 512, 511)]
    assert windows(300, 512, 256, bos=True, protocol="sliding") == [Window(0, 300, 300)]


@pytest.mark.parametrize("bos", [True, False])
@pytest.mark.parametrize("n,length,stride", [(1000, 512, 256), (777, 128, 100), (129, 128, 7)])
def test_sliding_windows_score_every_token_once(n, length, stride, bos):
    scored = []
    for w in windows(n, length, stride, bos=bos, protocol="sliding"):
        assert w.end - w.begin <= length - bos and w.scored <= w.end - w.begin
        scored.extend(range(w.end - w.scored, w.end))
    assert scored == list(range(0 if bos else 1, n))


def test_every_stride_below_the_length_scores_every_token_once_and_the_rest_are_refused():
    """Exhaustive over small cases: strides 1..L-1 score each predictable token exactly once (with BOS all
    n, without n - 1: the first token has no context); a stride >= L would skip the tokens between windows
    (the reported bug: L = 256 at the default stride 256 skipped one token per window) and is refused."""
    from yarn_jax.errors import ConfigError

    for bos in (True, False):
        for length in range(2, 13):
            for n in range(1, 40):
                for stride in range(1, length):
                    scored = []
                    for w in windows(n, length, stride, bos=bos, protocol="sliding"):
                        scored.extend(range(w.end - w.scored, w.end))
                    assert scored == list(range(0 if bos else 1, n)), (bos, length, n, stride)
                for stride in (length, length + 1, 0):
                    with pytest.raises(ConfigError, match=f"stride {stride} must be in"):
                        windows(n, length, stride, bos=bos, protocol="sliding")


def reference_nll(hf_dict, hf_tensors, doc, length, stride, bos, truncate):
    """The reference repo's loop (eval/perplexity.py), in transformers/torch: a fresh model per window,
    BOS + window, only the not-yet-scored tail counts. Returns the per-token NLL list."""
    span = length - 1 if bos is not None else length
    n = len(doc)
    if truncate:
        n = min(n, span)
    out, prev_end, begin = [], 0, 0
    while True:
        end = min(begin + span, n)
        body = list(doc[begin:end])
        inp = ([bos] if bos is not None else []) + body
        model = torch_llama(hf_dict, hf_tensors)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([inp])).logits[0].double(), -1)
        new = min(end - prev_end, len(inp) - 1)
        for i in range(len(inp) - new, len(inp)):
            out.append(-float(logp[i - 1, inp[i]]))
        if end == n:
            return out
        prev_end, begin = end, begin + stride


ROPES = {
    "none": None,
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
}


@pytest.mark.parametrize("protocol", ["truncate", "sliding"])
@pytest.mark.parametrize("rope", list(ROPES))
@pytest.mark.parametrize("bos", [5, None], ids=["bos", "nobos"])
def test_scores_equal_the_reference_loop_in_transformers(rope, protocol, bos):
    """Tiny random model (original context 32, windows of 48 past it, stride 20, a 101-token document):
    per-token NLL equal to transformers run window by window. HF `dynamic` checks that a padded short
    last window still sees its real length."""
    d = tiny_hf_dict(None, max_pos=L0, vocab=97)
    cfg = LlamaConfig.from_hf_dict(d)
    params = random_params(cfg, seed=4)
    method = parse_method("none", 1, L0) if ROPES[rope] is None else parse_method(
        __import__("json").dumps(ROPES[rope]), 1, L0)
    hf_dict = tiny_hf_dict(ROPES[rope], max_pos=L0, vocab=97)
    doc = Document("d", np.random.default_rng(0).integers(0, 97, 101).astype(np.int32))
    scorer = PerplexityScorer(model_from_params(cfg, params), bos=bos)
    ours = scorer.score(doc, 48, method, protocol=protocol, stride=20)
    ref = reference_nll(hf_dict, params_to_hf(cfg, params), doc.ids, 48, 20, bos, protocol == "truncate")
    assert ours.tokens == len(ref)
    np.testing.assert_allclose(ours.nll, ref, atol=2e-5, rtol=1e-5)


def test_dynamic_yarn_inside_the_original_context_has_the_unscaled_signature():
    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict(None, max_pos=L0, vocab=97))
    scorer = PerplexityScorer(model_from_params(cfg, random_params(cfg)), bos=1)
    doc = Document("d", np.arange(200, dtype=np.int32) % 97)
    none, dyn, yarn = (parse_method(m, 2, L0) for m in ("none", "dynamic_yarn", "yarn"))
    assert scorer.signature(dyn, doc, 32, 256, "truncate") == scorer.signature(none, doc, 32, 256, "truncate")
    assert scorer.signature(dyn, doc, 64, 256, "truncate") != scorer.signature(none, doc, 64, 256, "truncate")
    assert scorer.signature(yarn, doc, 32, 256, "truncate") != scorer.signature(none, doc, 32, 256, "truncate")


def test_aggregate_and_buckets_by_hand():
    cells = [{"nll_sum": 10.0, "tokens": 5}, {"nll_sum": 3.0, "tokens": 1}]
    agg = aggregate(cells)
    assert agg["ppl"] == pytest.approx(math.exp((2.0 + 3.0) / 2))  # per-document means, then the mean
    assert agg["ppl_token_weighted"] == pytest.approx(math.exp(13.0 / 6))
    from yarn_jax.evaluation.perplexity import Scores

    sums, counts = position_buckets(Scores(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 1, 6, 7])), 8, 2)
    assert sums == [3.0, 7.0] and counts == [2, 2]
