"""Perplexity protocols over tokenized documents.

`truncate` (the paper's Proof-pile tables): the document is cut to the evaluation length L; one forward
over [BOS] + doc[:L-1] (or doc[:L] without a BOS) scores every predicted token.

`sliding` (Press et al. 2022; the paper's GovReport protocol, reference repo `eval/perplexity.py`):
windows start at 0, S, 2S, ...; each is [BOS] + doc[begin:end] with end = min(begin + L - 1, n) (L doc
tokens without a BOS); only the last end - prev_end tokens, which no earlier window scored, count; the
loop stops at the window that reaches the end of the document.

Every window is one forward of exactly L positions (a short last window is padded on the right, which
causal attention cannot see), so one compiled program serves every window and every method at a given
length: the rope enters as (inv_freq, attention_factor) arrays evaluated at the window's real length,
so dynamic methods see the length they would see unpadded.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yarn_jax.config import LlamaConfig
from yarn_jax.data.corpus import Document
from yarn_jax.errors import ConfigError
from yarn_jax.evaluation.methods import Method
from yarn_jax.model import Llama, next_token_log_probs
from yarn_jax.rope import RopeConfig, rope_frequencies
from yarn_jax.sharding.distributed import from_host
from yarn_jax.sharding.params import tree_shardings

PROTOCOLS = ("truncate", "sliding")


@dataclasses.dataclass(frozen=True)
class Window:
    begin: int  # first document token in the window
    end: int  # one past the last
    scored: int  # the last `scored` tokens of the window count


def windows(n_tokens: int, length: int, stride: int, *, bos: bool, protocol: str) -> list[Window]:
    """The windows a protocol evaluates on a document of n_tokens tokens."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "sliding" and not 1 <= stride < length:
        # the next window starts S tokens on and ends S tokens later: with S >= L, the tokens between one
        # window's end and the next one's first predicted token are never scored
        raise ConfigError(f"stride {stride} must be in [1, {length}) for length {length}: every token is scored "
                          "exactly once only then")
    span = length - 1 if bos else length  # document tokens per window
    first_predictable = 0 if bos else 1  # without a BOS the first token of a window has no context
    if protocol == "truncate":
        end = min(span, n_tokens)
        return [Window(0, end, end - first_predictable)]
    out, begin, prev_end = [], 0, 0
    while True:
        end = min(begin + span, n_tokens)
        out.append(Window(begin, end, min(end - prev_end, end - begin - first_predictable)))
        if end == n_tokens:
            return out
        prev_end, begin = end, begin + stride


@dataclasses.dataclass
class Scores:
    """Per-token NLL of the scored tokens of one (document, length, method) cell, and each token's
    position in its window's input (0 = first model position), for the context-use curve."""
    nll: np.ndarray  # [m] float64
    position: np.ndarray  # [m] int

    @property
    def tokens(self) -> int:
        return int(self.nll.size)


