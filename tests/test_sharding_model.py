"""The model, its gradients and the train step on 8 virtual CPU devices equal one device, for every preset
and attention backend; parameters are really split as the rules say."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from tests.conftest import random_params, tiny_hf_dict
from yarn_jax.config import LlamaConfig
from yarn_jax.model import model_from_params
from yarn_jax.sharding import MeshConfig, Sharder, make_mesh
from yarn_jax.sharding.params import shard_state, spec_table, tree_shardings
from yarn_jax.training.step import TrainStep, batch_sharding, loss_terms, make_optimizer

PRESETS = ["dp", "fsdp", "fsdp_tensor", "fsdp_sequence"]
CFG = LlamaConfig.from_hf_dict(tiny_hf_dict({"rope_type": "yarn", "factor": 4.0,
                                             "original_max_position_embeddings": 16},
                                            hidden=64, vocab=128, heads=4, kv_heads=2))
PARAMS = random_params(CFG)


def _batch(b=8, t=64, seed=0):
    rng = np.random.default_rng(seed)
    seg = np.ones((b, t), np.int32)
    seg[:, t // 3:] = 2  # two packed documents per row, the second ending in padding
    seg[:, -5:] = 0
    pos = np.concatenate([np.arange(t // 3), np.arange(t - t // 3)])
    return {"input_ids": rng.integers(0, CFG.vocab_size, (b, t)).astype(np.int32), "segment_ids": seg,
            "positions": np.broadcast_to(pos, (b, t)).astype(np.int32).copy()}


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / (np.max(np.abs(np.asarray(b))) + 1e-30))


def _loss(state, graphdef, batch):
    total, count = loss_terms(nnx.merge(graphdef, state), batch)
    return total / count


def logits_and_grads(sharder, backend, cfg=CFG):
    """(logits, gradients of the packed-batch loss, the sharded state, the lowered program text or None) of
    the model on `sharder`'s mesh (one device when None)."""
    graphdef, state = nnx.split(model_from_params(cfg, PARAMS, attention_backend=backend, sharder=sharder))
    batch = _batch()
    if sharder is not None:
        state = shard_state(state, sharder)
        batch = {k: jax.device_put(v, batch_sharding(sharder, v.shape)) for k, v in batch.items()}

    def fn(state, batch):
        logits = nnx.merge(graphdef, state)(batch["input_ids"], batch["positions"], batch["segment_ids"])
        return logits, jax.grad(_loss)(state, graphdef, batch)

    if sharder is None:
        return (*jax.jit(fn)(state, batch), state, None)
    shardings = tree_shardings(state, sharder)
    jitted = jax.jit(fn, in_shardings=(shardings, {k: batch_sharding(sharder, v.shape) for k, v in batch.items()}),
                     out_shardings=(sharder.replicated(), shardings))
    return (*jitted(state, batch), state, jitted.lower(state, batch).as_text())


def _logits_and_grads(preset, backend):
    sharder = None if preset is None else Sharder(make_mesh(MeshConfig(preset=preset)))
    logits, grads, state, _ = logits_and_grads(sharder, backend)
    return (logits, grads), state


@pytest.mark.parametrize("backend", ["blockwise", "splash"])
@pytest.mark.parametrize("preset", PRESETS)
def test_logits_and_gradients_equal_one_device(preset, backend):
    (ref_logits, ref_grads), _ = _logits_and_grads(None, "reference")
    (logits, grads), state = _logits_and_grads(preset, backend)
    assert _rel(logits, ref_logits) <= 1e-5
    ref_flat = dict(nnx.to_flat_state(ref_grads))
    for path, g in nnx.to_flat_state(grads):
        assert _rel(g.get_value(), ref_flat[path].get_value()) <= 1e-5, path
    # the gradients come back sharded like their parameters
    specs = spec_table(state)
    assert {"/".join(map(str, p)): str(g.get_value().sharding.spec) for p, g in nnx.to_flat_state(grads)} == specs


EXPECTED_SPECS = {
    "dp": {"layers/q_proj": P(None, None, None, None), "embed_tokens": P(None, None)},
    "fsdp": {"layers/q_proj": P(None, "fsdp", None, None), "layers/o_proj": P(None, None, None, "fsdp"),
             "layers/down_proj": P(None, None, "fsdp"), "embed_tokens": P(None, "fsdp"), "lm_head": P("fsdp", None)},
    "fsdp_tensor": {"layers/q_proj": P(None, "fsdp", "tensor", None), "layers/k_proj": P(None, "fsdp", "tensor", None),
                    "layers/o_proj": P(None, "tensor", None, "fsdp"), "layers/gate_proj": P(None, "fsdp", "tensor"),
                    "layers/down_proj": P(None, "tensor", "fsdp"), "embed_tokens": P("tensor", "fsdp"),
                    "lm_head": P("fsdp", "tensor"), "layers/input_norm/weight": P(None, None)},
    "fsdp_sequence": {"layers/q_proj": P(None, ("fsdp", "sequence"), None, None),
                      "embed_tokens": P(None, ("fsdp", "sequence"))},
}


