"""The real model: SmolLM2-135M-Instruct with YaRN (factor 4) on 2048 tokens of Hamlet, against
transformers' LlamaForCausalLM in float32."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

import yarn_jax
from yarn_jax import assets as assets_module

ROPE = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}
N_TOKENS = 2048


@pytest.fixture(scope="module")
def hamlet_ids(assets):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets["smollm2"])
    ids = tok(assets_module.play_text("hamlet"))["input_ids"][:N_TOKENS]
    ours = yarn_jax.from_pretrained(assets["smollm2"]).tokenizer().encode(assets_module.play_text("hamlet")).ids
    assert ours[:N_TOKENS] == ids  # the tokenizer next to the weights is the one transformers uses
    assert len(ids) == N_TOKENS
    return np.asarray([ids])


def test_smollm2_yarn_logits_match_transformers(assets, hamlet_ids):
    from transformers import LlamaForCausalLM

    ours = np.asarray(yarn_jax.from_pretrained(assets["smollm2"], rope_scaling=ROPE).logits(hamlet_ids))
    hf = LlamaForCausalLM.from_pretrained(assets["smollm2"], rope_parameters={**ROPE, "rope_theta": 1e5},
                                          attn_implementation="eager", dtype=torch.float32).eval()
    assert hf.config.rope_parameters["rope_type"] == "yarn"
    with torch.no_grad():
        ref = hf(torch.as_tensor(hamlet_ids)).logits.numpy()
    max_diff = float(np.abs(ours - ref).max())
    log_p, log_q = jax.nn.log_softmax(ref, -1), jax.nn.log_softmax(ours, -1)
    kl = float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), -1)))
    nll = lambda lp: float(-np.mean(np.take_along_axis(np.asarray(lp)[0, :-1], hamlet_ids[0, 1:, None], -1)))  # noqa
    print(f"\nSmolLM2 YaRN x4, {N_TOKENS} tokens: max|dlogit| {max_diff:.3g}, mean KL {kl:.3g}, "
          f"ppl ours {np.exp(nll(log_q)):.4f} transformers {np.exp(nll(log_p)):.4f}")
    assert max_diff <= 1e-3
    assert kl <= 1e-6
