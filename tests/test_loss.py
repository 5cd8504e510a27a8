"""Chunked LM head and loss against the dense computation; the full model through every attention
backend gives the reference backend's logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_params, tiny_hf_dict

from yarn_jax.config import LlamaConfig
from yarn_jax.loss import mean_nll, token_log_probs
from yarn_jax.model import model_from_params, next_token_log_probs


def dense_log_probs(h, w, y):
    logits = jnp.einsum("bte,ev->btv", h, w, preferred_element_type=jnp.float32)
    return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), y[..., None], -1)[..., 0]


@pytest.mark.parametrize("t,chunk", [(50, 16), (64, 64), (7, 1024)])
def test_chunked_log_probs_and_gradients_equal_dense(t, chunk):
    ks = jax.random.split(jax.random.PRNGKey(0), 3)
    h = jax.random.normal(ks[0], (2, t, 24))
    w = jax.random.normal(ks[1], (24, 301)) * 0.5
    y = jax.random.randint(ks[2], (2, t), 0, 301)
    np.testing.assert_allclose(token_log_probs(h, w, y, chunk=chunk), dense_log_probs(h, w, y), atol=2e-5)
    mask = (jnp.arange(t) % 3 != 0)[None].repeat(2, 0)
    dense_loss = lambda h, w: -jnp.sum(dense_log_probs(h, w, y) * mask) / jnp.sum(mask)  # noqa: E731
    chunked = lambda h, w: mean_nll(h, w, y, mask, chunk=chunk)  # noqa: E731
    np.testing.assert_allclose(chunked(h, w), dense_loss(h, w), rtol=1e-6)
    for a, b in zip(jax.grad(chunked, argnums=(0, 1))(h, w), jax.grad(dense_loss, argnums=(0, 1))(h, w)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_chunked_loss_never_holds_full_logits():
    """At T = 8192 and vocab 49152 one float32 logits tensor is 1.6 GB; the chunked loss (with its
    gradient) needs a small fraction of that (XLA's temp-memory analysis of the compiled program)."""
    t, e, v = 8192, 64, 49152
    h = jax.ShapeDtypeStruct((1, t, e), jnp.float32)
    w = jax.ShapeDtypeStruct((e, v), jnp.float32)
    y = jax.ShapeDtypeStruct((1, t), jnp.int32)
    grad = jax.jit(jax.grad(lambda h, w, y: mean_nll(h, w, y, chunk=256), argnums=(0, 1)))
    temp = grad.lower(h, w, y).compile().memory_analysis().temp_size_in_bytes
    assert temp < t * v * 4 / 8, temp


@pytest.mark.parametrize("backend", ["blockwise", "splash", "gpu_flash", "auto"])
def test_model_logits_with_each_backend(backend):
    d = tiny_hf_dict({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}, max_pos=128)
    cfg = LlamaConfig.from_hf_dict(d)
    params = random_params(cfg, seed=3)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 80)).astype(np.int32)
    ref = model_from_params(cfg, params, attention_backend="reference")
    other = model_from_params(cfg, params, attention_backend=backend)
    np.testing.assert_allclose(np.asarray(other(ids)), np.asarray(ref(ids)), atol=1e-4)
    lp = next_token_log_probs(other, ids, chunk=32)
    np.testing.assert_allclose(lp, dense_log_probs(ref.hidden_states(ids)[:, :-1], ref.lm_head_weight(),
                                                   ids[:, 1:]), atol=1e-4)
