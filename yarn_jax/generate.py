"""Decoding with a key/value cache: greedy (the passkey test's generator) or sampled (temperature, top-k,
top-p, a seed).

The cache holds keys *before* the rotation. Every step rotates all cached keys with the frequencies of
the current length (seq_len = pos + 1), the same ones the new query gets, as a full forward over the
pos + 1 tokens would: no key is ever used with a rotation from an older length (the stale-rotation bug
of caching rotated keys under HF's dynamic scaling).

Length-dependent methods (HF `dynamic`, Dynamic-YaRN past the original context, longrope across it)
change their frequencies with the length, and that also changes every earlier token's deeper-layer
keys and values, which no cache can replay. So `generate_ids` checks whether the frequencies at the
prompt length and at the final length differ: if not (static methods; dynamic ones inside the original
context) it decodes from the cache, exactly; if so it re-runs the forward over the whole sequence for
each new token (exactly a full recompute), unless `dynamic_cache=True` asks for the fast approximation
(cache + re-rotated keys; measured gap on a tiny random model with a 2048-token prompt, 64x its original
context: max |dlogit| 0.004-0.06 over 10 steps, logits of std 1.4).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yarn_jax.errors import ConfigError
from yarn_jax.model import Llama


@functools.partial(jax.jit, static_argnums=(0, 4))
def _prefill(graphdef, state, ids, real_len, cache_len: int):
    """Right-padded ids [B, W] whose first real_len are the prompt -> (logits at position real_len - 1 [B, V],
    k_cache, v_cache [L, B, cache_len, K, D]). Padding is invisible to causal attention and is overwritten
    by the decoded tokens; the rope is evaluated at real_len, as an unpadded forward would."""
    model: Llama = nnx.merge(graphdef, state)
    h, (k, v) = model.hidden_states(ids, frequencies=model.frequencies(real_len), return_kv=True)  # [L, B, W, K, D]
    pad = [(0, 0), (0, 0), (0, cache_len - ids.shape[1]), (0, 0), (0, 0)]
    last = jax.lax.dynamic_slice_in_dim(h, real_len - 1, 1, axis=1)
    return model.logits_from_hidden(last)[:, 0], jnp.pad(k, pad), jnp.pad(v, pad)


@functools.partial(jax.jit, static_argnums=(0,))
def _last_logits(graphdef, state, ids, real_len):
    """Logits [B, V] at position real_len - 1 of right-padded ids [B, S] (padding is invisible to causal
    attention; the rope is evaluated at real_len, as an unpadded forward would): one compiled program
    for every length of a recompute loop."""
    model: Llama = nnx.merge(graphdef, state)
    h = model.hidden_states(ids, frequencies=model.frequencies(real_len))
    return model.logits_from_hidden(jax.lax.dynamic_slice_in_dim(h, real_len - 1, 1, axis=1))[:, 0]


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(4, 5))
def _step(graphdef, state, token, pos, k_cache, v_cache):
    model: Llama = nnx.merge(graphdef, state)
    return model.decode_step(token, pos, k_cache, v_cache)


def frequencies_change(model: Llama, start_len: int, end_len: int) -> bool:
    """Whether the rope frequencies (or attention factor) at seq_len start_len and end_len differ."""
    if not model.config.rope.method.length_dependent:
        return False
    a, b = model.frequencies(start_len), model.frequencies(end_len)
    return not all(bool(jnp.array_equal(x, y)) for x, y in zip(a, b))


def eos_ids(model: Llama) -> tuple[int, ...]:
    """The model's end-of-sequence ids (config `eos_token_id`: none, one or several) as stop ids."""
    eos = model.config.eos_token_id
    return () if eos is None else (eos if isinstance(eos, tuple) else (eos,))


