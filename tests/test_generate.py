"""KV-cache decoding against full recomputation (and the cache-free model forward)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_params, tiny_hf_dict
from flax import nnx

from yarn_jax.config import LlamaConfig
from yarn_jax.generate import generate_ids, greedy_generate_recompute
from yarn_jax.model import model_from_params

ROPES = {
    "default": None,
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "dynamic_yarn": {"rope_type": "dynamic_yarn", "factor": 4.0, "original_max_position_embeddings": 32},
}


def tiny_model(rope):
    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict(rope, max_pos=32, vocab=97))
    return model_from_params(cfg, random_params(cfg, seed=3))


@pytest.mark.parametrize("name", ["default", "yarn"])
def test_cached_step_logits_equal_full_forward_for_static_methods(name):
    """Static rope: each cached step's logits equal the last-position logits of a full forward."""
    model = tiny_model(ROPES[name])
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 97, (2, 40)), jnp.int32)
    from yarn_jax.generate import _prefill, _step

    graphdef, state = nnx.split(model)
    logits, kc, vc = _prefill(graphdef, state, ids[:, :30], jnp.int32(30), 40)
    np.testing.assert_allclose(logits, model(ids[:, :30])[:, -1], atol=1e-5)
    for pos in range(30, 39):
        logits, kc, vc = _step(graphdef, state, ids[:, pos], jnp.int32(pos), kc, vc)
        np.testing.assert_allclose(logits, model(ids[:, :pos + 1])[:, -1], atol=1e-5, err_msg=f"pos {pos}")


@pytest.mark.parametrize("name", list(ROPES))
def test_greedy_tokens_equal_full_recompute(name):
    """A 160-token prompt, 5x the original context (32), plus 10 new tokens: static methods decode from the
    cache, length-dependent ones re-run the forward; both equal a full recompute token for token."""
    model = tiny_model(ROPES[name])
    prompt = jnp.asarray(np.random.default_rng(1).integers(0, 97, (3, 160)), jnp.int32)
    cached = generate_ids(model, prompt, 10, dynamic_cache=False)
    recomputed = greedy_generate_recompute(model, prompt, 10)
    assert cached.shape == (3, 10)
    np.testing.assert_array_equal(cached, recomputed)


@pytest.mark.parametrize("name", ["yarn", "dynamic_yarn"])
def test_padded_prompts_decode_the_unpadded_tokens_and_allowed_tokens_are_respected(name):
    """pad_to (one program for prompts of any length up to it): the tokens of the unpadded call, for a static
    rope (cache) and a dynamic one past L0 (recompute, its rope at the real length); `allowed` restricts
    every chosen token to the mask."""
    model = tiny_model(ROPES[name])
    for t in (37, 90):
        prompt = jnp.asarray(np.random.default_rng(t).integers(0, 97, (2, t)), jnp.int32)
        np.testing.assert_array_equal(generate_ids(model, prompt, 6, pad_to=100), generate_ids(model, prompt, 6))
    allowed = np.zeros(97, bool)
    allowed[[3, 5, 8]] = True
    out = np.asarray(generate_ids(model, prompt, 6, allowed=allowed))
    assert set(out.ravel()) <= {3, 5, 8}


def test_dynamic_cache_mode_rotates_every_key_at_the_current_length():
    """dynamic_cache=True past the original context: each step's logits are those of a full forward up to
    the one effect a cache cannot replay (earlier tokens' deeper-layer states at the prompt's scale); on a
    ONE-layer model that effect vanishes, so the cached step must equal the full forward."""
    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict(ROPES["dynamic_yarn"], max_pos=32, vocab=97, layers=1))
    model = model_from_params(cfg, random_params(cfg, seed=5))
    ids = jnp.asarray(np.random.default_rng(2).integers(0, 97, (2, 60)), jnp.int32)
    from yarn_jax.generate import _prefill, _step, frequencies_change

    assert frequencies_change(model, 50, 59) and not frequencies_change(model, 10, 32)
    graphdef, state = nnx.split(model)
    _, kc, vc = _prefill(graphdef, state, ids[:, :50], jnp.int32(50), 60)
    for pos in range(50, 59):
        logits, kc, vc = _step(graphdef, state, ids[:, pos], jnp.int32(pos), kc, vc)
        np.testing.assert_allclose(logits, model(ids[:, :pos + 1])[:, -1], atol=1e-5, err_msg=f"pos {pos}")
    # keys rotated at the prompt's length (the stale cache) are visibly wrong on the same model
    stale = model(ids[:, :59], frequencies=model.frequencies(50))[:, -1]
    assert float(jnp.abs(stale - model(ids[:, :59])[:, -1]).max()) > 1e-2


@pytest.mark.parametrize("name", ["yarn", "dynamic"])
def test_decoding_on_a_mesh_is_sharded_and_gives_the_one_device_tokens(name):
    """A model loaded onto 8 virtual devices (fsdp 2 x sequence 2 x tensor 2) decodes under its own
    sharder — prefill, cached steps (yarn) and the recompute path (dynamic past L0) alike: the lowered
    programs contain the shard_map attention and the logical constraints (absent without a sharder: the
    check can fail), and the tokens are the single-device ones."""
    from yarn_jax.generate import _last_logits, _prefill, _step
    from yarn_jax.sharding import MeshConfig, Sharder, make_mesh
    from yarn_jax.sharding.params import shard_state

    single = tiny_model(ROPES[name])
    sharder = Sharder(make_mesh(MeshConfig(axes={"fsdp": 2, "sequence": 2, "tensor": 2})))
    graphdef, state = nnx.split(single.replace(sharder=sharder))
    model = nnx.merge(graphdef, shard_state(state, sharder))
    prompt = jnp.asarray(np.random.default_rng(4).integers(0, 97, (2, 160)), jnp.int32)
    np.testing.assert_array_equal(generate_ids(model, prompt, 10), generate_ids(single, prompt, 10))

    def programs(m):
        g, s = nnx.split(m)
        kc = jnp.zeros((2, 2, 170, 2, 16))
        return [_prefill.lower(g, s, prompt, jnp.int32(160), 170).as_text(), _step.lower(g, s, prompt[:, 0], jnp.int32(160), kc, kc)
                .as_text(), _last_logits.lower(g, s, jnp.pad(prompt, ((0, 0), (0, 9))), jnp.int32(160)).as_text()]

    prefill, step, recompute = programs(model)
    for text in (prefill, recompute):
        assert "sdy.manual_computation" in text and "sdy.sharding_constraint" in text
    assert "sdy.sharding_constraint" in step  # one-token steps: the caches and residual stream constrained
    assert not any("sdy.manual_computation" in t or "sdy.sharding_constraint" in t for t in programs(single))
