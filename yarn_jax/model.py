"""Flax NNX LLaMA: RMSNorm, SwiGLU, GQA with explicit head_dim, rotary from `yarn_jax.rope`.

Layers are created stacked (leading `layers` axis, via `nnx.vmap`) and run with `jax.lax.scan`, so
compile time does not grow with depth. Every parameter carries logical axis names in its `out_sharding`
metadata (`vocab, embed, heads, kv_heads, head_dim, mlp, norm, layers`); the sharding module maps them
onto a device mesh. A model built with a `sharder` holds it as static structure (like its attention
backend) and applies it wherever it is traced — forward, scorer, train step, prefill and decode alike:
activations are constrained by their logical names and attention runs per shard in `shard_map`.

Weight layouts (HF's `nn.Linear` [out, in] is transposed on import):
  embed_tokens [V, E]; q_proj [E, H, D]; k_proj, v_proj [E, K, D]; o_proj [H, D, E];
  gate_proj, up_proj [E, F]; down_proj [F, E]; norms [E]; lm_head [E, V] (absent when tied).
Family features (config flags, see `yarn_jax.families`): q_bias [H, D], k_bias / v_bias [K, D] (qkv_bias);
  o_bias [E] (o_bias); q_norm / k_norm weights [D] (qk_norm: RMSNorm over head_dim before the rotary).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from yarn_jax.attention import CAUSAL, FULL, Mask, SplashBlocks, attention, resolve_backend
from yarn_jax.attention.sharded import self_attention
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import CheckpointError, ConfigError
from yarn_jax.loss import DEFAULT_CHUNK, token_log_probs
from yarn_jax.rope import apply_rotary, rope_frequencies, rotary_cos_sin
from yarn_jax.sharding.rules import Sharder, constrain

ACTIVATIONS = ("batch", "length", None)  # logical names of the residual stream [B, T, E]
DECODING = ("batch", None, None)  # the residual stream of one new token [B, 1, E]
CACHE = ("batch", None, "kv_heads", "head_dim")  # one layer's decoding cache [B, S, K, D]: rows and KV heads

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# jax.checkpoint policies for the scanned layer body, by name. The projections run through a custom VJP
# (`_project`), which jax's dot-saving policies cannot see into: their outputs are named "proj" instead.
# "dots" keeps every projection output (q/k/v/o, gate/up/down) for the backward, recomputing the
# elementwise work and attention; "dots_no_batch" is the same here (none of these matmuls has batch
# dimensions; attention's batched products live inside the kernels). Found by compiling for TPU: before
# the names, both policies compiled to exactly the program of "full".
# "attention" recomputes everything but the attention's output and log-sum-exp (named inside the custom
# VJPs of the blockwise kernel and of ring attention, [B, K, G, T, D] + [B, K, G, T] f32 per layer), so the
# backward reruns the projections and elementwise work but not the attention forward (SmolLM2 shapes at 4k
# on CPU: 938 -> 825 ms per layer, fwd + bwd; a ring's forward hops are not repeated). The splash and
# Pallas GPU kernels keep their residuals inside: with them it is "full".
_SAVE_PROJECTIONS = jax.checkpoint_policies.save_only_these_names("proj")
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "attention": jax.checkpoint_policies.save_only_these_names("attention_out", "attention_lse"),
    "dots": _SAVE_PROJECTIONS,
    "dots_no_batch": _SAVE_PROJECTIONS,
}


def as_dtype(dtype: Any):
    """'float32' / 'bfloat16' / a jnp dtype -> jnp dtype (ConfigError naming the value otherwise)."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConfigError(f"dtype {dtype!r} is not supported; choose from {sorted(DTYPES)}")
        return DTYPES[dtype]
    return jnp.dtype(dtype).type


def _param(rngs: nnx.Rngs, shape, names, dtype, std: float | None):
    """A parameter with logical axis names; normal(0, std) or ones when std is None."""
    value = jnp.ones(shape, dtype) if std is None else std * jax.random.normal(rngs.params(), shape, dtype)
    return nnx.Param(value, sharding_names=names, eager_sharding=False)