@pytest.mark.parametrize("preset", PRESETS)
def test_parameters_are_split_as_the_rules_say(preset):
    sharder = Sharder(make_mesh(MeshConfig(preset=preset)))
    graphdef, state = nnx.split(model_from_params(CFG, PARAMS))
    placed = dict(nnx.to_flat_state(shard_state(state, sharder)))
    for name, spec in EXPECTED_SPECS[preset].items():
        value = placed[tuple(name.split("/"))].get_value()
        assert value.sharding.spec == spec, name
        # each device really holds only its block
        local = tuple(n // (np.prod([sharder.size(a) for a in ((ax,) if isinstance(ax, str) else ax)])
                            if ax else 1) for n, ax in zip(value.shape, tuple(spec) + (None,) * value.ndim))
        assert all(s.data.shape == local for s in value.addressable_shards), name
        np.testing.assert_array_equal(np.asarray(value), PARAMS[tuple(name.split("/"))])


@pytest.mark.parametrize("preset, context_parallel", [("dp", "all_gather"), ("fsdp_tensor", "all_gather"),
                                                       ("fsdp_sequence", "all_gather"), ("fsdp_sequence", "ulysses"),
                                                       ("fsdp_sequence", "ring")])
def test_train_steps_equal_one_device(preset, context_parallel):
    """Two AdamW steps (clipped, with warmup) on packed batches: losses, gradient norms and updated
    parameters match the single-device step (the sequence preset: load-balanced; all-gather, Ulysses or ring)."""
    # eps above rounding-level gradients: AdamW's first update maps |g| >> eps to +-lr, so an entry whose
    # tiny gradient comes from cancellation would compare summation orders, not sharding
    optimizer = make_optimizer(1e-2, warmup_steps=1, clip_norm=0.5, eps=1e-3)
    batches = [_batch(seed=s) for s in (1, 2)]

    def run(sharder):
        model = model_from_params(CFG, PARAMS, sharder=sharder)
        st = nnx.state(model)
        st = st if sharder is None else shard_state(st, sharder)
        step = TrainStep(model, optimizer)
        opt = step.init(st)
        metrics = []
        for b in batches:
            if sharder is not None:
                b = {k: jax.device_put(v, batch_sharding(sharder, v.shape)) for k, v in b.items()}
            st, opt, m = step(st, opt, b)
            metrics.append({k: float(v) for k, v in m.items()})
        return st, metrics

    ref_state, ref_metrics = run(None)
    sharded_state, metrics = run(MeshConfig(preset=preset, context_parallel=context_parallel).sharder())
    for m, r in zip(metrics, ref_metrics):
        assert m["tokens"] == r["tokens"]
        assert abs(m["loss"] - r["loss"]) <= 1e-5 * abs(r["loss"])
        assert abs(m["grad_norm"] - r["grad_norm"]) <= 1e-5 * r["grad_norm"]
    ref_flat = dict(nnx.to_flat_state(ref_state))
    for path, v in nnx.to_flat_state(sharded_state):
        assert _rel(v.get_value(), ref_flat[path].get_value()) <= 1e-5, path


def test_loss_counts_only_real_next_tokens_of_the_same_document():
    """loss_terms against a hand-written masked mean over transformers-free log-softmax of our logits."""
    model = model_from_params(CFG, PARAMS)
    batch = {k: jnp.asarray(v) for k, v in _batch(b=2).items()}
    total, count = loss_terms(model, batch)
    logits = np.asarray(model(batch["input_ids"], batch["positions"], batch["segment_ids"]), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    ids, seg = np.asarray(batch["input_ids"]), np.asarray(batch["segment_ids"])
    nll, n = 0.0, 0
    for b in range(2):
        for t in range(ids.shape[1] - 1):
            if seg[b, t] > 0 and seg[b, t + 1] == seg[b, t]:
                nll -= logp[b, t, ids[b, t + 1]]
                n += 1
    assert int(count) == n == 2 * (64 - 1 - 1 - 5)  # minus the last position, the document break, padding
    assert abs(float(total) - nll) <= 1e-5 * nll


def test_gradient_accumulation_equals_one_batch():
    # eps above rounding-level gradients: AdamW's first update maps |g| >> eps to +-lr, so an entry whose
    # tiny gradient comes from cancellation would compare summation orders, not sharding
    optimizer = make_optimizer(1e-2, warmup_steps=1, eps=1e-3)
    model = model_from_params(CFG, PARAMS)
    state = nnx.state(model)
    batch = {k: jnp.asarray(v) for k, v in _batch(seed=3).items()}
    out = {}
    for accum in (1, 4):
        step = TrainStep(model, optimizer, accum=accum)
        st = jax.tree.map(jnp.copy, state)
        st, _, m = step(st, step.init(st), batch)
        out[accum] = (st, float(m["loss"]))
    assert abs(out[1][1] - out[4][1]) <= 1e-6 * out[1][1]
    flat = dict(nnx.to_flat_state(out[1][0]))
    for path, v in nnx.to_flat_state(out[4][0]):
        assert _rel(v.get_value(), flat[path].get_value()) <= 1e-5, path
