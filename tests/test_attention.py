"""Every attention backend against the dense reference: outputs and gradients (dq, dk, dv), GQA, segment
ids, causal and not, sliding windows smaller and larger than the blocks, chunks, query offsets and
non-contiguous query positions (a load-balanced shard's), lengths
that do not divide the blocks, float32 and bfloat16. The TPU splash and GPU flash kernels run in Pallas
interpret mode on this CPU. The masks themselves are checked against transformers' own mask functions."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yarn_jax.attention import CAUSAL, FULL, Mask, attention, blockwise_attention, reference_attention, resolve_backend
from yarn_jax.attention import blockwise
from yarn_jax.attention.blockwise import _Dims
from yarn_jax.attention.kernels import SplashBlocks, gpu_flash_attention, splash_attention
from yarn_jax.errors import ConfigError
from yarn_jax.shapes import cdiv

# small blocks so that several tiles (and the causal skipping) are exercised at test sizes
KERNELS = {
    # the backward in 4 x 8 tiles (as the default's 128 x 512 under 512 x 512 forward tiles)
    "blockwise": functools.partial(blockwise_attention, block_q=16, block_k=8, backward_blocks=(4, 8)),
    "splash": functools.partial(splash_attention, blocks=SplashBlocks(*[128] * 8)),
    "gpu_flash": functools.partial(gpu_flash_attention, block_q=16, block_k=16),
}
# (batch, T, S, heads, kv heads, head dim, mask, segments); blockwise tiles are 16 x 8 here, splash's 128
CASES = {
    "gqa_causal_odd": (2, 45, 45, 6, 2, 16, CAUSAL, False),
    "mha_segments": (1, 50, 50, 4, 4, 32, CAUSAL, True),
    "mqa_noncausal_segments": (2, 33, 33, 4, 1, 16, FULL, True),
    "cache_t_lt_s": (1, 20, 47, 4, 2, 16, CAUSAL, False),
    "cache_keys_need_no_padding": (1, 20, 128, 4, 2, 16, CAUSAL, True),
    "long_multi_block": (1, 300, 300, 3, 1, 64, CAUSAL, True),
    "window_below_blocks_segments": (2, 70, 70, 4, 2, 16, Mask(window=5), True),
    "window_above_blocks": (1, 90, 90, 6, 2, 16, Mask(window=37), False),
    "window_cache_t_lt_s": (1, 20, 128, 4, 2, 16, Mask(window=24), True),
    "window_above_splash_block": (1, 300, 300, 3, 1, 64, Mask(window=150), True),
    "chunks_segments": (1, 64, 64, 4, 2, 16, Mask(chunk=12), True),
    "chunks_cache_t_lt_s": (1, 20, 47, 4, 2, 16, Mask(chunk=16), False),
}
# (output, gradient) absolute tolerances for values of order one
TOLS = {"float32": (2e-5, 1e-4), "bfloat16": (3e-2, 8e-2)}


def make_inputs(case, dtype, seed=0):
    b, t, s, h, kh, d, mask, seg = case
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(ks[0], (b, t, h, d)).astype(dtype)
    k = jax.random.normal(ks[1], (b, s, kh, d)).astype(dtype)
    v = jax.random.normal(ks[2], (b, s, kh, d)).astype(dtype)
    q_seg = kv_seg = None
    if seg:
        kv_seg = jnp.asarray(np.sort(np.random.default_rng(seed).integers(0, 3, (b, s)), axis=1), jnp.int32)
        q_seg = kv_seg[:, s - t:]
    return q, k, v, dict(mask=mask, q_segment_ids=q_seg, kv_segment_ids=kv_seg)


def value_and_grads(fn, q, k, v, kw):
    cot = jax.random.normal(jax.random.PRNGKey(7), q.shape)  # a fixed random cotangent

    def loss(q, k, v):
        return jnp.sum(fn(q, k, v, **kw).astype(jnp.float32) * cot)

    return fn(q, k, v, **kw), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", list(KERNELS))
def test_backend_matches_reference_float32(backend, case):
    if backend == "gpu_flash" and CASES[case][1] != CASES[case][2]:
        pytest.skip("gpu_flash serves self-attention; T < S falls back to blockwise (covered there)")
    q, k, v, kw = make_inputs(CASES[case], jnp.float32)
    ref_out, ref_grads = value_and_grads(reference_attention, q, k, v, kw)
    out, grads = value_and_grads(KERNELS[backend], q, k, v, kw)
    out_tol, grad_tol = TOLS["float32"]
    np.testing.assert_allclose(out, ref_out, atol=out_tol)
    for name, g, rg in zip(("dq", "dk", "dv"), grads, ref_grads):
        np.testing.assert_allclose(g, rg, atol=grad_tol, err_msg=f"{backend} {case} {name}")


@pytest.mark.parametrize("case", ["gqa_causal_odd", "mha_segments"])
@pytest.mark.parametrize("backend", list(KERNELS))
def test_backend_matches_reference_bfloat16(backend, case):
    """bf16 inputs: compared with the reference run in float32 on the same (bf16-rounded) inputs."""
    q, k, v, kw = make_inputs(CASES[case], jnp.bfloat16)
    up = lambda x: x.astype(jnp.float32)  # noqa: E731
    ref_out, ref_grads = value_and_grads(reference_attention, up(q), up(k), up(v), kw)
    out, grads = value_and_grads(KERNELS[backend], q, k, v, kw)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    out_tol, grad_tol = TOLS["bfloat16"]
    np.testing.assert_allclose(up(out), ref_out, atol=out_tol)
    for name, g, rg in zip(("dq", "dk", "dv"), grads, ref_grads):
        np.testing.assert_allclose(up(g), rg, atol=grad_tol, err_msg=f"{backend} {case} {name}")


@pytest.mark.parametrize("backend", list(KERNELS))
@pytest.mark.parametrize("mask", [CAUSAL, Mask(window=9), Mask(chunk=16)], ids=["causal", "window", "chunks"])
def test_query_offset_places_the_queries(backend, mask):
    """A sequence-sharded query block: 20 queries at key positions 10..29 of 47 keys (q_offset given)."""
    q, k, v, kw = make_inputs((1, 20, 47, 4, 2, 16, mask, True), jnp.float32)
    kw["q_segment_ids"] = kw["kv_segment_ids"][:, 10:30]
    fn = functools.partial(KERNELS[backend], q_offset=10)
    ref_out, ref_grads = value_and_grads(functools.partial(reference_attention, q_offset=10), q, k, v, kw)
    out, grads = value_and_grads(fn, q, k, v, kw)
    np.testing.assert_allclose(out, ref_out, atol=TOLS["float32"][0])
    for name, g, rg in zip(("dq", "dk", "dv"), grads, ref_grads):
        np.testing.assert_allclose(g, rg, atol=TOLS["float32"][1], err_msg=f"{backend} {name}")


# the queries one device of a 2-way (stripe) or 4-way (two chunks) load-balanced sequence axis holds of 48
SHARD_POSITIONS = {"stripe": np.arange(1, 48, 2), "two_chunks": np.r_[6:12, 36:42]}


@pytest.mark.parametrize("backend", list(KERNELS))
@pytest.mark.parametrize("layout", list(SHARD_POSITIONS))
@pytest.mark.parametrize("mask", [CAUSAL, Mask(window=9), Mask(chunk=16)], ids=["causal", "window", "chunks"])
def test_query_positions_place_the_queries(backend, layout, mask):
    """Queries at non-contiguous positions (q_positions) equal the same rows of the whole sequence's
    self-attention (the reference over every query, rows picked after): outputs and gradients, segment ids."""
    positions = SHARD_POSITIONS[layout]
    q_all, k, v, kw = make_inputs((1, 48, 48, 4, 2, 16, mask, True), jnp.float32)
    seg = kw["kv_segment_ids"]

    def whole(q, k, v, **_):  # these rows of the whole sequence's attention, the other queries held fixed
        out = reference_attention(q_all.at[:, positions].set(q), k, v, mask=mask, q_segment_ids=seg,
                                  kv_segment_ids=seg)
        return out[:, positions]

    kw = dict(mask=mask, q_segment_ids=seg[:, positions], kv_segment_ids=seg)
    q = q_all[:, positions]
    ref_out, ref_grads = value_and_grads(whole, q, k, v, kw)
    out, grads = value_and_grads(functools.partial(KERNELS[backend], q_positions=positions), q, k, v, kw)
    np.testing.assert_allclose(out, ref_out, atol=TOLS["float32"][0])
    for name, g, rg in zip(("dq", "dk", "dv"), grads, ref_grads):
        np.testing.assert_allclose(g, rg, atol=TOLS["float32"][1], err_msg=f"{backend} {layout} {name}")


@pytest.mark.parametrize("mask", [Mask(window=7), Mask(chunk=5)], ids=["window", "chunks"])
def test_masks_equal_transformers_mask_functions(mask):
    """The dense mask of each description equals transformers' masking_utils: causal AND the sliding-window
    (or chunked) overlay, evaluated at every (query, key) pair — including queries placed by an offset."""
    import torch
    from transformers import masking_utils as mu

    overlay = (mu.sliding_window_overlay(mask.window) if mask.window else
               mu.chunked_overlay(mask.chunk, torch.zeros(1, dtype=torch.long)))
    hf = mu.and_masks(mu.causal_mask_function, overlay)
    for t, s, offset in [(23, 23, 0), (6, 23, 17), (8, 30, 9)]:
        want = np.array([[bool(hf(0, 0, torch.tensor(i + offset), torch.tensor(j))) for j in range(s)]
                         for i in range(t)])
        got = np.asarray(mask.allowed(jnp.arange(t) + offset, jnp.arange(s)))
        np.testing.assert_array_equal(got, want, err_msg=f"{mask.describe()} t={t} s={s} offset={offset}")


def test_blockwise_skips_tiles_outside_the_mask():
    dims = _Dims(2048, 2048, 512, 512, CAUSAL)
    assert [tuple(map(int, dims.k_block_range(i))) for i in range(4)] == [(0, 1), (0, 2), (0, 3), (0, 4)]  # 10 of 16
    assert [tuple(map(int, dims.q_block_range(j))) for j in range(4)] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    cache = _Dims(100, 1124, 64, 512, CAUSAL)  # queries at positions 1024..1123
    assert tuple(map(int, cache.k_block_range(0))) == (0, 3) and int(cache.q_block_range(2)[0]) == 0
    full = _Dims(2048, 2048, 512, 512, FULL)
    assert full.k_block_range(0) == (0, 4)
    # a 600-key window: query block 2 (rows 1024..1535) needs keys 425..1535 -> key blocks 0..2; block 3 1..3
    window = _Dims(2048, 2048, 512, 512, Mask(window=600))
    assert [tuple(map(int, window.k_block_range(i))) for i in range(4)] == [(0, 1), (0, 2), (0, 3), (1, 4)]
    # key block 0 (keys 0..511) is seen up to query 1110 -> query blocks 0..2; 9 of 16 tiles in all
    assert [tuple(map(int, window.q_block_range(j))) for j in range(4)] == [(0, 3), (1, 4), (2, 4), (3, 4)]
    # tile (2, 1): query 1535 sees keys from 936 — masked under a 600 window, whole under a 1200 one
    assert bool(window.needs_mask(2, 1)) and bool(window.needs_mask(2, 2))
    wide = _Dims(2048, 2048, 512, 512, Mask(window=1200))
    assert not bool(wide.needs_mask(2, 1)) and bool(wide.needs_mask(2, 0))
    chunks = _Dims(2048, 2048, 512, 512, Mask(chunk=1024))  # two chunks: 6 of 16 tiles
    assert [tuple(map(int, chunks.k_block_range(i))) for i in range(4)] == [(0, 1), (0, 2), (2, 3), (2, 4)]
    assert [tuple(map(int, chunks.q_block_range(j))) for j in range(4)] == [(0, 2), (1, 2), (2, 4), (3, 4)]


def test_blockwise_skips_tiles_by_positions():
    """Striped queries (every 4th position from 1) against 2048 keys in 512 tiles: query tile i covers
    positions 2048 i + 1 .. 2048 i + 2045, so it needs key tiles up to 4 i + 3; a key tile is seen from the
    query tile whose last row reaches it."""
    dims = _Dims(512, 2048, 128, 512, CAUSAL)
    stripe = dims.at(jnp.arange(1, 2048, 4, dtype=jnp.int32))
    assert [tuple(map(int, stripe.k_block_range(i))) for i in range(4)] == [(0, 1), (0, 2), (0, 3), (0, 4)]
    assert [int(stripe.q_block_range(j)[0]) for j in range(4)] == [0, 1, 2, 3]
    assert bool(stripe.needs_mask(1, 1)) and not bool(stripe.needs_mask(1, 0))
    # keys placed too: a ring's visiting stripe (positions 0, 4, ...) under a 600-position window
    window = _Dims(512, 512, 128, 128, Mask(window=600))
    ring = window.at(jnp.arange(1, 2048, 4, dtype=jnp.int32), jnp.arange(0, 2048, 4, dtype=jnp.int32))
    # query tile 2 (positions 1025..1533) needs keys from position 426 (tile 0: 0..508) to 1532 (tile 2)
    assert tuple(map(int, ring.k_block_range(2))) == (0, 3) and tuple(map(int, ring.k_block_range(3))) == (1, 4)


def test_blockwise_memory_is_linear_in_length():
    """Forward + backward at T = 4096 keeps no [H, T, S] score tensor: XLA's own temp-memory analysis."""
    t, h, kh, d = 4096, 9, 3, 64
    q = jax.ShapeDtypeStruct((1, t, h, d), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, t, kh, d), jnp.float32)

    def temp_bytes(fn):
        grad = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2))
        return jax.jit(grad).lower(q, kv, kv).compile().memory_analysis().temp_size_in_bytes

    one_score_tensor = h * t * t * 4
    blockwise = temp_bytes(blockwise_attention)
    dense = temp_bytes(reference_attention)
    assert dense >= one_score_tensor  # the reference really materialises scores
    assert blockwise < one_score_tensor / 8, (blockwise, one_score_tensor)


