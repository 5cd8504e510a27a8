"""Accelerator kernels behind the attention entry point: jax's Pallas TPU splash attention and the
Pallas GPU (Triton) flash attention. Whether a kernel is interpreted follows the *target* platform (the
mesh's devices, or the default backend without a mesh), not the host: an ahead-of-time compile for a TPU
topology on a CPU machine must lower splash with Mosaic. Off their hardware both run with
`interpret=True` (the CPU tests).

splash: GQA-native — one MQA kernel per KV head serves its G query heads, so K/V are never repeated.
gpu_flash: the Pallas Triton `mha` kernel needs as many K/V heads as query heads, so K/V are repeated
per group (memory still linear in S); it takes one segment-id array and a causal flag, so it serves
causal or full self-attention (T == S); other shapes and masks (sliding windows, chunks) fall back to
the blockwise backend. cuDNN through
`jax.nn.dot_product_attention` is GQA-native but takes no segment ids, hence not the default.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from yarn_jax.attention.blockwise import blockwise_attention
from yarn_jax.attention.masks import CAUSAL, Mask, query_positions
from yarn_jax.errors import ConfigError
from yarn_jax.shapes import cdiv, pad_axis


def _padded_segments(q_segment_ids, kv_segment_ids, b: int, t: int, s: int, tp: int, sp: int, positions):
    """Segment ids with padding (0 for every real token when none are given). Padded keys get -1, so no
    real query sees them. A padded query at key position p ([Tp] `positions`, padding repeating the last
    real one) takes the segment of key min(p, sp - 1): its own diagonal, which every causal mask (sliding
    windows and chunks too) shows it, else the last key, which a full mask shows every query — so no row
    of the kernel's softmax is ever empty."""
    if q_segment_ids is None:
        q_segment_ids = jnp.zeros((b, t), jnp.int32)
        kv_segment_ids = jnp.zeros((b, s), jnp.int32)
    kv_seg = pad_axis(jnp.asarray(kv_segment_ids, jnp.int32), 1, sp, -1)
    q_seg = pad_axis(jnp.asarray(q_segment_ids, jnp.int32), 1, tp)
    diagonal = jnp.minimum(positions, sp - 1)
    return jnp.where(jnp.arange(tp) < t, q_seg, kv_seg[:, diagonal]), kv_seg


def interpret_off(platform: str | None, kernel_platforms: tuple[str, ...]) -> bool:
    """True when a kernel for `kernel_platforms` must run in Pallas interpret mode: the target platform
    (default: this process's default backend) is not one of them."""
    return (platform or jax.default_backend()) not in kernel_platforms


_Q_BLOCKS = ("block_q", "block_q_dkv", "block_q_dq")
_KV_BLOCKS = ("block_kv", "block_kv_compute", "block_kv_dkv", "block_kv_dkv_compute", "block_kv_dq")


