"""Load-balanced sequence sharding: the dual-chunk and striped layouts by hand, the balance it buys, and the model under it
(8 virtual devices, sequence axis 2/4/8, with fsdp/tensor) equal to one device — logits and every gradient —
per backend, with packed and padded documents and dynamic ropes past L0 (frequencies from the global
length)."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from tests.test_sharding_model import CFG, _rel, logits_and_grads
from yarn_jax.sharding import MeshConfig, make_mesh
from yarn_jax.sharding.balance import balanced_order, causal_work, shard_positions, to_sequence_order
from yarn_jax.sharding.rules import Sharder


def test_layouts_by_hand():
    # 16 tokens, 2 shards: 4 chunks of 4; shard 0 holds chunks 0 and 3, shard 1 chunks 1 and 2
    assert balanced_order(16, 2, "dual_chunk").tolist() == [0, 1, 2, 3, 12, 13, 14, 15, 4, 5, 6, 7, 8, 9, 10, 11]
    # striped: shard r holds r, r + P, ...
    assert balanced_order(12, 3, "striped").tolist() == [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]
    assert shard_positions(12, 3, "none").tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert balanced_order(16, 2, "none") is None and balanced_order(18, 2, "dual_chunk") is None  # 18 % 4
    assert balanced_order(18, 2, "striped") is not None and balanced_order(17, 2, "striped") is None
    assert balanced_order(16, 1, "dual_chunk") is None


@pytest.mark.parametrize("shards", [2, 4, 8, 16])
def test_balanced_layouts_balance_causal_work(shards):
    """Query-key pairs per shard: contiguous shards are lopsided (max/mean -> 2 as P grows: 1.87 at P = 8),
    dual chunks equal, stripes within (P - 1) / 2 pairs per query row of equal (shard r's i-th query sees
    r + P i + 1 keys)."""
    t = 1024 * shards
    n = t // shards
    contiguous, balanced = causal_work(t, shards, "none"), causal_work(t, shards, "dual_chunk")
    striped = causal_work(t, shards, "striped")
    assert contiguous.sum() == balanced.sum() == striped.sum() == t * (t + 1) // 2
    assert balanced.max() == balanced.min()
    assert striped.max() - striped.min() == (shards - 1) * n
    c = t // shards  # shard r: positions r*c .. r*c + c - 1, each sees (position + 1) keys
    assert contiguous.max() / contiguous.mean() == pytest.approx((c * (shards - 1) + (c + 1) / 2) / ((t + 1) / 2))


def test_modeled_imbalance_per_setting():
    from yarn_jax.sharding.balance import attention_imbalance

    assert attention_imbalance(65536, 8, "dual_chunk") == 1.0
    assert attention_imbalance(65536, 8, "striped") == pytest.approx(1.0, abs=1e-3)
    assert attention_imbalance(65536, 8, "none") == pytest.approx(15 / 8, rel=1e-3)  # (2P-1)/P
    assert attention_imbalance(65536, 8, "none", "ulysses") == 1.0
    assert attention_imbalance(65536 + 8, 8, "dual_chunk") == pytest.approx(15 / 8, rel=1e-3)  # 2P does not divide


@pytest.mark.parametrize("layout", ["dual_chunk", "striped"])
def test_gathered_shards_come_back_in_sequence_order(layout):
    order = balanced_order(32, 4, layout)
    gathered = np.arange(32)[order][None, :, None]  # what the all-gather of balanced shards holds
    in_order = np.asarray(to_sequence_order(gathered, 4, layout))
    np.testing.assert_array_equal(in_order[0, :, 0], np.arange(32))
    np.testing.assert_array_equal(np.asarray(to_sequence_order(in_order, 4, layout, inverse=True)), gathered)


def _run(axes, backend, rope, load_balance="dual_chunk", context_parallel="all_gather"):
    """((logits, gradients), lowered program text) on a mesh of these axis sizes (one device when None)."""
    sharder = None if axes is None else Sharder(make_mesh(MeshConfig(axes=axes)), load_balance=load_balance,
                                                 context_parallel=context_parallel)
    logits, grads, _, text = logits_and_grads(sharder, backend, CFG if rope is None else CFG.with_rope(rope))
    return (logits, grads), text


DYNAMIC_YARN = {"rope_type": "dynamic_yarn", "factor": 4.0, "original_max_position_embeddings": 16}
DYNAMIC = {"rope_type": "dynamic", "factor": 4.0}


@pytest.mark.parametrize("axes, backend, rope, load_balance", [
    ({"sequence": 8}, "blockwise", DYNAMIC_YARN, "dual_chunk"),
    ({"sequence": 4, "fsdp": 2}, "splash", DYNAMIC, "dual_chunk"),
    ({"sequence": 2, "fsdp": 2, "tensor": 2}, "gpu_flash", None, "dual_chunk"),  # (the CFG's own YaRN)
    ({"sequence": 8}, "splash", DYNAMIC_YARN, "striped"),
    ({"sequence": 4, "fsdp": 2}, "blockwise", None, "striped"),
], ids=["seq8-blockwise-dynamic_yarn", "seq4-fsdp-splash-dynamic", "seq2-fsdp-tensor-gpu_flash-yarn",
        "seq8-splash-dynamic_yarn-striped", "seq4-fsdp-blockwise-yarn-striped"])
def test_balanced_sequence_shards_equal_one_device(axes, backend, rope, load_balance):
    """All-gather attention. Packed documents ending in padding (`_batch`), 64 tokens (L0 = 16: dynamic ropes
    scale by the global length): logits and every gradient within 1e-5 of one device."""
    (ref_logits, ref_grads), _ = _run(None, "reference", rope)
    (logits, grads), _ = _run(axes, backend, rope, load_balance)
    assert _rel(logits, ref_logits) <= 1e-5
    ref_flat = dict(nnx.to_flat_state(ref_grads))
    for path, g in nnx.to_flat_state(grads):
        assert _rel(g.get_value(), ref_flat[path].get_value()) <= 1e-5, path


@pytest.mark.parametrize("axes, backend, rope, load_balance", [
    ({"sequence": 4, "fsdp": 2}, "blockwise", DYNAMIC_YARN, "dual_chunk"),  # 2 KV heads < 4: repeated
    ({"sequence": 2, "fsdp": 2, "tensor": 2}, "splash", DYNAMIC, "none"),
    ({"sequence": 2, "fsdp": 4}, "gpu_flash", None, "dual_chunk"),  # 2 KV heads over 2: split, not repeated
    ({"sequence": 4, "fsdp": 2}, "splash", DYNAMIC_YARN, "striped"),
], ids=["seq4-blockwise-dynamic_yarn-balanced", "seq2-tensor-splash-dynamic-contiguous", "seq2-gpu_flash-yarn",
        "seq4-splash-dynamic_yarn-striped"])
def test_ulysses_equals_one_device(axes, backend, rope, load_balance):
    """context_parallel: ulysses (all-to-all to whole sequences and a share of the heads): logits and every
    gradient within 1e-5 of one device, packed and padded documents, dynamic ropes past L0."""
    (ref_logits, ref_grads), _ = _run(None, "reference", rope)
    (logits, grads), text = _run(axes, backend, rope, load_balance, "ulysses")
    assert "all-to-all" in text or "all_to_all" in text
    assert _rel(logits, ref_logits) <= 1e-5
    ref_flat = dict(nnx.to_flat_state(ref_grads))
    for path, g in nnx.to_flat_state(grads):
        assert _rel(g.get_value(), ref_flat[path].get_value()) <= 1e-5, path


@pytest.mark.parametrize("axes, rope, load_balance", [
    ({"sequence": 8}, DYNAMIC_YARN, "dual_chunk"),
    ({"sequence": 4, "fsdp": 2}, DYNAMIC, "none"),
    ({"sequence": 2, "fsdp": 2, "tensor": 2}, None, "dual_chunk"),
    ({"sequence": 8}, DYNAMIC, "striped"),
    ({"sequence": 4, "fsdp": 2}, {"rope_type": "default"}, "striped"),
], ids=["seq8-dynamic_yarn-balanced", "seq4-fsdp-dynamic-contiguous", "seq2-fsdp-tensor-yarn-balanced",
        "seq8-dynamic-striped", "seq4-fsdp-default-striped"])
def test_ring_equals_one_device(axes, rope, load_balance):
    """context_parallel: ring (K/V around the sequence axis, custom-VJP backward passing dK/dV along): logits
    and every gradient within 1e-5 of one device; packed and padded documents, dynamic ropes past L0."""
    (ref_logits, ref_grads), _ = _run(None, "reference", rope)
    (logits, grads), text = _run(axes, "blockwise", rope, load_balance, "ring")
    assert "collective-permute" in text or "collective_permute" in text
    assert _rel(logits, ref_logits) <= 1e-5
    ref_flat = dict(nnx.to_flat_state(ref_grads))
    for path, g in nnx.to_flat_state(grads):
        assert _rel(g.get_value(), ref_flat[path].get_value()) <= 1e-5, path


def test_ulysses_refuses_heads_it_cannot_split():
    from yarn_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="4 attention heads per device cannot be split over the 8-way"):
        _run({"sequence": 8}, "blockwise", None, context_parallel="ulysses")


def test_the_balanced_layout_is_the_default_and_contiguous_gives_the_same_numbers():
    """dual_chunk (the default) and none compile to different programs with equal results."""
    assert MeshConfig().load_balance == "dual_chunk"
    (balanced, _), text_balanced = _run({"sequence": 4, "fsdp": 2}, "blockwise", None)
    (contiguous, _), text_contiguous = _run({"sequence": 4, "fsdp": 2}, "blockwise", None, load_balance="none")
    assert text_balanced != text_contiguous
    assert _rel(balanced, contiguous) <= 1e-5
    sharder = Sharder(make_mesh(MeshConfig(axes={"sequence": 4, "fsdp": 2})))
    assert sharder.sequence_order(64) is not None
    assert dataclasses.replace(sharder, load_balance="none").sequence_order(64) is None