def _dot(x, w, n_in: int, dtype):
    """x [B, T, in...] . w [in..., out...] -> [B, T, out...]: the last n_in axes of x against the first n_in
    of w, in the compute dtype with float32 accumulation (fast bf16 on CPU/TPU), result in dtype."""
    return checkpoint_name(_project(x.astype(dtype), w.astype(dtype), n_in).astype(dtype), "proj")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _project(x, w, n_in):
    lead = x.ndim - n_in
    return lax.dot_general(x, w, ((tuple(range(lead, x.ndim)), tuple(range(n_in))), ((), ())),
                           preferred_element_type=jnp.float32)


def _project_fwd(x, w, n_in):
    return _project(x, w, n_in), (x, w)


def _project_bwd(n_in, res, dy):
    """The gradients as the two products BLAS computes without copies: dx = dy . w^T over the output
    axes, dw = x^T . dy over [B, T]. (Autodiff's transposed einsum made XLA:CPU write a transposed copy
    of each activation gradient, fused with its elementwise producer: ~20 ms per MLP at 1k tokens.)"""
    x, w = res
    lead = x.ndim - n_in
    dy = dy.astype(x.dtype)
    dx = lax.dot_general(dy, w, ((tuple(range(lead, dy.ndim)), tuple(range(n_in, w.ndim))), ((), ())),
                         preferred_element_type=jnp.float32)
    dw = lax.dot_general(x, dy, ((tuple(range(lead)), tuple(range(lead))), ((), ())),
                         preferred_element_type=jnp.float32)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_project.defvjp(_project_fwd, _project_bwd)


