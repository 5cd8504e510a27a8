"""Memory-linear blockwise attention (online softmax, FlashAttention-style) in plain JAX, with a
memory-linear backward (custom VJP) — the CPU path and a portable fallback for long contexts.

Layout inside: queries grouped per KV head, q [B, K, G, T, D] against k/v [B, K, S, D], so GQA never
repeats K/V. Only the output and the per-row log-sum-exp [B, K, G, T] are saved for the backward pass;
scores exist one [block_q, block_k] tile at a time. Under causal masking the key loop of each query
block stops at the diagonal (and the dK/dV loop starts there); a sliding window or chunks also start it
at the band's lower edge (and stop the dK/dV loop there) — fully-masked tiles are skipped, and only tiles
that cross an edge (or hold padding, or when segment ids are given) build a mask. A large tile's work runs
as one independent chain of ops per group of KV heads.
Lengths need not divide the block sizes: inputs are padded inside and padded keys are masked.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from yarn_jax.attention.masks import CAUSAL, Mask, query_positions
from yarn_jax.shapes import cdiv, pad_axis

MASK = -1e30  # finite, so a fully-masked tile gives exp(0) = 1 rather than NaN; later real scores reset it


class _Dims:
    """Static geometry of one call — lengths, tiles and the mask (a `Mask`: causal, sliding window, chunks) —
    and the key position of every query row and key column (`q_pos` [Tp], `k_pos` [Sp], int32, may be
    traced; nondecreasing, padding repeats the last real position). By default the queries are the last t
    of the s key positions; `at` places them elsewhere: a sequence-sharded device's queries (an offset, two
    chunks, a stripe) or a ring's visiting keys. Tile ranges and masks are by positions, so every layout
    skips the same tiles its mask leaves empty."""

    def __init__(self, t: int, s: int, block_q: int, block_k: int, mask: Mask = CAUSAL, segments: bool = False,
                 chains: int = 1, backward_blocks: tuple[int, int] | None = None):
        self.t, self.s, self.mask, self.segments, self.chains = t, s, mask, segments, chains
        self.backward_blocks = backward_blocks
        self.bq, self.bk = min(block_q, t), min(block_k, s)
        self.nq, self.nk = cdiv(t, self.bq), cdiv(s, self.bk)
        self.tp, self.sp = self.nq * self.bq, self.nk * self.bk
        self._q_pos = self._k_pos = None  # set by `at`; made on use otherwise (no array outlives its trace)

    @property
    def q_pos(self):
        if self._q_pos is None:
            return self.pad_positions(jnp.arange(self.t, dtype=jnp.int32) + (self.s - self.t), self.tp)
        return self._q_pos

    @property
    def k_pos(self):
        return self.pad_positions(jnp.arange(self.s, dtype=jnp.int32), self.sp) if self._k_pos is None else self._k_pos

    @staticmethod
    def pad_positions(positions, size: int):
        """[n] -> [size] int32, padding with the last position (keeps them nondecreasing; padded keys are
        masked by index, padded query rows dropped)."""
        positions = jnp.asarray(positions, jnp.int32)
        return jnp.pad(positions, (0, size - positions.shape[0]), mode="edge")

    def for_backward(self) -> "_Dims":
        """The same padded geometry in the backward's tiles, `backward_blocks` where they divide the
        forward's (else the forward's own)."""
        if self.backward_blocks is None:
            return self
        bq, bk = self.backward_blocks
        if self.bq % bq or self.bk % bk:
            return self
        return self._with(bq=bq, bk=bk, nq=self.tp // bq, nk=self.sp // bk)

    def at(self, q_pos, k_pos=None) -> "_Dims":
        """The same geometry with queries (and keys) at the given padded positions ([Tp] / [Sp])."""
        return self._with(_q_pos=q_pos, _k_pos=k_pos)

    def _with(self, **fields) -> "_Dims":
        """A copy with these attributes replaced."""
        out = object.__new__(_Dims)
        out.__dict__.update(self.__dict__, **fields)
        return out

    # the first and last position of each query / key tile: [nq] / [nk]
    def _q_first(self, i):
        return self.q_pos[i * self.bq]

    def _q_last(self, i):
        return self.q_pos[(i + 1) * self.bq - 1]

    def _k_first(self, j):
        return self.k_pos[j * self.bk]

    def _k_last(self, j):
        return self.k_pos[(j + 1) * self.bk - 1]

    def k_block_range(self, i):
        """(first, stop): the key tiles query tile i needs — from the first reaching its first row's lowest
        key (banded masks) to the last starting at or before its last row (causal); the rest are skipped."""
        if not self.mask.causal:
            return 0, self.nk
        starts = self.k_pos[::self.bk]
        stop = jnp.searchsorted(starts, self._q_last(i), side="right", method="compare_all")
        if not self.mask.banded:
            return 0, stop
        ends = self.k_pos[self.bk - 1::self.bk]
        first = jnp.searchsorted(ends, self.mask.lowest_key(self._q_first(i)), side="left", method="compare_all")
        return jnp.minimum(first, stop), stop

    def q_block_range(self, j):
        """(first, stop): the query tiles that see key tile j (the transpose of `k_block_range`)."""
        if not self.mask.causal:
            return 0, self.nq
        ends = self.q_pos[self.bq - 1::self.bq]
        first = jnp.searchsorted(ends, self._k_first(j), side="left", method="compare_all")
        if not self.mask.banded:
            return first, self.nq
        starts = self.q_pos[::self.bq]
        stop = jnp.searchsorted(starts, self.mask.highest_query(self._k_last(j)), side="right", method="compare_all")
        return first, jnp.maximum(first, stop)

    def needs_mask(self, i, j):
        """Whether tile (i, j) has any masked score: a key past its first row (causal), its last row's lowest
        key past the tile's first key (banded), padded keys, or segment ids in play. Tiles wholly inside
        skip the mask (a select pass per tile)."""
        if self.segments:
            return jnp.bool_(True)
        crosses = jnp.bool_(False)
        if self.mask.causal:
            crosses = self._k_last(j) > self._q_first(i)
            if self.mask.banded:
                crosses = crosses | (self.mask.lowest_key(self._q_last(i)) > self._k_first(j))
        return crosses | ((j + 1) * self.bk > self.s)

    def allowed(self, i, j, q_seg, k_seg):
        """[B or 1, 1, 1, bq, bk] mask of tile (i, j)."""
        q_pos = lax.dynamic_slice_in_dim(self.q_pos, i * self.bq, self.bq)
        k_pos = lax.dynamic_slice_in_dim(self.k_pos, j * self.bk, self.bk)
        real = j * self.bk + jnp.arange(self.bk) < self.s
        ok = (real[None, :] & self.mask.allowed(q_pos, k_pos))[None]
        if q_seg is not None:
            qs = lax.dynamic_slice_in_dim(q_seg, i * self.bq, self.bq, axis=1)
            ks = lax.dynamic_slice_in_dim(k_seg, j * self.bk, self.bk, axis=1)
            ok = ok & (qs[:, :, None] == ks[:, None, :])
        return ok[:, None, None]


def _per_tile(dims: _Dims, i, j, fn, *operands):
    """fn(masked: bool, *operands) on tile (i, j), masking only where the tile needs it (a `cond`, so the
    common unmasked tile runs no select and XLA keeps each branch's fusions small)."""
    return lax.cond(dims.needs_mask(i, j), functools.partial(fn, True), functools.partial(fn, False), *operands)


def _mm(spec, x, y):
    """einsum with float32 accumulation."""
    return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32)