@dataclasses.dataclass(frozen=True)
class SplashBlocks:
    """Splash attention tile sizes (multiples of 128, in tokens) and the backward-kernel choice.

    Forward: `block_q` queries against `block_kv` keys per grid step, the keys processed `block_kv_compute`
    at a time. Backward: the dK/dV kernel's blocks (`*_dkv`) and the dQ kernel's (`*_dq`); with
    `fused_bwd` one kernel computes dQ, dK and dV (no dQ blocks). Each block is capped at the padded
    length it tiles, so the defaults serve short sequences too. Defaults (docs/attention.md "Splash attention
    blocks", bench/aot_splash_blocks.py): 512 everywhere with separate dK/dV and dQ kernels — every
    candidate compiled with Mosaic for head_dim 64 and 128; among the 512 blocks MaxText runs by default,
    the separate backward needs fewer temporaries than the fused one — by 16.6 GiB per chip for the
    paper's Llama-2-7B step at 64k on v5p-64 (19.4 vs 36.0 GiB). Throughput needs a TPU: unmeasured.
    """

    block_q: int = 512
    block_kv: int = 512
    block_kv_compute: int = 512
    block_q_dkv: int = 512
    block_kv_dkv: int = 512
    block_kv_dkv_compute: int = 512
    block_q_dq: int = 512
    block_kv_dq: int = 512
    fused_bwd: bool = False

    def __post_init__(self):
        for name in (*_Q_BLOCKS, *_KV_BLOCKS):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 128 or value % 128:
                raise ConfigError(f"splash {name}={value!r} must be a positive multiple of 128 (the TPU lane width)")
        for outer, inner in (("block_kv", "block_kv_compute"), ("block_kv_dkv", "block_kv_dkv_compute")):
            if getattr(self, outer) % getattr(self, inner):
                raise ConfigError(f"splash {inner}={getattr(self, inner)} must divide {outer}={getattr(self, outer)}")

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "splash_blocks") -> "SplashBlocks":
        unknown = sorted(set(d or {}) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"{where}: no splash setting {unknown}; settings are "
                              f"{[f.name for f in dataclasses.fields(cls)]}")
        return cls(**(d or {}))

    def padded(self, t: int, s: int) -> tuple[int, int, "SplashBlocks"]:
        """(padded t, padded s, the blocks capped at those lengths): every block divides its length."""
        tq = 128 * cdiv(t, 128)
        skv = 128 * cdiv(s, 128)
        capped = {n: _fit(getattr(self, n), tq) for n in _Q_BLOCKS} | {n: _fit(getattr(self, n), skv)
                                                                          for n in _KV_BLOCKS}
        bq, bkv = max(capped[n] for n in _Q_BLOCKS), max(capped[n] for n in _KV_BLOCKS)
        for inner, outer in (("block_kv_compute", "block_kv"), ("block_kv_dkv_compute", "block_kv_dkv")):
            capped[inner] = min(capped[inner], capped[outer])
        return bq * cdiv(t, bq), bkv * cdiv(s, bkv), dataclasses.replace(self, **capped)

    def kernel_sizes(self):
        """jax's splash BlockSizes."""
        from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

        return sk.BlockSizes(block_q=self.block_q, block_kv=self.block_kv, block_kv_compute=self.block_kv_compute,
                             block_q_dkv=self.block_q_dkv, block_kv_dkv=self.block_kv_dkv,
                             block_kv_dkv_compute=self.block_kv_dkv_compute,
                             block_q_dq=None if self.fused_bwd else self.block_q_dq,
                             block_kv_dq=None if self.fused_bwd else self.block_kv_dq,
                             use_fused_bwd_kernel=self.fused_bwd)


def _fit(block: int, length: int) -> int:
    """The largest power-of-two fraction of `block` (>= 128) not above `length` (a multiple of 128)."""
    while block > length and block > 128:
        block //= 2
    return max(128, block)


@functools.lru_cache(maxsize=1)
def _position_mask_class():
    """splash's computable mask with the queries at given key positions: its `q_sequence` holds each query
    row's position and the kernel evaluates `Mask.sees` on it tile by tile (a causal mask at an offset, a
    load-balanced shard's two chunks or stripe, a sliding window, chunks — one class for all)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    class PositionMask(sm._ComputableMask):
        def __init__(self, shape: tuple[int, int], positions: np.ndarray, mask: Mask):
            self.described = mask
            super().__init__(shape=shape, mask_function=mask.sees)
            self.q_sequence = np.asarray(positions, np.int32)

        def __eq__(self, other):
            return (type(other) is type(self) and self.shape == other.shape and self.described == other.described
                    and np.array_equal(self.q_sequence, other.q_sequence))

        def __hash__(self):
            return hash((self.shape, self.described, self.q_sequence.tobytes()))

    return PositionMask


@functools.lru_cache(maxsize=64)
def _splash_kernel(t: int, s: int, positions: bytes, groups: int, mask: Mask, blocks: SplashBlocks,
                   interpret: bool):
    """A splash MQA kernel for padded lengths (t, s); query i sits at key position positions[i] (int32
    bytes: hashable for the cache)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    if mask.causal:
        head_mask = _position_mask_class()((t, s), np.frombuffer(positions, np.int32), mask)
    else:
        head_mask = sm.FullMask((t, s))
    mask = sm.MultiHeadMask([head_mask] * groups)
    with jax.ensure_compile_time_eval():  # concrete mask-info arrays, safe to cache across traces
        return sk.make_splash_mqa_single_device(mask, block_sizes=blocks.kernel_sizes(), interpret=interpret)