class RMSNorm(nnx.Module):
    """RMSNorm over the trailing axes of `shape` (one axis usually; [H, D] for OLMo's q/k norm over a whole
    projection)."""

    def __init__(self, shape: int | tuple[int, ...], eps: float, *, param_dtype, rngs: nnx.Rngs, names=("norm",),
                 scale_in_float32: bool = False):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.weight = _param(rngs, shape, names, param_dtype, None)
        self.eps = eps
        self.scale_in_float32 = scale_in_float32

    def __call__(self, x):
        """HF LlamaRMSNorm: normalise in float32, cast back to x's dtype, then scale; with
        scale_in_float32 (HF's Olmo2/Olmo3RMSNorm) scale in float32, then cast."""
        axes = tuple(range(-self.weight.ndim, 0))
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=axes, keepdims=True) + self.eps)
        if self.scale_in_float32:
            return (self.weight[...].astype(jnp.float32) * xf).astype(x.dtype)
        return self.weight[...].astype(x.dtype) * xf.astype(x.dtype)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, dtype, param_dtype, attention_backend: str, rngs: nnx.Rngs,
                 splash_blocks: SplashBlocks | None = None, sharder: Sharder | None = None):
        e, h, k, d, f = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                         cfg.intermediate_size)
        std = cfg.initializer_range
        norm = functools.partial(RMSNorm, eps=cfg.rms_norm_eps, param_dtype=param_dtype, rngs=rngs,
                                 scale_in_float32=cfg.post_norm)
        if not cfg.post_norm:
            self.input_norm = norm(e)
        self.q_proj = _param(rngs, (e, h, d), ("embed", "heads", "head_dim"), param_dtype, std)
        self.k_proj = _param(rngs, (e, k, d), ("embed", "kv_heads", "head_dim"), param_dtype, std)
        self.v_proj = _param(rngs, (e, k, d), ("embed", "kv_heads", "head_dim"), param_dtype, std)
        self.o_proj = _param(rngs, (h, d, e), ("heads", "head_dim", "embed"), param_dtype, std)
        self.post_attention_norm = norm(e)  # pre-norm: the MLP's input norm; post-norm: the attention output's
        if cfg.post_norm:
            self.post_feedforward_norm = norm(e)
        self.gate_proj = _param(rngs, (e, f), ("embed", "mlp"), param_dtype, std)
        self.up_proj = _param(rngs, (e, f), ("embed", "mlp"), param_dtype, std)
        self.down_proj = _param(rngs, (f, e), ("mlp", "embed"), param_dtype, std)
        if cfg.qkv_bias:
            self.q_bias = _param(rngs, (h, d), ("heads", "head_dim"), param_dtype, std)
            self.k_bias = _param(rngs, (k, d), ("kv_heads", "head_dim"), param_dtype, std)
            self.v_bias = _param(rngs, (k, d), ("kv_heads", "head_dim"), param_dtype, std)
        if cfg.o_bias:
            self.o_bias = _param(rngs, (e,), ("embed",), param_dtype, std)
        if cfg.qk_norm == "head":
            self.q_norm = norm(d, names=("head_dim",))
            self.k_norm = norm(d, names=("head_dim",))
        elif cfg.qk_norm == "projection":
            self.q_norm = norm((h, d), names=("heads", "head_dim"))
            self.k_norm = norm((k, d), names=("kv_heads", "head_dim"))
        self.qkv_bias, self.o_bias_on, self.qk_norm, self.post_norm = cfg.qkv_bias, cfg.o_bias, cfg.qk_norm, cfg.post_norm
        self.masks = layer_masks(cfg)[0]
        self.dtype = dtype
        self.attention_backend = attention_backend
        self.splash_blocks = splash_blocks
        self.sharder = sharder

    def project_qkv(self, x):
        """x [B, T, E] -> q [B, T, H, D], k [B, T, K, D] (both before the rotation), v [B, T, K, D]."""
        dt = self.dtype
        h = x if self.post_norm else self.input_norm(x)
        q, k, v = (_dot(h, self.q_proj[...], 1, dt), _dot(h, self.k_proj[...], 1, dt),
                   _dot(h, self.v_proj[...], 1, dt))
        if self.qkv_bias:  # Qwen2: y = x W + b
            q, k, v = (q + self.q_bias[...].astype(dt), k + self.k_bias[...].astype(dt), v + self.v_bias[...].astype(dt))
        if self.qk_norm:  # before the rotary: Qwen3 over head_dim of each head, OLMo over the whole projection
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def finish(self, x, o):
        """Residual stream after attention output o [B, T, H, D]: o_proj, then the SwiGLU MLP block (pre-norm:
        each block normalises its input; post-norm: its output)."""
        dt = self.dtype
        attn = _dot(o, self.o_proj[...], 2, dt)  # [B, T, H, D] . [H, D, E]
        attn = attn + self.o_bias[...].astype(dt) if self.o_bias_on else attn
        if self.post_norm:
            x = x + self.post_attention_norm(attn)
            return x + self.post_feedforward_norm(self.mlp(x))
        x = x + attn
        return x + self.mlp(self.post_attention_norm(x))

    def mlp(self, h):
        """SwiGLU: h [B, T, E] -> [B, T, E] through [B, T, F]."""
        dt = self.dtype
        gated = jax.nn.silu(_dot(h, self.gate_proj[...], 1, dt)) * _dot(h, self.up_proj[...], 1, dt)
        return _dot(gated, self.down_proj[...], 1, dt)

    def __call__(self, x, cos, sin, segment_ids, mask_index=None):
        """x [B, T, E] -> ([B, T, E], (k, v) before the rotation [B, T, K, D]); cos/sin [B, T, d] carry the
        rope attention factor. mask_index (traced, per layer): which of the config's masks this layer uses
        when its layers differ (full and sliding-window)."""
        q, k, v = self.project_qkv(x)
        q_rot, k_rot = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

        def run(mask):
            return lambda q, k, v: self_attention(q, k, v, backend=self.attention_backend, mask=mask,
                                                  segment_ids=segment_ids, splash_blocks=self.splash_blocks,
                                                  sharder=self.sharder)  # [B, T, H, D]

        if mask_index is None:
            o = run(self.masks[0])(q_rot, k_rot, v)
        else:  # one program per distinct mask (splash's are static), the layer's picked at run time
            o = lax.switch(mask_index, [run(m) for m in self.masks], q_rot, k_rot, v)
        return constrain(self.finish(x, o), ACTIVATIONS, self.sharder), (k, v)

    def decode(self, x, cos_q, sin_q, cos_k, sin_k, k_cache, v_cache, pos, valid):
        """One new token x [B, 1, E] at position `pos` against a cache of keys stored *before* the rotation.

        The token's k/v are written at `pos`; then every cached key is rotated with cos_k/sin_k [B, S, d]
        (the current length's frequencies, the same ones the query gets), so dynamic methods never mix
        rotations from different lengths. valid [B, S] int: 1 for the keys this layer's mask shows the token
        (positions <= pos, within its sliding window).
        Returns (x [B, 1, E], k_cache, v_cache).
        """
        q, k, v = self.project_qkv(x)
        k_cache = constrain(jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), pos, axis=1),
                            CACHE, self.sharder)
        v_cache = constrain(jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), pos, axis=1),
                            CACHE, self.sharder)
        o = attention(apply_rotary(q, cos_q, sin_q), apply_rotary(k_cache, cos_k, sin_k), v_cache,
                      backend="reference", mask=FULL, q_segment_ids=jnp.ones_like(valid[:, :1]),
                      kv_segment_ids=valid)  # one query: its mask is the valid-key mask
        return constrain(self.finish(x, o), DECODING, self.sharder), k_cache, v_cache