def _rows(x):
    """[B, K, G, bq, X] -> [B, K, G*bq, X]: a KV head's G query heads stacked as rows of one matmul."""
    b, kh, g, bq, last = x.shape
    return x.reshape(b, kh, g * bq, last)


def _matmul_rows(x, y):
    """x [B, K, G, bq, C] @ y [B, K, C, X] -> [B, K, G, bq, X] float32, one matmul per (B, K)."""
    return _mm("bkqc,bkcx->bkqx", _rows(x), y).reshape(*x.shape[:-1], y.shape[-1])


def _scores(qi, kj, ok):
    """qi [B, K, G, bq, D] (already scaled), kj [B, K, bk, D] -> float32 scores [B, K, G, bq, bk], masked
    to MASK where `ok` is False (None: nothing masked)."""
    s = _matmul_rows(qi, jnp.swapaxes(kj, -1, -2))
    return s if ok is None else jnp.where(ok, s, MASK)


MAX_CHAINS = 8
# The backward's (query, key) tile: its five matmuls run fastest on narrower query tiles than the forward's
# (SmolLM2 shapes at 4k, fwd + bwd: 568 ms with 128 x 512, 598 with 256 x 512, 651 with 512 x 512)
BACKWARD_BLOCKS = (128, 512)
CHAIN_MIN_TILE_BYTES = 1 << 20


