"""Public entry point: `yarn_jax.from_pretrained(path_or_name, rope_scaling=None, dtype="float32")` and the
model it returns — logits, log-probabilities, perplexity, generation, the tokenizer with the model's BOS rule.

    import yarn_jax
    model = yarn_jax.from_pretrained("smollm2", rope_scaling={"rope_type": "yarn", "factor": 2.0,
                                                              "original_max_position_embeddings": 8192})
    model.generate("The capital of France is", max_new_tokens=8)
    model.perplexity(open("hamlet.txt").read(), length=16384)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yarn_jax.attention.kernels import SplashBlocks
from yarn_jax.checkpoint import open_checkpoint, save_hf_checkpoint
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import ConfigError
from yarn_jax.loading import load_model
from yarn_jax.model import Llama, model_params
from yarn_jax.sharding.rules import Sharder


class PretrainedModel:
    """A loaded LLaMA: `.config` (LlamaConfig), `.module` (the NNX Llama), `.logits(input_ids)`."""

    def __init__(self, module: Llama, source: str | None = None, tokenizer_dir: str | None = None):
        self.module = module
        self.config: LlamaConfig = module.config
        self.source = source
        self.tokenizer_dir = tokenizer_dir
        self._graphdef, self._state = nnx.split(module)
        self._logits = jax.jit(lambda state, ids, pos: nnx.merge(self._graphdef, state)(ids, pos))
        self._tokenizer = None
        self._scorers: dict = {}  # BOS id (or None) -> its perplexity scorer (compiled programs kept)

    @property
    def sharder(self) -> Sharder | None:
        """The mesh (and rules) the parameters are sharded over and the model runs on, if any."""
        return self.module.sharder

    def logits(self, input_ids, positions=None) -> jax.Array:
        """input_ids int [B, T] (or [T]) -> float32 logits [B, T, vocab] (or [T, vocab])."""
        ids = np.asarray(input_ids)  # checked in its own dtype: int64 ids must not wrap into valid int32 ones
        squeeze = ids.ndim == 1
        if squeeze:
            ids = ids[None]
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer) or 0 in ids.shape:
            raise ConfigError(f"input_ids must be a non-empty integer array [B, T], got {ids.dtype} {ids.shape}")
        lo, hi = int(ids.min()), int(ids.max())  # an embedding lookup would clamp silently
        if lo < 0 or hi >= self.config.vocab_size:
            raise ConfigError(f"input_ids must lie in [0, vocab_size={self.config.vocab_size}), "
                              f"got values in [{lo}, {hi}]")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)
        out = self._logits(self._state, ids.astype(jnp.int32), jnp.asarray(positions, jnp.int32))
        return out[0] if squeeze else out

    def with_rope(self, rope_scaling: Mapping[str, Any] | None, where: str = "rope_scaling") -> "PretrainedModel":
        """The same weights (shared, not copied) under another rope configuration (an HF-style dict)."""
        module = self.module.replace(config=self.config.with_rope(rope_scaling, where=where))
        return PretrainedModel(module, source=self.source, tokenizer_dir=self.tokenizer_dir)

    def tokenizer(self):
        """The HF fast tokenizer (tokenizers library) saved next to the weights, if any."""
        from tokenizers import Tokenizer

        if self._tokenizer is not None:
            return self._tokenizer
        path = Path(self.tokenizer_dir or "") / "tokenizer.json"
        if self.tokenizer_dir is None or not path.exists():
            raise ConfigError(f"{self.source}: no tokenizer.json next to the checkpoint")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises a bare Exception on malformed files
            raise ConfigError(f"{path}: not a readable tokenizer ({' '.join(str(e).split())[:200]})") from None
        check_tokenizer_vocab(tok, self.config.vocab_size, str(path))
        self._tokenizer = tok
        return tok

    def encode(self, text: str, bos: bool = True) -> np.ndarray:
        """Token ids [T] int32 of `text`, with the model's BOS first when it has one (and `bos`) — the rule
        eval.py applies (`bos: auto`); the tokenizer's own special tokens are not added."""
        ids = self.tokenizer().encode(text, add_special_tokens=False).ids
        first = self.config.bos_token_id
        return np.asarray(([first] if bos and first is not None else []) + ids, np.int32)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer().decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                       skip_special_tokens=skip_special_tokens)

    def _ids(self, text_or_ids, bos: bool = True) -> np.ndarray:
        """[T] ids from text (encoded with the BOS rule) or from ids (as given, checked)."""
        if isinstance(text_or_ids, str):
            return self.encode(text_or_ids, bos=bos)
        ids = np.asarray(text_or_ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or ids.size == 0:
            raise ConfigError(f"expected text or a non-empty 1-D array of token ids, got {ids.dtype} {ids.shape}")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise ConfigError(f"token ids must lie in [0, vocab_size={self.config.vocab_size}), got values in "
                              f"[{ids.min()}, {ids.max()}]")
        return ids.astype(np.int32)

    def _scorer(self, bos: int | None = None):
        from yarn_jax.evaluation.perplexity import PerplexityScorer

        if bos not in self._scorers:
            self._scorers[bos] = PerplexityScorer(self.module, bos=bos)
        return self._scorers[bos]

    def log_probs(self, text_or_ids) -> np.ndarray:
        """[T-1] float64: log p(ids[t+1] | ids[:t+1]) for every token after the first, in one forward
        through the chunked head (no [T, vocab] logits). Text is encoded with the BOS rule."""
        from yarn_jax.data.corpus import Document
        from yarn_jax.evaluation.methods import Method

        ids = self._ids(text_or_ids)
        if ids.size < 2:
            raise ConfigError("log_probs: need at least 2 tokens (the first has no context)")
        scores = self._scorer().score(Document("input", ids), ids.size, Method("model", None), protocol="truncate")
        return -scores.nll

    def perplexity(self, text_or_ids, length: int | None = None, protocol: str = "sliding", stride: int = 256,
                   bos: bool = True) -> float:
        """exp(mean NLL per token) of a text (or ids without BOS), as eval.py computes it: `truncate` scores the
        first `length` positions in one forward; `sliding` (default) windows of `length` positions every
        `stride` tokens, each token scored once with as much context as the window gives. Default length:
        the whole input in one window. Each window starts with the model's BOS when it has one (and `bos`)."""
        from yarn_jax.data.corpus import Document
        from yarn_jax.evaluation.methods import Method

        ids = self._ids(text_or_ids, bos=False)
        first = self.config.bos_token_id if bos else None
        length = length or ids.size + (first is not None)
        if length < 2:
            raise ConfigError(f"length={length}: need at least 2 positions")
        stride = min(stride, length - 1)
        nll = self._scorer(first).score(Document("input", ids), length, Method("model", None), protocol=protocol, stride=stride).nll
        return float(np.exp(nll.mean()))

    def generate(self, prompt, max_new_tokens: int = 64, *, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int = 0, stop=None, dynamic_cache: bool = False):
        """Continue a prompt: text (encoded with the BOS rule; returns the new text) or ids (returns the new ids).
        Greedy at temperature 0 (the default), else sampled (top_k, top_p, seed). Stops at the model's EOS,
        or at any of `stop`: token ids, or strings (the text is cut before the first one found)."""
        from yarn_jax.generate import Sampling, generate_ids

        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
        sampling = Sampling(temperature, top_k, top_p, seed)
        ids = self._ids(prompt)
        stops = list(stop) if isinstance(stop, (list, tuple)) else [] if stop is None else [stop]
        stop_ids = [x for x in stops if isinstance(x, (int, np.integer))]
        stop_texts = [x for x in stops if isinstance(x, str)]
        if stop is None:
            eos = self.config.eos_token_id
            stop_ids = [] if eos is None else list(eos) if isinstance(eos, tuple) else [eos]
        done_fn = None
        if stop_texts:
            def done_fn(rows):
                return [any(t in self.decode(r) for t in stop_texts) for r in rows]

        out = np.asarray(generate_ids(self.module, ids[None], max_new_tokens, tuple(stop_ids), sampling=sampling,
                                      done_fn=done_fn, dynamic_cache=dynamic_cache))[0]
        if not isinstance(prompt, str):
            return out
        text = self.decode(out)
        cut = [text.index(t) for t in stop_texts if t in text]
        return text[:min(cut)] if cut else text

    def params(self) -> dict[tuple[str, ...], np.ndarray]:
        return {k: np.asarray(v) for k, v in model_params(self.module).items()}

    def save_pretrained(self, path: str | os.PathLike, dtype: str = "float32") -> Path:
        """Write an HF directory (config.json with this model's rope configuration, safetensors)."""
        return save_hf_checkpoint(path, self.config, self.params(), dtype=dtype, tokenizer_dir=self.tokenizer_dir)


def check_tokenizer_vocab(tok, vocab_size: int, where: str) -> None:
    """Every id the tokenizer can emit (its vocabulary and added tokens) must exist in the embedding."""
    top = max(tok.get_vocab(with_added_tokens=True).values(), default=-1)
    if top >= vocab_size:
        raise ConfigError(f"{where}: the tokenizer emits ids up to {top}, but the model's embedding has "
                          f"vocab_size={vocab_size} rows; this tokenizer does not belong to this model")


def from_pretrained(
    path: str | os.PathLike,
    rope_scaling: Mapping[str, Any] | None = None,
    dtype: str = "float32",
    *,
    param_dtype: str = "float32",
    attention_backend: str = "auto",
    remat: str = "none",
    sharder: Sharder | None = None,
    splash_blocks: SplashBlocks | None = None,
    step: int | None = None,
) -> PretrainedModel:
    """Load an HF directory, `.gguf` file or yarn_jax checkpoint (its latest step, or `step`), or a bundled
    model by name (`smollm2`, fetched on first use); `rope_scaling` (an HF-style dict) overrides the
    checkpoint's.

    `dtype` is the compute dtype; parameters are stored in `param_dtype`. With a `sharder` (a mesh and
    its rules) the model runs on that mesh and every parameter is read straight into its shards
    (`loading.load_model`).
    """
    from yarn_jax.assets import resolve_model
    from yarn_jax.platforms import skip_absent_tpu

    skip_absent_tpu()  # libtpu for ahead-of-time compiles on a machine without a TPU: stay on the CPU, quietly
    path = resolve_model(os.fspath(path))
    with open_checkpoint(path, step) as source:
        cfg = source.config
        if rope_scaling is not None:
            cfg = cfg.with_rope(rope_scaling, where="rope_scaling argument")
        module = load_model(source, cfg, sharder=sharder, dtype=dtype, param_dtype=param_dtype,
                            attention_backend=attention_backend, remat=remat, splash_blocks=splash_blocks)
        return PretrainedModel(module, source=os.fspath(path), tokenizer_dir=source.tokenizer_dir)
