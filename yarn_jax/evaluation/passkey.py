"""Passkey retrieval (Mohtashami & Jaggi 2023), with the reference repo's prompt (eval/passkey.py).

Prompt lines, joined by newlines: the task description; a garbage prefix; "The pass key is K. Remember
it. K is the pass key."; a garbage suffix; "What is the pass key? The pass key is". Garbage is the
five-sentence filler repeated and cut by characters; its total length is the largest multiple of 128
characters whose prompt still fits the target token count. The key K is uniform in [1, 50000]; trial i
of N puts the key at depth i/(N-1) of the garbage (uniformly spread). Greedy decoding of at most 10 new
tokens; the first integer in the decoded text is compared with K.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from yarn_jax.errors import ConfigError
from yarn_jax.generate import eos_ids, generate_ids
from yarn_jax.model import Llama

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"
STEP = 128  # characters


def needle(key: int) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key."


def prompt_text(key: int, garbage_chars: int, depth: float) -> str:
    garbage = FILLER * (garbage_chars // len(FILLER) + 1)
    split = int(round(garbage_chars * depth))
    return "\n".join([TASK, garbage[:split], needle(key), garbage[:garbage_chars - split], QUESTION])


def prompt_ids(tokenizer, key: int, length: int, depth: float, bos: int | None) -> np.ndarray:
    """Token ids of the longest prompt (garbage in steps of STEP characters) with <= length tokens."""
    def ids(chars):
        return _prompt_tokens(tokenizer, key, chars, depth, bos)

    lo, hi = 0, STEP
    while len(ids(hi)) <= length:  # grow, then binary-search the multiple of STEP
        lo, hi = hi, hi * 2
    if len(ids(lo)) > length:
        raise _too_short(length, len(ids(lo)))
    while hi - lo > STEP:
        mid = (lo + hi) // 2 // STEP * STEP
        lo, hi = (mid, hi) if len(ids(mid)) <= length else (lo, mid)
    return np.asarray(ids(lo), np.int32)


def check_lengths(tokenizer, lengths, n_trials: int, seed: int, bos: int | None) -> None:
    """ConfigError now for a passkey length too short for one of its trials' prompts without any filler
    (cheap: short prompts only), so a run never fails there after its perplexity cells."""
    for n in lengths:
        for depth, key in trials(n_trials, seed, n):
            need = len(_prompt_tokens(tokenizer, key, 0, depth, bos))
            if need > n:
                raise _too_short(n, need)


def _prompt_tokens(tokenizer, key: int, garbage_chars: int, depth: float, bos: int | None) -> list[int]:
    body = tokenizer.encode(prompt_text(key, garbage_chars, depth), add_special_tokens=False).ids
    return ([bos] if bos is not None else []) + body


def _too_short(length: int, need: int) -> ConfigError:
    return ConfigError(f"passkey_lengths: {length} tokens is too short for the passkey prompt (it needs {need} "
                       "tokens without any filler)")


def first_integer(text: str) -> int | None:
    m = re.search(r"\d+", text)
    return int(m.group()) if m else None


@dataclasses.dataclass
class Trial:
    length: int
    depth: float
    key: int
    prompt_tokens: int
    answer: str
    correct: bool


def trials(n: int, seed: int, length: int) -> list[tuple[float, int]]:
    """(depth, key) for n trials at one length: depths spread uniformly over [0, 1], keys U[1, 50000]."""
    rng = np.random.default_rng([seed, length])
    depths = [i / (n - 1) if n > 1 else 0.5 for i in range(n)]
    return [(d, int(rng.integers(1, 50001))) for d in depths]


def run_trial(model: Llama, tokenizer, length: int, depth: float, key: int, *, bos: int | None,
              max_new_tokens: int = 10, dynamic_cache: bool = False) -> Trial:
    ids = prompt_ids(tokenizer, key, length, depth, bos)
    stop = eos_ids(model)
    def answered(tokens):  # an integer followed by something else: the answer cannot change any more
        return [re.search(r"\d+\D", tokenizer.decode(row.tolist(), skip_special_tokens=True)) is not None
                for row in tokens]

    out = np.asarray(generate_ids(model, ids[None], max_new_tokens, stop, done_fn=answered,
                                     dynamic_cache=dynamic_cache))[0]
    answer = tokenizer.decode(out.tolist(), skip_special_tokens=True)
    return Trial(length, depth, key, int(ids.size), answer, first_integer(answer) == key)


def passkey_context(accuracy_by_length: dict[int, float], threshold: float = 0.8) -> tuple[int | None, float | None]:
    """(largest length with accuracy >= threshold, mean accuracy over lengths up to it) — paper Table 5."""
    ok = [n for n, a in sorted(accuracy_by_length.items()) if a >= threshold]
    if not ok:
        return None, None
    ctx = ok[-1]
    upto = [a for n, a in accuracy_by_length.items() if n <= ctx]
    return ctx, float(np.mean(upto))