def head_chains(batch: int, kv_heads: int, group: int, block_q: int, block_k: int) -> int:
    """How many independent chains the tile work runs as: one per KV head (at most MAX_CHAINS) when the
    batched f32 score tile [B, K, G, bq, bk] is at least CHAIN_MIN_TILE_BYTES, else one. XLA:CPU's thunk
    executor runs the chains side by side, each on a tile a few MB in size (SmolLM2 shapes, 2 cores: the
    forward at 8k ~10 % faster than one batched tile over all heads, the backward at 4k ~3 %); small tiles
    gain nothing and every chain is more ops to compile."""
    if batch * kv_heads * group * block_q * block_k * 4 < CHAIN_MIN_TILE_BYTES:
        return 1
    return min(kv_heads, MAX_CHAINS)


def _head_groups(kv_heads: int, chains: int) -> list[slice]:
    """The KV heads split into `chains` contiguous groups (sizes differ by at most one)."""
    n = max(1, min(kv_heads, chains))
    edges = [round(i * kv_heads / n) for i in range(n + 1)]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def _forward(q, k, v, q_seg, k_seg, dims: _Dims):
    """q [B, K, G, Tp, D] (pre-scaled), k/v [B, K, Sp, D] -> out [B, K, G, Tp, D] (q dtype),
    lse [B, K, G, Tp] f32."""
    b, kh, g, _, d = q.shape
    groups = _head_groups(kh, dims.chains)

    def q_block(i):
        qi = lax.dynamic_slice_in_dim(q, i * dims.bq, dims.bq, axis=3)
        q_chains = [qi[:, heads] for heads in groups]  # sliced once per query block, not per tile

        def step(masked, j, carry):
            ok = dims.allowed(i, j, q_seg, k_seg) if masked else None
            new = []
            for heads, qh, (m, l, acc) in zip(groups, q_chains, carry):  # one independent chain per head group
                kj = lax.dynamic_slice_in_dim(k[:, heads], j * dims.bk, dims.bk, axis=2)
                vj = lax.dynamic_slice_in_dim(v[:, heads], j * dims.bk, dims.bk, axis=2)
                s = _scores(qh, kj, ok)  # [B, k, G, bq, bk]
                m_new = jnp.maximum(m, s.max(-1))
                p = jnp.exp(s - m_new[..., None])
                correction = jnp.exp(m - m_new)
                pv = _matmul_rows(p.astype(v.dtype), vj)
                new.append((m_new, l * correction + p.sum(-1), acc * correction[..., None] + pv))
            return tuple(new)

        init = tuple((jnp.full((b, h.stop - h.start, g, dims.bq), MASK, jnp.float32),
                      jnp.zeros((b, h.stop - h.start, g, dims.bq), jnp.float32),
                      jnp.zeros((b, h.stop - h.start, g, dims.bq, d), jnp.float32)) for h in groups)
        chains = lax.fori_loop(*dims.k_block_range(i), lambda j, c: _per_tile(dims, i, j, step, j, c), init)
        m, l, acc = (jnp.concatenate(x, axis=1) for x in zip(*chains))
        l = jnp.maximum(l, 1e-30)
        return (acc / l[..., None]).astype(q.dtype), m + jnp.log(l)

    out, lse = lax.map(q_block, jnp.arange(dims.nq))  # [nq, B, K, G, bq, (D)]
    out = jnp.moveaxis(out, 0, 3).reshape(b, kh, g, dims.tp, d)
    lse = jnp.moveaxis(lse, 0, 3).reshape(b, kh, g, dims.tp)
    return out, lse


