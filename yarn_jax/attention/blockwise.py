"""Memory-linear blockwise attention (online softmax, FlashAttention-style) in plain JAX, with a
memory-linear backward (custom VJP) — the CPU path and a portable fallback for long contexts.

Layout inside: queries grouped per KV head, q [B, K, G, T, D] against k/v [B, K, S, D], so GQA never
repeats K/V. Only the output and the per-row log-sum-exp [B, K, G, T] are saved for the backward pass;
scores exist one [block_q, block_k] tile at a time. Under causal masking the key loop of each query
block stops at the diagonal (and the dK/dV loop starts there); a sliding window or chunks also start it
at the band's lower edge (and stop the dK/dV loop there) — fully-masked tiles are skipped, and only tiles
that cross an edge (or hold padding, or when segment ids are given) build a mask.
Lengths need not divide the block sizes: inputs are padded inside and padded keys are masked.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from yarn_jax.attention.masks import CAUSAL, Mask
from yarn_jax.shapes import cdiv, pad_axis

MASK = -1e30  # finite, so a fully-masked tile gives exp(0) = 1 rather than NaN; later real scores reset it


class _Dims:
    """Static geometry of one call: lengths, tiles and the mask (a `Mask`: causal, sliding window, chunks)."""

    def __init__(self, t: int, s: int, block_q: int, block_k: int, mask: Mask = CAUSAL, segments: bool = False):
        self.t, self.s, self.mask, self.segments = t, s, mask, segments
        self.bq, self.bk = min(block_q, t), min(block_k, s)
        self.nq, self.nk = cdiv(t, self.bq), cdiv(s, self.bk)
        self.tp, self.sp = self.nq * self.bq, self.nk * self.bk
        self.offset = s - t  # queries are the last t of the s positions, unless `at` moves them

    def at(self, offset) -> "_Dims":
        """The same geometry with query i at key position i + offset (offset may be traced: a
        sequence-sharded query block's start)."""
        out = object.__new__(_Dims)
        out.__dict__.update(self.__dict__, offset=offset)
        return out

    def k_block_range(self, i):
        """(first, stop): the key blocks query block i needs — from its first row's lowest key (banded
        masks) to its last row's diagonal (causal); the tiles outside are skipped."""
        if not self.mask.causal:
            return 0, self.nk
        first_row, last_row = i * self.bq + self.offset, (i + 1) * self.bq - 1 + self.offset
        stop = jnp.clip(last_row // self.bk + 1, 0, self.nk)
        if not self.mask.banded:
            return 0, stop
        return jnp.clip(self.mask.lowest_key(first_row) // self.bk, 0, stop), stop

    def q_block_range(self, j):
        """(first, stop): the query blocks that see key block j (the transpose of `k_block_range`)."""
        if not self.mask.causal:
            return 0, self.nq
        first = jnp.clip((j * self.bk - self.offset) // self.bq, 0, self.nq)
        if not self.mask.banded:
            return first, self.nq
        last_row = self.mask.highest_query((j + 1) * self.bk - 1) - self.offset
        return first, jnp.clip(last_row // self.bq + 1, first, self.nq)

    def needs_mask(self, i, j):
        """Whether tile (i, j) has any masked score: it crosses the causal diagonal or the band's lower
        edge, holds padded keys, or segment ids are in play. Tiles wholly inside skip the mask (a select
        pass per tile)."""
        if self.segments:
            return jnp.bool_(True)
        crosses = jnp.bool_(False)
        if self.mask.causal:
            first_row, last_row = i * self.bq + self.offset, (i + 1) * self.bq - 1 + self.offset
            crosses = (j + 1) * self.bk - 1 > first_row
            if self.mask.banded:
                crosses = crosses | (self.mask.lowest_key(last_row) > j * self.bk)
        return crosses | ((j + 1) * self.bk > self.s)

    def allowed(self, i, j, q_seg, k_seg):
        """[B or 1, 1, 1, bq, bk] mask of tile (i, j)."""
        q_pos = i * self.bq + jnp.arange(self.bq) + self.offset
        k_pos = j * self.bk + jnp.arange(self.bk)
        ok = ((k_pos < self.s)[None, :] & self.mask.allowed(q_pos, k_pos))[None]
        if q_seg is not None:
            qs = lax.dynamic_slice_in_dim(q_seg, i * self.bq, self.bq, axis=1)
            ks = lax.dynamic_slice_in_dim(k_seg, j * self.bk, self.bk, axis=1)
            ok = ok & (qs[:, :, None] == ks[:, None, :])
        return ok[:, None, None]


def _per_tile(dims: _Dims, i, j, fn, *operands):
    """fn(masked: bool, *operands) on tile (i, j), masking only where the tile needs it (a `cond`, so the
    common unmasked tile runs no select and XLA keeps each branch's fusions small)."""
    return lax.cond(dims.needs_mask(i, j), functools.partial(fn, True), functools.partial(fn, False), *operands)


def _rows(x):
    """[B, K, G, bq, X] -> [B, K, G*bq, X]: a KV head's G query heads stacked as rows of one matmul."""
    b, kh, g, bq, last = x.shape
    return x.reshape(b, kh, g * bq, last)


def _matmul_rows(x, y):
    """x [B, K, G, bq, C] @ y [B, K, C, X] -> [B, K, G, bq, X] float32, one matmul per (B, K)."""
    out = jnp.einsum("bkqc,bkcx->bkqx", _rows(x), y, preferred_element_type=jnp.float32)
    return out.reshape(*x.shape[:-1], y.shape[-1])


def _scores(qi, kj, ok):
    """qi [B, K, G, bq, D] (already scaled), kj [B, K, bk, D] -> float32 scores [B, K, G, bq, bk], masked
    to MASK where `ok` is False (None: nothing masked)."""
    s = _matmul_rows(qi, jnp.swapaxes(kj, -1, -2))
    return s if ok is None else jnp.where(ok, s, MASK)


def _forward(q, k, v, q_seg, k_seg, dims: _Dims):
    """q [B, K, G, Tp, D] (pre-scaled), k/v [B, K, Sp, D] -> out [B, K, G, Tp, D] (q dtype),
    lse [B, K, G, Tp] f32."""
    b, kh, g, _, d = q.shape

    def q_block(i):
        qi = lax.dynamic_slice_in_dim(q, i * dims.bq, dims.bq, axis=3)

        def step(masked, j, carry):
            m, l, acc = carry
            kj = lax.dynamic_slice_in_dim(k, j * dims.bk, dims.bk, axis=2)
            vj = lax.dynamic_slice_in_dim(v, j * dims.bk, dims.bk, axis=2)
            s = _scores(qi, kj, dims.allowed(i, j, q_seg, k_seg) if masked else None)
            m_new = jnp.maximum(m, s.max(-1))
            p = jnp.exp(s - m_new[..., None])
            correction = jnp.exp(m - m_new)
            l = l * correction + p.sum(-1)
            pv = _matmul_rows(p.astype(v.dtype), vj)
            return m_new, l, acc * correction[..., None] + pv

        init = (jnp.full((b, kh, g, dims.bq), MASK, jnp.float32), jnp.zeros((b, kh, g, dims.bq), jnp.float32),
                jnp.zeros((b, kh, g, dims.bq, d), jnp.float32))
        m, l, acc = lax.fori_loop(*dims.k_block_range(i), lambda j, c: _per_tile(dims, i, j, step, j, c), init)
        l = jnp.maximum(l, 1e-30)
        return (acc / l[..., None]).astype(q.dtype), m + jnp.log(l)

    out, lse = lax.map(q_block, jnp.arange(dims.nq))  # [nq, B, K, G, bq, (D)]
    out = jnp.moveaxis(out, 0, 3).reshape(b, kh, g, dims.tp, d)
    lse = jnp.moveaxis(lse, 0, 3).reshape(b, kh, g, dims.tp)
    return out, lse


def _backward(q, k, v, q_seg, k_seg, out, lse, dout, dims: _Dims):
    """FlashAttention-2 backward from the saved log-sum-exp; one tile of scores at a time."""
    b, kh, g, _, d = q.shape
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, K, G, Tp]

    def tile(masked, i, j):
        qi = lax.dynamic_slice_in_dim(q, i * dims.bq, dims.bq, axis=3)
        kj = lax.dynamic_slice_in_dim(k, j * dims.bk, dims.bk, axis=2)
        vj = lax.dynamic_slice_in_dim(v, j * dims.bk, dims.bk, axis=2)
        doi = lax.dynamic_slice_in_dim(dout, i * dims.bq, dims.bq, axis=3)
        lse_i = lax.dynamic_slice_in_dim(lse, i * dims.bq, dims.bq, axis=3)
        delta_i = lax.dynamic_slice_in_dim(delta, i * dims.bq, dims.bq, axis=3)
        ok = dims.allowed(i, j, q_seg, k_seg) if masked else None
        p = jnp.exp(_scores(qi, kj, ok) - lse_i[..., None])  # [B, K, G, bq, bk]
        if masked:
            p = jnp.where(ok, p, 0.0)
        dp = _matmul_rows(doi, jnp.swapaxes(vj, -1, -2))  # [B, K, G, bq, bk]
        ds = p * (dp - delta_i[..., None])
        return qi, kj, doi, p, ds

    def dkv_block(j, dq):
        """Key block j: its dK/dV over the query blocks that see it; each tile's dQ share is added into
        dq [B, K, G, Tp, D] as it goes (one pass: every score tile is computed once, not once for dQ and
        once for dK/dV)."""
        def step(masked, i, j):
            qi, kj, doi, p, ds = tile(masked, i, j)
            dv = jnp.einsum("bkqc,bkqd->bkcd", _rows(p.astype(dout.dtype)), _rows(doi),
                            preferred_element_type=jnp.float32)
            dk = jnp.einsum("bkqc,bkqd->bkcd", _rows(ds.astype(q.dtype)), _rows(qi),
                            preferred_element_type=jnp.float32)
            return dk, dv, _matmul_rows(ds.astype(k.dtype), kj)

        def body(i, carry):
            dk, dv, dq = carry
            dk_i, dv_i, dq_i = _per_tile(dims, i, j, step, i, j)
            dq_rows = lax.dynamic_slice_in_dim(dq, i * dims.bq, dims.bq, axis=3)
            return dk + dk_i, dv + dv_i, lax.dynamic_update_slice_in_dim(dq, dq_rows + dq_i, i * dims.bq, axis=3)

        zeros = jnp.zeros((b, kh, dims.bk, d), jnp.float32)
        dk, dv, dq = lax.fori_loop(*dims.q_block_range(j), body, (zeros, zeros, dq))
        return dq, (dk, dv)

    dq, (dk, dv) = lax.scan(lambda dq, j: dkv_block(j, dq), jnp.zeros(q.shape, jnp.float32), jnp.arange(dims.nk))
    dk = jnp.moveaxis(dk, 0, 2).reshape(k.shape)
    dv = jnp.moveaxis(dv, 0, 2).reshape(v.shape)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _attention_core(q, k, v, q_seg, k_seg, q_offset, dims):
    return _forward(q, k, v, q_seg, k_seg, dims.at(q_offset))[0]


def _core_fwd(q, k, v, q_seg, k_seg, q_offset, dims):
    out, lse = _forward(q, k, v, q_seg, k_seg, dims.at(q_offset))
    return out, (q, k, v, q_seg, k_seg, q_offset, out, lse)


def _core_bwd(dims, residuals, dout):
    q, k, v, q_seg, k_seg, q_offset, out, lse = residuals
    dq, dk, dv = _backward(q, k, v, q_seg, k_seg, out, lse, dout, dims.at(q_offset))
    return dq, dk, dv, None, None, None


_attention_core.defvjp(_core_fwd, _core_bwd)


def blockwise_attention(q, k, v, *, mask: Mask = CAUSAL, q_segment_ids=None, kv_segment_ids=None, scale=None,
                        q_offset=None, block_q: int = 512, block_k: int = 512):
    """q [B, T, H, D], k/v [B, S, K, D] -> [B, T, H, D]; memory O(T + S) beyond one score tile.
    q_offset (int, may be traced): key position of query 0 (default S - T)."""
    b, t, h, d = q.shape
    s, kh = k.shape[1], k.shape[2]
    g = h // kh
    scale = float(d ** -0.5 if scale is None else scale)
    dims = _Dims(t, s, block_q, block_k, mask, segments=q_segment_ids is not None)
    # The softmax scale is folded into q once (T x D multiplies instead of T x S); autodiff carries it to dq.
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)
    qg = pad_axis(jnp.moveaxis(q.reshape(b, t, kh, g, d), 1, 3), 3, dims.tp)  # [B, K, G, Tp, D]
    kk = pad_axis(jnp.moveaxis(k, 1, 2), 2, dims.sp)  # [B, K, Sp, D]
    vv = pad_axis(jnp.moveaxis(v, 1, 2), 2, dims.sp)
    q_seg = k_seg = None
    if q_segment_ids is not None:
        q_seg = pad_axis(jnp.asarray(q_segment_ids, jnp.int32), 1, dims.tp)
        k_seg = pad_axis(jnp.asarray(kv_segment_ids, jnp.int32), 1, dims.sp)
    offset = jnp.asarray(s - t if q_offset is None else q_offset, jnp.int32)
    out = _attention_core(qg, kk, vv, q_seg, k_seg, offset, dims)[:, :, :, :t]  # [B, K, G, T, D]
    return jnp.moveaxis(out, 3, 1).reshape(b, t, h, d)