def decode_signature(model: Llama, start_len: int, end_len: int) -> bytes:
    """Bytes equal for two models exactly when their rope frequencies agree at every length of a decode from
    start_len to end_len, so greedy decoding gives the same tokens (every method's frequencies change at
    most once, at L0, or grow monotonically with the length: the two ends decide)."""
    out = b""
    for n in (start_len, end_len):
        inv, factor = model.config.rope.frequencies(int(n))
        out += np.asarray(inv, np.float32).tobytes() + np.asarray(factor, np.float32).tobytes()
    return out


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Sampled decoding: logits / temperature, restricted to the top_k most likely tokens and to the smallest
    set whose probability reaches top_p (HF's TopKLogitsWarper / TopPLogitsWarper), drawn with a key from
    `seed` folded with the step. temperature 0 is greedy."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0

    def __post_init__(self):
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise ConfigError(f"temperature={self.temperature!r} must be a finite number >= 0")
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 1):
            raise ConfigError(f"top_k={self.top_k!r} must be a positive integer")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p!r} must be in (0, 1]")

    def __call__(self, logits, step: int):
        """logits [B, V] -> the next tokens [B] int32."""
        if self.temperature == 0:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), step)
        return jax.random.categorical(key, filtered_logits(logits / self.temperature, self.top_k, self.top_p),
                                      axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(1, 2))
def filtered_logits(logits, top_k: int | None, top_p: float | None):
    """logits [B, V] float with the tokens outside the top-k / the top-p nucleus at -inf (at least the most
    likely token is kept)."""
    logits = logits.astype(jnp.float32)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None and top_p < 1:
        order = jnp.argsort(-logits, axis=-1)
        probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability of the more likely tokens
        keep_sorted = before < top_p  # the first token always (0 < top_p)
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits


def generate_ids(model: Llama, prompt_ids, max_new_tokens: int, stop_ids=(), *, sampling: Sampling | None = None,
                 done_fn=None, dynamic_cache: bool = False, allowed=None, pad_to: int | None = None) -> jax.Array:
    """prompt_ids [B, T] -> the generated ids [B, n] (n <= max_new_tokens; greedy, or drawn by `sampling`;
    stops early once every row has produced one of `stop_ids`, or `done_fn(ids [B, n] numpy) -> bool [B]`
    says so). Equal to a full recompute per token (see the module docstring); dynamic_cache=True decodes
    length-dependent methods from the cache as well. `allowed` [V] bool: only these tokens are chosen.
    `pad_to`: right-pad the prompt to this many positions, so prompts of different lengths share one compiled
    program (the results are the unpadded ones)."""
    sample = sampling or Sampling(temperature=0.0)
    if allowed is None:
        choose = sample
    else:
        mask = jnp.asarray(allowed, bool)

        def choose(logits, step):
            return sample(jnp.where(mask, logits, -jnp.inf), step)
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    b, t = prompt_ids.shape
    graphdef, state = nnx.split(model)
    width = max(t, pad_to or 0)
    use_cache = dynamic_cache or not frequencies_change(model, t, t + max_new_tokens - 1)
    if use_cache:
        logits, k_cache, v_cache = _prefill(graphdef, state, jnp.pad(prompt_ids, ((0, 0), (0, width - t))),
                                            jnp.int32(t), width + max_new_tokens)
    else:
        padded = jnp.pad(prompt_ids, ((0, 0), (0, width - t + max_new_tokens - 1)))  # [B, W + max_new - 1]
        logits = _last_logits(graphdef, state, padded, jnp.int32(t))
    out, done = [], jnp.zeros((b,), bool)
    for i in range(max_new_tokens):
        token = choose(logits, i)  # [B]
        out.append(token)
        done = done | jnp.isin(token, jnp.asarray(stop_ids, jnp.int32))
        if done_fn is not None:
            done = done | jnp.asarray(done_fn(np.asarray(jnp.stack(out, axis=1))))
        if i + 1 == max_new_tokens or bool(done.all()):
            break
        if use_cache:
            logits, k_cache, v_cache = _step(graphdef, state, token, jnp.int32(t + i), k_cache, v_cache)
        else:  # the scale moved: re-run every position (prompt + tokens so far), as a full recompute does
            padded = padded.at[:, t + i].set(token)
            logits = _last_logits(graphdef, state, padded, jnp.int32(t + i + 1))
    return jnp.stack(out, axis=1)


def greedy_generate_recompute(model: Llama, prompt_ids, max_new_tokens: int) -> jax.Array:
    """The cache-free reference: a full forward over prompt + generated tokens for every new token."""
    ids = jnp.asarray(prompt_ids, jnp.int32)
    graphdef, state = nnx.split(model)
    last_logits = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)[:, -1])
    t = ids.shape[1]
    for _ in range(max_new_tokens):
        ids = jnp.concatenate([ids, jnp.argmax(last_logits(state, ids), -1).astype(jnp.int32)[:, None]], axis=1)
    return ids[:, t:]