def _backward(q, k, v, q_seg, k_seg, out, lse, dout, dims: _Dims):
    """FlashAttention-2 backward from the saved log-sum-exp; one tile of scores at a time (the backward's
    own tiles, `_Dims.for_backward`), one chain of ops per head group (as the forward)."""
    b, kh, g, _, d = q.shape
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, K, G, Tp]
    groups = _head_groups(kh, dims.chains)

    def tile(masked, i, j, heads):
        """Tile (i, j) of one head group with the keys as rows: scores [B, k, bk, R] over the R = G*bq query
        rows of each KV head, so dV = P^T dO and dK = dS^T Q are plain matmuls and only dQ = dS K
        contracts over the tile's first axis (5 % faster than query rows first)."""
        rows = functools.partial(lax.dynamic_slice_in_dim, start_index=i * dims.bq, slice_size=dims.bq, axis=3)
        keys = functools.partial(lax.dynamic_slice_in_dim, start_index=j * dims.bk, slice_size=dims.bk, axis=2)
        qr, dor = _rows(rows(q[:, heads])), _rows(rows(dout[:, heads]))  # [B, k, R, D]
        lse_r, delta_r = (rows(x[:, heads]).reshape(qr.shape[:-1]) for x in (lse, delta))  # [B, k, R]
        kj, vj = keys(k[:, heads]), keys(v[:, heads])  # [B, k, bk, D]
        pt = jnp.exp(_mm("bkcd,bkrd->bkcr", kj, qr) - lse_r[:, :, None, :])  # P^T [B, k, bk, R]
        if masked:  # exp of a masked score may overflow to inf: selected away before any product
            ok = dims.allowed(i, j, q_seg, k_seg)  # [B|1, 1, 1, bq, bk]
            ok = jnp.broadcast_to(ok, (*ok.shape[:2], g, *ok.shape[3:])).reshape(ok.shape[0], 1, -1, dims.bk)
            pt = jnp.where(jnp.swapaxes(ok, -1, -2), pt, 0.0)
        dst = pt * (_mm("bkcd,bkrd->bkcr", vj, dor) - delta_r[:, :, None, :])  # dS^T = P^T * (dP^T - delta)
        dv = _mm("bkcr,bkrd->bkcd", pt.astype(dout.dtype), dor)
        dk = _mm("bkcr,bkrd->bkcd", dst.astype(q.dtype), qr)
        dq = _mm("bkcr,bkcd->bkrd", dst.astype(k.dtype), kj).reshape(*qr.shape[:2], g, dims.bq, d)
        return dk, dv, dq

    def dkv_block(j, dq):
        """Key block j: its dK/dV over the query blocks that see it; each tile's dQ share is added into
        dq (per head group [B, k, G, Tp, D]) as it goes (one pass: every score tile is computed once, not
        once for dQ and once for dK/dV)."""
        def step(masked, i, j):
            return tuple(tile(masked, i, j, heads) for heads in groups)

        def body(i, carry):
            new = []
            for (dk, dv, dq_h), (dk_i, dv_i, dq_i) in zip(carry, _per_tile(dims, i, j, step, i, j)):
                dq_rows = lax.dynamic_slice_in_dim(dq_h, i * dims.bq, dims.bq, axis=3)
                new.append((dk + dk_i, dv + dv_i,
                            lax.dynamic_update_slice_in_dim(dq_h, dq_rows + dq_i, i * dims.bq, axis=3)))
            return tuple(new)

        init = tuple((jnp.zeros((b, h.stop - h.start, dims.bk, d), jnp.float32),) * 2 + (dq_h,)
                     for h, dq_h in zip(groups, dq))
        chains = lax.fori_loop(*dims.q_block_range(j), body, init)
        return tuple(c[2] for c in chains), tuple((c[0], c[1]) for c in chains)

    dq0 = tuple(jnp.zeros((b, h.stop - h.start, g, dims.tp, d), jnp.float32) for h in groups)
    dq, dkv = lax.scan(lambda dq, j: dkv_block(j, dq), dq0, jnp.arange(dims.nk))
    dq = jnp.concatenate(dq, axis=1)
    dk = jnp.concatenate([x[0] for x in dkv], axis=2)  # [nk, B, K, bk, D]
    dv = jnp.concatenate([x[1] for x in dkv], axis=2)
    dk = jnp.moveaxis(dk, 0, 2).reshape(k.shape)
    dv = jnp.moveaxis(dv, 0, 2).reshape(v.shape)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _attention_core(q, k, v, q_seg, k_seg, q_pos, k_pos, dims):
    return _forward(q, k, v, q_seg, k_seg, dims.at(q_pos, k_pos))[0]