def test_auto_backend_by_platform_and_length():
    assert resolve_backend("auto", platform="cpu") == "blockwise"
    assert resolve_backend("auto", platform="tpu") == "splash"
    assert resolve_backend("auto", platform="gpu") == "gpu_flash"
    with pytest.raises(ConfigError, match="'flash3' is not available"):
        resolve_backend("flash3")
    q, k, v, kw = make_inputs(CASES["gqa_causal_odd"], jnp.float32)
    with pytest.raises(ConfigError, match="do not fit"):
        attention(q, k[:, :, :1].repeat(4, axis=2)[:, :, :4], v, **kw)


@pytest.mark.parametrize("backward_blocks", [None, (8, 4), (5, 8)], ids=["forward_tiles", "narrower_keys", "no_divisor"])
@pytest.mark.parametrize("case", ["gqa_causal_odd", "window_below_blocks_segments", "cache_t_lt_s"])
def test_blockwise_backward_tiles_match_reference(case, backward_blocks):
    """The backward in its own tiles (or the forward's: None, or a tile that does not divide them)."""
    q, k, v, kw = make_inputs(CASES[case], jnp.float32)
    fn = functools.partial(blockwise_attention, block_q=16, block_k=8, backward_blocks=backward_blocks)
    _, grads = value_and_grads(fn, q, k, v, kw)
    _, ref_grads = value_and_grads(reference_attention, q, k, v, kw)
    for name, g, rg in zip(("dq", "dk", "dv"), grads, ref_grads):
        np.testing.assert_allclose(g, rg, atol=TOLS["float32"][1], err_msg=f"{case} {name}")
    dims = _Dims(q.shape[1], k.shape[1], 16, 8, backward_blocks=backward_blocks).for_backward()
    assert (dims.bq, dims.bk) == ((8, 4) if backward_blocks == (8, 4) else (16, 8))
    assert (dims.nq * dims.bq, dims.nk * dims.bk) == (cdiv(q.shape[1], 16) * 16, cdiv(k.shape[1], 8) * 8)