class Llama(nnx.Module):
    """LLaMA decoder. `__call__(input_ids [B, T]) -> logits [B, T, V] float32`."""

    def __init__(self, cfg: LlamaConfig, *, dtype="float32", param_dtype="float32",
                 attention_backend: str = "auto", remat: str = "none", rngs: nnx.Rngs | None = None,
                 splash_blocks: SplashBlocks | None = None, sharder: Sharder | None = None):
        if remat not in REMAT_POLICIES:
            raise ConfigError(f"remat policy {remat!r} is not supported; choose from {sorted(REMAT_POLICIES)}")
        resolve_backend(attention_backend)  # an unknown backend fails here, before any compute
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = cfg
        self.dtype = as_dtype(dtype)
        self.remat = remat
        self.attention_backend = attention_backend
        self.splash_blocks = splash_blocks
        self.sharder = sharder
        pdt = as_dtype(param_dtype)
        self.param_dtype = pdt
        self.embed_tokens = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), pdt,
                                   cfg.initializer_range)

        @nnx.split_rngs(splits=cfg.num_hidden_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_layers(r):
            return DecoderLayer(cfg, dtype=self.dtype, param_dtype=pdt, attention_backend=attention_backend,
                                rngs=r, splash_blocks=splash_blocks, sharder=sharder)

        self.layers = make_layers(rngs)
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pdt, rngs=rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), pdt,
                                  cfg.initializer_range)

    def replace(self, **changes) -> "Llama":
        """This model with other static settings (`config`, `sharder`, `attention_backend`, `remat`, `dtype`,
        `splash_blocks`) around the same parameter arrays (shared, not copied)."""
        settings = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype,
                        attention_backend=self.attention_backend, remat=self.remat,
                        splash_blocks=self.splash_blocks, sharder=self.sharder)
        unknown = set(changes) - set(settings)
        if unknown:
            raise TypeError(f"Llama.replace: unknown settings {sorted(unknown)}")
        settings.update(changes)
        cfg = settings.pop("config")
        graphdef = nnx.graphdef(nnx.eval_shape(lambda: Llama(cfg, **settings)))
        return nnx.merge(graphdef, nnx.state(self))

    def constrain(self, x, names):
        """x under its logical axis names on this model's mesh (the identity without a sharder)."""
        return constrain(x, names, self.sharder)

    def frequencies(self, seq_len):
        """(inv_freq [d/2], attention_factor) of the configured rope at this length (may be traced)."""
        return rope_frequencies(self.config.rope, seq_len)

    def _scan_layers(self, fn, x, xs=None):
        """Run fn(layer, h, x_l) -> (h, y_l) over the stacked layers (remat per the policy); returns (h, ys)."""
        graphdef, layer_state = nnx.split(self.layers)

        def body(h, inputs):
            one_layer_state, per_layer = inputs
            return fn(nnx.merge(graphdef, one_layer_state), h, per_layer)

        if self.remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
        return jax.lax.scan(body, x, (layer_state, xs))

    def _per_layer(self):
        """(rope index [L], mask index [L]) int arrays for the scan — None where every layer is alike."""
        return tuple(None if idx is None else jnp.asarray(idx, jnp.int32)
                     for idx in (layer_rotaries(self.config)[1], layer_masks(self.config)[1]))

    def _rotaries(self, positions, frequencies, seq_len):
        """(cos, sin): [B, T, d] when every layer rotates alike, else [R, B, T, d] over the config's kinds
        of rotary (`layer_rotaries`). `frequencies` replace the configured rope's (not a per-type sliding
        rope's, nor NoPE)."""
        kinds, index = layer_rotaries(self.config)
        tables = []
        for kind in kinds:
            if kind == "rope":
                inv_freq, factor = self.frequencies(seq_len) if frequencies is None else frequencies
                tables.append(rotary_cos_sin(positions, inv_freq, factor))
            elif kind == "sliding_rope":
                tables.append(rotary_cos_sin(positions, *rope_frequencies(self.config.sliding_rope, seq_len)))
            else:  # NoPE: the identity rotation, which also leaves out the rope's attention factor (as HF skips it)
                d = self.config.rope.rotary_dim
                tables.append((jnp.ones((*positions.shape, d), jnp.float32), jnp.zeros((*positions.shape, d), jnp.float32)))
        if index is None:
            return tables[0]
        return jnp.stack([c for c, _ in tables]), jnp.stack([s for _, s in tables])

    def embed(self, input_ids):
        # under FSDP the table is all-gathered along embed first (as every layer's weights are): a lookup
        # into an embed-sharded table would give an embed-sharded result XLA can only reshard by a full copy
        table = self.constrain(self.embed_tokens[...], ("vocab", None))
        return jnp.take(table, input_ids, axis=0).astype(self.dtype)  # [B, T, E]

    def hidden_states(self, input_ids, positions=None, segment_ids=None, *, frequencies=None, return_kv=False):
        """input_ids [B, T] int -> final-normed hidden states [B, T, E] in the compute dtype.
        With return_kv, also the per-layer keys (before the rotation) and values [L, B, T, K, D]."""
        b, t = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        seq_len = jnp.max(positions) + 1  # the global length (dynamic ropes), whatever the layout
        order = None if self.sharder is None else self.sharder.sequence_order(t)
        if order is not None:  # load-balanced sequence shards: tokens in the balanced order, once, here
            input_ids, positions = input_ids[:, order], positions[:, order]
            segment_ids = None if segment_ids is None else segment_ids[:, order]
        cos, sin = self._rotaries(positions, frequencies, seq_len)

        def layer(mod, h, per_layer):
            rope_index, mask_index = per_layer
            h, kv = mod(h, *_pick(rope_index, cos, sin), segment_ids, mask_index)
            return h, (kv if return_kv else None)

        x, kv = self._scan_layers(layer, self.constrain(self.embed(input_ids), ACTIVATIONS), self._per_layer())
        h = self.final_norm(x)
        if order is not None:  # ... and back to the sequence's order, once
            inverse = np.argsort(order)
            h = self.constrain(h[:, inverse], ACTIVATIONS)
            kv = None if kv is None else tuple(a[:, :, inverse] for a in kv)
        return (h, kv) if return_kv else h

    def decode_step(self, token, pos, k_cache, v_cache, frequencies=None):
        """Greedy-decoding step: token [B] at position `pos` (scalar), caches [L, B, S, K, D] of keys before
        the rotation and values -> (logits [B, V] float32, k_cache, v_cache). The rope is evaluated at
        seq_len = pos + 1, as a full forward over the pos + 1 tokens would."""
        b, s = k_cache.shape[1], k_cache.shape[2]
        key_pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
        cos_k, sin_k = self._rotaries(key_pos, frequencies, pos + 1)
        cos_q, sin_q = self._rotaries(jnp.full((b, 1), pos, jnp.int32), frequencies, pos + 1)
        masks, mask_index = layer_masks(self.config)
        # [M, B, S]: the keys each distinct mask shows the token at `pos`
        valid = jnp.stack([m.allowed(jnp.reshape(pos, (1,)), key_pos[0])[0] for m in masks]).astype(jnp.int32)
        valid = jnp.broadcast_to(valid[:, None], (len(masks), b, s))

        def layer(mod, h, per_layer):
            kc, vc, (rope_index, mask_index) = per_layer
            h, kc, vc = mod.decode(h, *_pick(rope_index, cos_q, sin_q), *_pick(rope_index, cos_k, sin_k),
                                   kc, vc, pos, valid[0 if mask_index is None else mask_index])
            return h, (kc, vc)

        x, (k_cache, v_cache) = self._scan_layers(layer, self.constrain(self.embed(token[:, None]), DECODING),
                                                  (k_cache, v_cache, self._per_layer()))
        return self.logits_from_hidden(self.final_norm(x))[:, 0], k_cache, v_cache

    def lm_head_weight(self):
        """[E, V]: the untied head, or the transposed embedding when tied."""
        return self.embed_tokens[...].T if self.config.tie_word_embeddings else self.lm_head[...]

    def logits_from_hidden(self, h):
        """h [B, T, E] -> logits [B, T, V] float32."""
        w = self.lm_head_weight()
        return jnp.einsum("bte,ev->btv", h, w.astype(h.dtype), preferred_element_type=jnp.float32)

    def __call__(self, input_ids, positions=None, segment_ids=None, *, frequencies=None):
        return self.logits_from_hidden(self.hidden_states(input_ids, positions, segment_ids, frequencies=frequencies))