def keep_for_backward(out, lse):
    """A kernel's output and log-sum-exp, named for the "attention" remat policy (model.REMAT_POLICIES): kept,
    a rematerialised backward needs no second forward of the kernel."""
    return checkpoint_name(out, "attention_out"), checkpoint_name(lse, "attention_lse")


def _core_fwd(q, k, v, q_seg, k_seg, q_pos, k_pos, dims):
    out, lse = keep_for_backward(*_forward(q, k, v, q_seg, k_seg, dims.at(q_pos, k_pos)))
    return out, (q, k, v, q_seg, k_seg, q_pos, k_pos, out, lse)


def _core_bwd(dims, residuals, dout):
    q, k, v, q_seg, k_seg, q_pos, k_pos, out, lse = residuals
    dq, dk, dv = _backward(q, k, v, q_seg, k_seg, out, lse, dout, dims.for_backward().at(q_pos, k_pos))
    return dq, dk, dv, None, None, None, None


_attention_core.defvjp(_core_fwd, _core_bwd)


def blockwise_attention(q, k, v, *, mask: Mask = CAUSAL, q_segment_ids=None, kv_segment_ids=None, scale=None,
                        q_offset=None, q_positions=None, kv_positions=None, block_q: int = 512, block_k: int = 512,
                        chains: int | None = None, backward_blocks: tuple[int, int] | None = BACKWARD_BLOCKS):
    """q [B, T, H, D], k/v [B, S, K, D] -> [B, T, H, D]; memory O(T + S) beyond one score tile.
    q_offset (int, may be traced): key position of query 0 (default S - T). q_positions [T] / kv_positions
    [S] (int, may be traced, nondecreasing): each query's / key's position instead — a load-balanced
    shard's queries (two chunks or a stripe), a ring's visiting keys. chains: how many independent chains
    of ops (groups of KV heads) each tile's work runs as; None: `head_chains` by tile size.
    backward_blocks: the backward's (query, key) tile where it divides the forward's (None: the forward's)."""
    b, t, h, d = q.shape
    s, kh = k.shape[1], k.shape[2]
    g = h // kh
    scale = float(d ** -0.5 if scale is None else scale)
    if chains is None:
        chains = head_chains(b, kh, g, min(block_q, t), min(block_k, s))
    dims = _Dims(t, s, block_q, block_k, mask, segments=q_segment_ids is not None, chains=chains,
                 backward_blocks=backward_blocks)
    # The softmax scale is folded into q once (T x D multiplies instead of T x S); autodiff carries it to dq.
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)
    qg = pad_axis(jnp.moveaxis(q.reshape(b, t, kh, g, d), 1, 3), 3, dims.tp)  # [B, K, G, Tp, D]
    kk = pad_axis(jnp.moveaxis(k, 1, 2), 2, dims.sp)  # [B, K, Sp, D]
    vv = pad_axis(jnp.moveaxis(v, 1, 2), 2, dims.sp)
    q_seg = k_seg = None
    if q_segment_ids is not None:
        q_seg = pad_axis(jnp.asarray(q_segment_ids, jnp.int32), 1, dims.tp)
        k_seg = pad_axis(jnp.asarray(kv_segment_ids, jnp.int32), 1, dims.sp)
    q_pos = dims.pad_positions(query_positions(t, s, q_offset, q_positions), dims.tp)
    k_pos = dims.k_pos if kv_positions is None else dims.pad_positions(kv_positions, dims.sp)
    out = _attention_core(qg, kk, vv, q_seg, k_seg, q_pos, k_pos, dims)[:, :, :, :t]  # [B, K, G, T, D]
    return jnp.moveaxis(out, 3, 1).reshape(b, t, h, d)
