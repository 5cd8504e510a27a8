"""The training loss and its gradients against transformers' PyTorch backward pass, and the fused
weighted head loss against the dense computation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import random_params, tiny_hf_dict, torch_llama
from flax import nnx

from yarn_jax.checkpoint.layout import params_to_hf
from yarn_jax.config import LlamaConfig
from yarn_jax.loss import weighted_nll
from yarn_jax.model import flat_params, model_from_params
from yarn_jax.training.step import learning_rate_schedule, loss_terms

L0 = 32


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("backend", ["blockwise", "reference"])
def test_loss_gradients_match_transformers_backward(tie, backend):
    """Mean next-token NLL at 2.5x L0 with YaRN active: d loss / d every weight equals torch autograd through
    LlamaForCausalLM(labels=ids) (projections' custom VJP, fused head gradients, attention backward)."""
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L0}
    d = tiny_hf_dict(rope, tie=tie, max_pos=4 * L0)
    cfg = LlamaConfig.from_hf_dict(d)
    params = random_params(cfg, seed=5, std=0.1)
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 80)).astype(np.int32)

    model = model_from_params(cfg, params, attention_backend=backend)
    graphdef, state = nnx.split(model)

    def loss(s):
        total, count = loss_terms(nnx.merge(graphdef, s), {"input_ids": jnp.asarray(ids)}, chunk=16)
        return total / count

    value, grads = jax.value_and_grad(loss)(state)
    ours = params_to_hf(cfg, flat_params(grads))

    hf = torch_llama(d, params_to_hf(cfg, params))
    out = hf(torch.as_tensor(ids, dtype=torch.long), labels=torch.as_tensor(ids, dtype=torch.long))
    out.loss.backward()
    np.testing.assert_allclose(float(value), out.loss.item(), rtol=1e-5)
    ref = {name: p.grad.numpy() for name, p in hf.named_parameters()}
    assert set(ref) <= set(ours) and len(ref) == len(ours)
    for name, g in ref.items():
        scale = np.abs(g).max()
        assert scale > 0, name
        np.testing.assert_allclose(ours[name], g, atol=2e-5 * max(scale, 1.0), err_msg=name)


def test_weighted_nll_and_gradients_equal_dense():
    """Real-valued weights, T not a multiple of the chunk; the backward only scales the precomputed
    gradients by the cotangent (checked with a cotangent of 3)."""
    ks = jax.random.split(jax.random.PRNGKey(2), 4)
    h = jax.random.normal(ks[0], (2, 37, 24))
    w = jax.random.normal(ks[1], (24, 301)) * 0.5
    y = jax.random.randint(ks[2], (2, 37), 0, 301)
    wt = jax.random.uniform(ks[3], (2, 37))

    def dense(h, w):
        logits = jnp.einsum("bte,ev->btv", h, w)
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), y[..., None], -1)[..., 0]
        return -3.0 * jnp.sum(wt * lp)

    fused = lambda h, w: 3.0 * weighted_nll(h, w, y, wt, chunk=8)  # noqa: E731
    np.testing.assert_allclose(fused(h, w), dense(h, w), rtol=1e-6)
    for a, b in zip(jax.grad(fused, argnums=(0, 1))(h, w), jax.grad(dense, argnums=(0, 1))(h, w)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_learning_rate_schedules_follow_their_formulas():
    # constant: update t (0-based) of W warmup updates runs at lr (t + 1) / W — the first is not at 0 — then lr
    const = learning_rate_schedule(2e-5, 20)
    for t in (0, 5, 18, 19, 20, 400):
        assert float(const(t)) == pytest.approx(2e-5 * min(t + 1, 20) / 20, rel=1e-6)
    assert float(learning_rate_schedule(2e-5, 1)(0)) == pytest.approx(2e-5)  # one warmup step does something
    # cosine, in steps k = t + 1: lr * (r + (1 - r) * (1 + cos(pi * (k - W) / (N - W))) / 2) after warmup,
    # r = 0.1, reaching r * lr at the last update (t = N - 1)
    lr, w, n, r = 1e-3, 10, 110, 0.1
    cos = learning_rate_schedule(lr, w, "cosine", n)
    for t in (0, 5, 9, 10, 35, 60, 85, 109, 200):
        k = t + 1
        frac = min(max(k - w, 0), n - w) / (n - w)
        want = lr * k / w if k < w else lr * (r + (1 - r) * (1 + np.cos(np.pi * frac)) / 2)
        assert float(cos(t)) == pytest.approx(want, rel=1e-5, abs=1e-12)
    assert float(cos(n - 1)) == pytest.approx(r * lr, rel=1e-5)
    with pytest.raises(ValueError, match="total_steps > warmup_steps"):
        learning_rate_schedule(lr, 10, "cosine", 10)


def test_loaded_parameters_made_donatable_are_updated_in_place(tmp_path):
    """A checkpoint loaded on CPU aliases host memory, which a donated step cannot reuse (it would copy every
    parameter: one model size more at the peak); after `donatable` the step writes each new parameter into
    the old one's buffer. Buffers compared by address; the values are the same as the loaded ones."""
    from yarn_jax.checkpoint import save_hf_checkpoint
    from yarn_jax.pretrained import load_pretrained
    from yarn_jax.training.step import TrainStep, donatable, make_optimizer

    cfg = LlamaConfig.from_hf_dict(tiny_hf_dict(hidden=64, head_dim=16))
    save_hf_checkpoint(tmp_path / "m", cfg, random_params(cfg, seed=2, std=0.05))
    batch = {"input_ids": jnp.asarray(np.arange(24, dtype=np.int32)[None] % cfg.vocab_size)}

    def reused_after_step(state):
        step = TrainStep(model, make_optimizer(1e-3, warmup_steps=0))
        before = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)]
        new, _, _ = step(state, step.init(state), batch)
        return [x.unsafe_buffer_pointer() for x in jax.tree.leaves(new)] == before

    model = load_pretrained(tmp_path / "m").module  # as the training loop loads it
    loaded = nnx.state(model)
    owned = donatable(loaded)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(owned)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert reused_after_step(owned)
    assert not reused_after_step(loaded)  # the loaded arrays really alias host memory (else the test is moot)
