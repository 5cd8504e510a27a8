"""Public entry point: `yarn_jax.from_pretrained(path_or_name, rope_scaling=None, dtype="float32")` and the
model it returns — logits, log-probabilities, perplexity, generation, the tokenizer with the model's BOS rule.

    import yarn_jax
    model = yarn_jax.from_pretrained("smollm2", rope_scaling={"rope_type": "yarn", "factor": 2.0,
                                                              "original_max_position_embeddings": 8192})
    model.generate("The capital of France is", max_new_tokens=8)
    model.perplexity(yarn_jax.assets.play_text("hamlet"), length=16384)
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from yarn_jax.data.corpus import Document
from yarn_jax.errors import ConfigError
from yarn_jax.evaluation.methods import Method
from yarn_jax.evaluation.perplexity import PerplexityScorer
from yarn_jax.generate import Sampling, eos_ids, generate_ids
from yarn_jax.progress import Progress
from yarn_jax.pretrained import LoadedModel, load_pretrained


class PretrainedModel(LoadedModel):
    """A loaded LLaMA (`LoadedModel`: config, module, logits, tokenizer, encode/decode, with_rope,
    save_pretrained) with what users do with one: `log_probs`, `perplexity` (eval's protocols) and
    `generate` (greedy or sampled)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._scorers: dict = {}  # BOS id (or None) -> its perplexity scorer (compiled programs kept)

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
        if bos not in self._scorers:
            self._scorers[bos] = PerplexityScorer(self.module, bos=bos)
        return self._scorers[bos]

    def log_probs(self, text_or_ids) -> np.ndarray:
        """[T-1] float64: log p(ids[t+1] | ids[:t+1]) for every token after the first, in one forward
        through the chunked head (no [T, vocab] logits). Text is encoded with the BOS rule."""
        ids = self._ids(text_or_ids)
        if ids.size < 2:
            raise ConfigError("log_probs: need at least 2 tokens (the first has no context)")
        scores = self._scorer().score(Document("input", ids), ids.size, Method("model", None), protocol="truncate")
        return -scores.nll

    def perplexity(self, text_or_ids, length: int | None = None, protocol: str = "truncate", stride: int = 256,
                   bos: bool = True, progress: bool = True) -> float:
        """exp(mean NLL per token) of a text (or ids without BOS), as eval.py computes it: `truncate` (the
        default, as eval's) scores the first `length` positions in one forward; `sliding` windows of `length`
        positions every `stride` tokens, each token scored once with as much context as the window gives
        (about (tokens - length) / stride forwards of `length`: a progress line per window). Default length:
        the whole input in one window. Each window starts with the model's BOS when it has one (and `bos`)."""
        if protocol not in ("truncate", "sliding"):
            raise ConfigError(f"protocol={protocol!r}: choose truncate or sliding")
        ids = self._ids(text_or_ids, bos=False)
        first = self.config.bos_token_id if bos else None
        length = length or ids.size + (first is not None)
        if length < 2:
            raise ConfigError(f"length={length}: need at least 2 positions")
        stride = min(stride, length - 1)
        scorer, doc = self._scorer(first), Document("input", ids)
        count = len(scorer.windows(doc, length, stride, protocol))
        with Progress(count, f"perplexity ({protocol}, length {length})", unit="window",
                      enabled=progress and count > 1) as bar:
            nll = scorer.score(doc, length, Method("model", None), protocol=protocol, stride=stride,
                               progress=bar.update).nll
        return float(np.exp(nll.mean()))

    def generate(self, prompt, max_new_tokens: int = 64, *, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int = 0, stop=None, dynamic_cache: bool = False):
        """Continue a prompt: text (encoded with the BOS rule; returns the new text) or ids (returns the new ids).
        Greedy at temperature 0 (the default), else sampled (top_k, top_p, seed). Stops at the model's EOS,
        or at any of `stop`: token ids, or strings (the text is cut before the first one found)."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
        sampling = Sampling(temperature, top_k, top_p, seed)
        ids = self._ids(prompt)
        stops = list(stop) if isinstance(stop, (list, tuple)) else [] if stop is None else [stop]
        for x in stops:
            if isinstance(x, str) and not x:
                raise ConfigError("stop: an empty string is found at once and would cut the whole completion; "
                                  "give non-empty strings or token ids")
            if isinstance(x, bool) or not isinstance(x, (str, int, np.integer)):
                raise ConfigError(f"stop: {x!r} is neither a string nor a token id")
            if not isinstance(x, str) and not 0 <= int(x) < self.config.vocab_size:
                raise ConfigError(f"stop: token id {x} is outside [0, vocab_size={self.config.vocab_size})")
        stop_ids = [x for x in stops if isinstance(x, (int, np.integer))]
        stop_texts = [x for x in stops if isinstance(x, str)]
        if stop is None:
            stop_ids = list(eos_ids(self.module))
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



def from_pretrained(path: str | os.PathLike, rope_scaling: Mapping[str, Any] | None = None, dtype: str = "float32",
                    **settings) -> PretrainedModel:
    """Load an HF directory, `.gguf` file or yarn_jax checkpoint, or a bundled model by name (`smollm2`);
    `rope_scaling` (an HF-style dict) overrides the checkpoint's. `settings`: param_dtype, attention_backend,
    remat, sharder (a mesh: the parameters are read straight into their shards), splash_blocks, step (of a
    yarn_jax checkpoint) — as `pretrained.load_pretrained`."""
    return load_pretrained(path, rope_scaling, dtype, cls=PretrainedModel, **settings)