def _pick(index, cos, sin):
    """One layer's cos/sin [B, T, d] from the stacked kinds [R, B, T, d] (as they are without an index)."""
    return (cos, sin) if index is None else (cos[index], sin[index])


def _kinds_and_index(per_layer: tuple) -> tuple[tuple, tuple[int, ...] | None]:
    """(the distinct values in first-seen order, each layer's index into them — None when all are alike)."""
    kinds = tuple(dict.fromkeys(per_layer))
    return kinds, (None if len(kinds) == 1 else tuple(kinds.index(x) for x in per_layer))


def layer_masks(cfg: LlamaConfig) -> tuple[tuple[Mask, ...], tuple[int, ...] | None]:
    """(the config's distinct attention masks, each layer's index into them or None when all layers share
    one): causal, and a sliding window on sliding-attention layers."""
    return _kinds_and_index(tuple(CAUSAL if w is None else Mask(window=w) for w in cfg.layer_windows()))


def layer_rotaries(cfg: LlamaConfig) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    """(the config's distinct kinds of rotary — "rope", "sliding_rope", "none" — and each layer's index)."""
    return _kinds_and_index(cfg.layer_ropes())


def abstract_model(cfg: LlamaConfig, **settings) -> Llama:
    """A Llama of ShapeDtypeStructs (no allocation); `settings` as for `Llama`."""
    return nnx.eval_shape(lambda: Llama(cfg, **settings))