def splash_attention(q, k, v, *, mask: Mask = CAUSAL, q_segment_ids=None, kv_segment_ids=None, scale=None,
                     q_offset: int | None = None, q_positions=None, blocks: SplashBlocks | None = None,
                     platform: str | None = None, interpret: bool | None = None):
    """q [B, T, H, D], k/v [B, S, K, D] -> [B, T, H, D] through Pallas TPU splash attention (MQA per KV head).
    q_offset: key position of query 0 (default S - T), or q_positions [T]: each query's (nondecreasing);
    static either way, as splash's mask is built ahead of time. interpret: default True unless the target
    `platform` (default: the default backend) is a TPU."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    if interpret is None:
        interpret = interpret_off(platform, ("tpu",))
    b, t, h, d = q.shape
    s, kh = k.shape[1], k.shape[2]
    g = h // kh
    scale = d ** -0.5 if scale is None else scale
    with jax.ensure_compile_time_eval():
        positions = np.asarray(query_positions(t, s, None if q_offset is None else int(q_offset), q_positions))
    # splash needs lengths divisible by its blocks (multiples of 128 on TPU): pad at the end of both
    # sequences, padded queries at the last real position, masked by segment (each sees its own diagonal)
    blocks = blocks or SplashBlocks()
    tp, sp, fitted = blocks.padded(t, s)
    positions = np.pad(positions, (0, tp - t), mode="edge")
    q_seg, kv_seg = _padded_segments(q_segment_ids, kv_segment_ids, b, t, s, tp, sp, positions)
    kernel = _splash_kernel(tp, sp, positions.astype(np.int32).tobytes(), g, mask, fitted, interpret)
    qg = pad_axis((q * jnp.asarray(scale, q.dtype)).reshape(b, t, kh, g, d), 1, tp)  # splash does not scale
    qg = jnp.transpose(qg, (0, 2, 3, 1, 4))  # [B, K, G, Tp, D]
    kk = jnp.transpose(pad_axis(k, 1, sp), (0, 2, 1, 3))  # [B, K, Sp, D]
    vv = jnp.transpose(pad_axis(v, 1, sp), (0, 2, 1, 3))

    def one(qh, kh_, vh, qs, ks):  # qh [G, Tp, D], kh_/vh [Sp, D]
        return kernel(qh, kh_, vh, segment_ids=sk.SegmentIds(q=qs, kv=ks))

    per_kv_head = jax.vmap(one, in_axes=(0, 0, 0, None, None))
    out = jax.vmap(per_kv_head, in_axes=(0, 0, 0, 0, 0))(qg, kk, vv, q_seg, kv_seg)  # [B, K, G, Tp, D]
    return jnp.transpose(out, (0, 3, 1, 2, 4))[:, :t].reshape(b, t, h, d)


def gpu_flash_attention(q, k, v, *, mask: Mask = CAUSAL, q_segment_ids=None, kv_segment_ids=None, scale=None,
                        q_offset=None, q_positions=None, block_q: int = 64, block_k: int = 64,
                        platform: str | None = None, interpret: bool | None = None):
    """q [B, T, H, D], k/v [B, S, K, D] -> [B, T, H, D] through the Pallas GPU (Triton) flash kernel.
    What the kernel cannot express — T != S, queries placed by an offset or positions, a sliding window or
    chunks (it has a causal flag only) — runs the blockwise backend."""
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention

    b, t, h, d = q.shape
    s, kh = k.shape[1], k.shape[2]
    if t != s or q_offset is not None or q_positions is not None or mask.banded:
        return blockwise_attention(q, k, v, mask=mask, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
                                   scale=scale, q_offset=q_offset, q_positions=q_positions)
    if interpret is None:
        interpret = interpret_off(platform, ("gpu", "cuda", "rocm"))
    if d & (d - 1):
        raise ConfigError(f"gpu_flash needs a power-of-two head_dim, got {d}")
    scale = d ** -0.5 if scale is None else scale
    block = min(block_q, block_k, 16 * cdiv(t, 16))
    tp = block * cdiv(t, block)
    # one array serves queries and keys: the key form (-1 at padding; padded queries see padded keys)
    _, seg = _padded_segments(q_segment_ids, kv_segment_ids, b, t, s, tp, tp, jnp.arange(tp))
    g = h // kh
    kk = jnp.repeat(pad_axis(k, 1, tp), g, axis=2)  # head h reads kv head h // g, as HF's repeat_kv
    vv = jnp.repeat(pad_axis(v, 1, tp), g, axis=2)
    sizes = gpu_attention.BlockSizes(block_q=block, block_k=block, block_q_dkv=block, block_kv_dkv=block,
                                     block_q_dq=block, block_kv_dq=block)
    out = gpu_attention.mha(pad_axis(q, 1, tp), kk, vv, seg, sm_scale=float(scale), causal=mask.causal,
                            block_sizes=sizes, interpret=interpret)
    return out[:, :t]