class PerplexityScorer:
    """Scores documents under several rope methods with one compiled forward per evaluation length."""

    def __init__(self, module: Llama, bos: int | None, ropes: dict[str, RopeConfig] | None = None):
        """`ropes`: method key -> its rope on this model, already resolved (else each method's rope dict is
        read here, once)."""
        self.config: LlamaConfig = module.config
        self.bos = bos
        self.sharder = module.sharder  # the mesh the model runs on, if any
        graphdef, self._state = nnx.split(module)

        def log_probs(state, ids, inv_freq, factor):  # [L-1]
            return next_token_log_probs(nnx.merge(graphdef, state), ids, frequencies=(inv_freq, factor))[0]

        self._fn = log_probs
        self._jitted: dict = {}  # one program per sequence length
        self._ropes: dict = dict(ropes or {})  # method key -> its RopeConfig on this model (each dict read once)
        self._frequencies: dict = {}

    def update(self, state) -> None:
        """Score with other parameters of the same model (e.g. during training); no recompilation."""
        self._state = state

    def rope(self, method: Method) -> RopeConfig:
        """The method's rope on this model (the model's own for `none`), validated once."""
        if method.key not in self._ropes:
            self._ropes[method.key] = (self.config.with_rope(method.rope, where=f"method {method.label!r}").rope
                                       if method.rope else self.config.rope)
        return self._ropes[method.key]

    def frequencies(self, method: Method, seq_len: int):
        """(inv_freq, attention_factor) as host arrays for a method at a length (cached)."""
        key = (method.key, seq_len)
        if key not in self._frequencies:
            inv_freq, factor = rope_frequencies(self.rope(method), seq_len)
            self._frequencies[key] = (np.asarray(inv_freq), np.asarray(factor))
        return self._frequencies[key]

    def signature(self, method: Method, doc: Document, length: int, stride: int, protocol: str) -> bytes:
        """Bytes that are equal for two methods exactly when they give identical scores on this cell (the
        same frequencies at every window length): lets a run skip e.g. Dynamic-YaRN inside the original
        context, where it is the unscaled rope."""
        lens = sorted({self._input_len(w) for w in self.windows(doc, length, stride, protocol)})
        return b"".join(a.tobytes() + b.tobytes() for n in lens for a, b in [self.frequencies(method, n)])

    def windows(self, doc: Document, length: int, stride: int, protocol: str) -> list[Window]:
        return windows(doc.ids.size, length, stride, bos=self.bos is not None, protocol=protocol)

    def _input_len(self, w: Window) -> int:
        return w.end - w.begin + (self.bos is not None)

    def score(self, doc: Document, length: int, method: Method, *, protocol: str = "truncate",
              stride: int = 256, progress=None) -> Scores:
        """Per-token NLL of a document under a method (`progress(n)` is called per window)."""
        nlls, positions = [], []
        for w in self.windows(doc, length, stride, protocol):
            real = self._input_len(w)
            ids = np.zeros((1, length), np.int32)  # right padding: invisible to the causal real positions
            body = doc.ids[w.begin:w.end]
            ids[0, real - body.size:real] = body
            if self.bos is not None:
                ids[0, 0] = self.bos
            inv_freq, factor = self.frequencies(method, real)
            lp = np.asarray(self._forward(ids, inv_freq, factor), np.float64)
            # lp[i] = log p(ids[i+1] | ids[:i+1]); the scored tokens are the window's last `scored` ones
            targets = np.arange(real - w.scored, real)  # input positions of the scored tokens
            nlls.append(-lp[targets - 1])
            positions.append(targets)
            if progress is not None:
                progress(1)
        return Scores(np.concatenate(nlls), np.concatenate(positions))


    def program(self, shape: tuple[int, int]):
        """The jitted log-prob function for token arrays of `shape` [1, L]: (state, ids, inv_freq, factor)
        -> [L-1]. Under a mesh: parameters as loaded (their logical shardings), tokens over the sequence
        axis, result replicated."""
        shape = tuple(shape)
        if shape not in self._jitted:
            sharder = self.sharder
            if sharder is None:
                self._jitted[shape] = jax.jit(self._fn)
            else:
                rep, tokens = sharder.replicated(), sharder.named(("batch", "length"), shape)
                self._jitted[shape] = jax.jit(self._fn, out_shardings=rep, in_shardings=(
                    tree_shardings(self._state, sharder), tokens, rep, rep))
        return self._jitted[shape]

    def _forward(self, ids: np.ndarray, inv_freq, factor):
        """log p of each next token [L-1]; inputs under a mesh are global arrays built from the host values
        every process holds."""
        sharder = self.sharder
        fn = self.program(ids.shape)
        if sharder is None:
            return fn(self._state, jnp.asarray(ids), inv_freq, factor)
        rep = sharder.replicated()
        return fn(self._state, from_host(ids, sharder.named(("batch", "length"), ids.shape)),
                  from_host(inv_freq, rep), from_host(factor, rep))


def aggregate(cells: list[dict]) -> dict:
    """Perplexity over documents from per-document records {nll_sum, tokens}: `ppl` = exp(mean over
    documents of each document's mean NLL) — the paper's aggregation, the headline — and
    `ppl_token_weighted` = exp(total NLL / total tokens)."""
    doc_means = [c["nll_sum"] / c["tokens"] for c in cells]
    total = sum(c["nll_sum"] for c in cells)
    tokens = sum(c["tokens"] for c in cells)
    return {"ppl": float(np.exp(np.mean(doc_means))), "ppl_token_weighted": float(np.exp(total / tokens)),
            "nll": float(np.mean(doc_means)), "docs": len(cells), "tokens": int(tokens)}


def position_buckets(scores: Scores, length: int, buckets: int) -> tuple[list[float], list[int]]:
    """Sum of NLL and token count per equal-width position bucket over [0, length)."""
    idx = np.minimum(scores.position * buckets // length, buckets - 1)
    sums = np.bincount(idx, weights=scores.nll, minlength=buckets)
    counts = np.bincount(idx, minlength=buckets)
    return sums.tolist(), counts.tolist()