def test_blockwise_head_chains_match_reference_with_uneven_groups():
    """12 KV heads run as 8 chains of 1 or 2 heads (segments and a window: every masked path per chain)."""
    case = (1, 40, 40, 24, 12, 16, Mask(window=19), True)
    q, k, v, kw = make_inputs(case, jnp.float32)
    chained = functools.partial(KERNELS["blockwise"], chains=8)
    out, grads = value_and_grads(chained, q, k, v, kw)
    ref_out, ref_grads = value_and_grads(reference_attention, q, k, v, kw)
    np.testing.assert_allclose(out, ref_out, atol=TOLS["float32"][0])
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(got, want, atol=TOLS["float32"][1])


@pytest.mark.parametrize("kv_heads, chains, groups", [(1, 8, 1), (3, 8, 3), (8, 8, 8), (12, 8, 8), (32, 8, 8),
                                                      (12, 1, 1), (5, 2, 2)])
def test_head_groups_cover_every_head_once(kv_heads, chains, groups):
    got = blockwise._head_groups(kv_heads, chains)
    assert len(got) == groups
    assert [h for g in got for h in range(g.start, g.stop)] == list(range(kv_heads))
    sizes = [g.stop - g.start for g in got]
    assert max(sizes) - min(sizes) <= 1


def test_head_chains_by_tile_size():
    """SmolLM2's 512 x 512 tile (1 x 3 KV heads x 3 queries each, 9.4 MB in f32) runs one chain per KV
    head; a test model's 16 x 8 tile, or anything under 1 MiB, runs as one batched chain."""
    assert blockwise.head_chains(1, 3, 3, 512, 512) == 3
    assert blockwise.head_chains(1, 32, 1, 512, 512) == blockwise.MAX_CHAINS
    assert blockwise.head_chains(2, 2, 3, 16, 8) == 1
    assert blockwise.head_chains(1, 3, 3, 128, 128) == 1  # 0.56 MiB