def model_from_params(cfg: LlamaConfig, params, *, param_dtype="float32", **settings) -> Llama:
    """Build a Llama whose parameters are `params` ({param path tuple: array}), without random init;
    `settings` (dtype, attention_backend, remat, splash_blocks, sharder) as for `Llama`."""
    pdt = as_dtype(param_dtype)
    graphdef, state = nnx.split(abstract_model(cfg, param_dtype=pdt, **settings))
    flat = nnx.to_flat_state(state)
    missing = [path for path, _ in flat if tuple(path) not in params]
    if missing:
        raise CheckpointError(f"parameters missing for {['/'.join(map(str, p)) for p in missing]}")
    for path, var in flat:
        value = params[tuple(path)]
        if tuple(value.shape) != tuple(var.shape):
            raise CheckpointError(f"parameter {'/'.join(map(str, path))} has shape {tuple(value.shape)}, "
                              f"expected {tuple(var.shape)}")
        var.set_value(jnp.asarray(value, pdt))
    return nnx.merge(graphdef, state)


def flat_params(state) -> dict[tuple[str, ...], Any]:
    """{param path tuple: value} of a parameter state (from `nnx.split`/`nnx.state`)."""
    return {tuple(str(p) for p in path): var.get_value() for path, var in nnx.to_flat_state(state)}


def state_from_flat(abstract, flat: dict):
    """The state shaped like `abstract` (e.g. from `nnx.eval_shape`) holding flat[param path] values."""
    return nnx.from_flat_state([(path, var.replace(flat[tuple(str(p) for p in path)]))
                                for path, var in nnx.to_flat_state(abstract)])


def model_params(model: Llama) -> dict[tuple[str, ...], Any]:
    """{param path tuple: array} of a model (the inverse of `model_from_params`)."""
    return flat_params(nnx.state(model, nnx.Param))


def next_token_log_probs(model: Llama, input_ids, positions=None, segment_ids=None, *, frequencies=None,
                         chunk: int = DEFAULT_CHUNK):
    """log p(input_ids[:, t+1] | input_ids[:, :t+1]) [B, T-1] float32 via the chunked head (no [T, V] logits)."""
    h = model.hidden_states(input_ids, positions, segment_ids, frequencies=frequencies)
    # all T positions against the next token (the wrapped last one dropped): T stays aligned with a
    # sequence-sharded layout
    lp = token_log_probs(h, model.lm_head_weight(), jnp.roll(input_ids, -1, axis=1), chunk=chunk)
    return lp[:, :-1]
