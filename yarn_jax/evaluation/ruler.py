"""RULER-style synthetic long-context tasks (Hsieh et al. 2024, "RULER: What's the Real Context Size of
Your Long-Context Language Models?") generated offline, and the YaRN reference repo's hard passkey
(`eval/passkey_hard.py`: several numbered pass keys in real text, one asked for).

A task turns (seed, trial, haystack size, depth) into `Parts`: the context (haystack with the needles),
the instruction and question around it, the text the answer continues from, the expected answers and a
generation budget. Everything random is drawn from `numpy.random.default_rng([seed, task, trial])`
before the haystack size is known, so growing the haystack never changes the needles; `fit` then finds
the largest haystack (whole units: filler repeats, lines of text, or distractor needles) whose rendered
prompt plus the generation budget fits the target length. The wording is this project's own, in RULER's
structure: scores compare methods and lengths here, not with published RULER tables.

Scoring: RULER's string_match_all — the fraction of the expected answers found (case-insensitive) in the
generated text; the hard passkey scores 1 when the first integer generated is the asked key.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
import zlib
from collections import Counter
from typing import Callable

import numpy as np

from yarn_jax.errors import ConfigError
from yarn_jax.evaluation import passkey

VERSION = 1  # of the generators' output: part of every cell's key (bump it when a prompt changes)
FILLER = passkey.FILLER  # RULER's noise haystack is the passkey test's filler
NIAH_INSTRUCTION = ("Special {kinds} are hidden in the long text below, each one tied to a key. Read the whole text "
                    "carefully and remember them: a question about them follows the text.")


@dataclasses.dataclass(frozen=True)
class Parts:
    """One prompt, before the chat template: instruction, context, question; then the answer prefix."""

    instruction: str
    context: str
    question: str
    answer_prefix: str
    answers: tuple[str, ...]
    depth: float | None  # where the (first) needle sits in the haystack, 0 = start; None: no single needle
    units: int  # haystack units used


@dataclasses.dataclass(frozen=True)
class Vocab:
    """Word lists drawn from the haystack text (no word list shipped): keys, values and extraction words."""

    words: tuple[str, ...]

    @classmethod
    def from_lines(cls, lines: list[str], min_count: int = 3) -> "Vocab":
        counts = Counter(w for line in lines for w in re.findall(r"[a-z]{5,10}", line.lower()))
        words = tuple(sorted(w for w, c in counts.items() if c >= min_count))
        if len(words) < 500:
            raise ConfigError(f"ruler_haystack: its text yields {len(words)} distinct words of 5-10 letters "
                              "seen 3+ times; the tasks need 500 (use a longer text)")
        return cls(words)

    def draw(self, rng: np.random.Generator, n: int) -> list[str]:
        """n distinct words; the first k of them do not depend on n (the same random stream is used)."""
        if n > len(self.words):
            raise ConfigError(f"ruler_haystack: {n} distinct words needed, its text has {len(self.words)}")
        return [self.words[i] for i in rng.permutation(len(self.words))[:n]]


@dataclasses.dataclass(frozen=True)
class Synthetic:
    """A task: how to build its parts, how many tokens an answer may take, and how it is scored."""

    name: str
    build: Callable  # (rng, units, depth, src: Sources, length) -> Parts
    max_new_tokens: int
    has_depth: bool = True
    score: str = "all"  # "all": string_match_all; "first_int": the first integer equals the answer
    digits_only: bool = False  # decode only digits, whitespace and the end token (the hard passkey's rule)


@dataclasses.dataclass(frozen=True)
class Sources:
    """What generation draws from: the haystack text's lines and its words."""

    lines: tuple[str, ...]
    vocab: Vocab


# ----------------------------------------------------------------------------------------------------------
# Values, keys, haystacks.


def _number(rng) -> str:
    return str(int(rng.integers(1_000_000, 10_000_000)))  # 7 digits


def _uuid(rng) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _value(kind: str, rng, vocab: Vocab) -> str:
    return {"number": _number, "uuid": _uuid}[kind](rng) if kind != "word" else vocab.draw(rng, 1)[0]


def _key(rng, vocab: Vocab) -> str:
    return "-".join(vocab.draw(rng, 2))


def _insert(pieces: list[str], needles: list[tuple[float, str]], sep: str) -> str:
    """Pieces with each needle placed at the piece boundary nearest to `depth` of the haystack's characters
    (0: before everything, 1: after everything)."""
    ends = np.cumsum([len(x) + len(sep) for x in pieces]) if pieces else np.zeros(0)
    bounds = np.concatenate([[0.0], ends / ends[-1]]) if pieces else np.zeros(1)  # boundary i: before piece i
    out = list(pieces)
    at = [(int(np.argmin(np.abs(bounds - d))), k, text) for k, (d, text) in enumerate(needles)]
    for i, _, text in sorted(at, key=lambda x: (-x[0], -x[1])):  # back to front: earlier indices stay valid
        out.insert(i, text)
    return sep.join(out)


def _noise(units: int) -> list[str]:
    return [FILLER] * units


def _text(src: Sources, start: int, units: int) -> list[str]:
    n = len(src.lines)
    return [src.lines[(start + i) % n] for i in range(units)]


_KIND_PLURAL = {"number": "numbers", "uuid": "UUIDs", "word": "words"}


def _niah(haystack: str, key_kind: str = "word", value_kind: str = "number", distractors: int = 0,
          values: int = 1, queries: int = 1) -> Callable:
    """Needle-in-a-haystack: `queries` keys asked (multi-query), `values` values per asked key (multi-value),
    `distractors` needles of other keys (multi-key; haystack `needles`: the haystack is distractor needles)."""

    def build(rng, units, depth, src: Sources, length: int) -> Parts:
        vocab = src.vocab
        new_key = (lambda: _uuid(rng)) if key_kind == "uuid" else (lambda: _key(rng, vocab))
        asked = [new_key() for _ in range(queries)]
        needles = [(k, _value(value_kind, rng, vocab)) for k in asked for _ in range(values)]
        others = [(new_key(), _value(value_kind, rng, vocab)) for _ in range(distractors)]
        n_extra = len(needles) - 1 + len(others)
        depths = [depth] + list(rng.random(n_extra))
        start = int(rng.integers(0, len(src.lines)))
        kind = _KIND_PLURAL[value_kind][:-1] if value_kind != "uuid" else "UUID"

        def sentence(k, v):
            return f"Remember this special magic {kind} for {k}: {v}."

        if haystack == "needles":  # every haystack unit is one more distractor needle
            pieces = [sentence(new_key(), _value(value_kind, rng, vocab)) for _ in range(units)]
        elif haystack == "noise":
            pieces = _noise(units)
        else:
            pieces = _text(src, start, units)
        sep = " " if haystack != "text" else "\n"
        context = _insert(pieces, [(d, sentence(k, v)) for d, (k, v) in zip(depths, needles + others)], sep)
        plural = _KIND_PLURAL[value_kind]
        keys_text = ", ".join(asked[:-1]) + f" and {asked[-1]}" if queries > 1 else asked[0]
        if queries == 1 and values == 1:
            question = f"Which special magic {kind} was given for {keys_text} in the text above?"
            prefix = f"The special magic {kind} given for {keys_text} in the text above is"
        else:
            question = f"List every special magic {kind} given for {keys_text} in the text above."
            prefix = f"The special magic {plural} given for {keys_text} in the text above are"
        return Parts(NIAH_INSTRUCTION.format(kinds=plural), context, question, prefix,
                     tuple(v for _, v in needles), depth, units)

    return build


def _variable_tracking(hops: int = 4) -> Callable:
    """One chain VAR A = value, VAR B = VAR A, ... (hops assignments after the first) spread over a noise
    haystack from the trial's depth on; every variable of the chain holds the value."""

    def build(rng, units, depth, src: Sources, length: int) -> Parts:
        names = []
        while len(names) < hops + 1:
            name = "".join(chr(ord("A") + int(i)) for i in rng.integers(0, 26, 5))
            if name not in names:
                names.append(name)
        value = str(int(rng.integers(10_000, 100_000)))
        statements = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
        span = 1.0 - depth
        depths = [depth + span * i / (hops + 1) for i in range(hops + 1)]  # in order, from the depth on
        context = _insert(_noise(units), list(zip(depths, statements)), " ")
        example = ("For example, in 'VAR QWXYZ = 31415. Blah. VAR PLMOK = VAR QWXYZ. Blah. VAR ZZTOP = 27182.' "
                   "the variables assigned the value 31415 are QWXYZ and PLMOK.")
        return Parts("Memorize and track the chain of variable assignments hidden in the text below. " + example,
                     context, f"Find all variables that are assigned the value {value} in the text above.",
                     f"The variables assigned the value {value} in the text above are:", tuple(names), depth, units)

    return build


def _common_words(common: int = 10, max_freq: int = 30, rare_freq: int = 3) -> Callable:
    """A numbered list of words: `common` words f times each (f = length / 200 in [10, 30], so the common
    words take about a third of any length), `units` rare words `rare_freq` times each, shuffled; the answers
    are the common words (RULER's cwe, whose frequency is also lowered at short lengths)."""

    def build(rng, units, depth, src: Sources, length: int) -> Parts:
        common_freq = int(np.clip(length // 200, 10, max_freq))
        words = src.vocab.draw(rng, common + units)
        seq = words[:common] * common_freq + words[common:] * rare_freq
        order = rng.permutation(len(seq))
        context = " ".join(f"{i + 1}. {seq[j]}" for i, j in enumerate(order))
        return Parts("Below is a numbered list of words. Some words appear far more often than the others.",
                     context, f"What are the {common} most common words in the list above?",
                     f"The {common} most common words in the list above are:", tuple(words[:common]), None, units)

    return build


def _frequent_words(top: int = 3, alpha: float = 2.0) -> Callable:
    """Coded words (random letters) in Zipf(alpha) proportions, `units` words in all; the answers are the `top`
    most frequent (RULER's fwe). Counts are set, not sampled, so the top ones are never tied."""

    def build(rng, units, depth, src: Sources, length: int) -> Parts:
        size = max(top + 1, min(units // 2, 1000))
        codes = []
        while len(codes) < size:
            c = "".join(chr(ord("a") + int(i)) for i in rng.integers(0, 26, 5))
            if c not in codes:
                codes.append(c)
        weights = 1.0 / np.arange(1, size + 1) ** alpha
        counts = np.maximum(1, np.floor(units * weights / weights.sum())).astype(int)
        seq = [c for c, n in zip(codes, counts) for _ in range(n)]
        seq = [seq[i] for i in rng.permutation(len(seq))]
        context = " ".join(w if (i + 1) % 10 else w + " ...." for i, w in enumerate(seq))
        return Parts("Read the coded text below and keep track of how often each coded word appears.",
                     context, f"What are the {top} most frequently appearing coded words in the text above?",
                     f"The {top} most frequently appearing coded words in the text above are:",
                     tuple(codes[:top]), None, units)

    return build


def ordinal(i: int) -> str:
    suffix = "th" if 10 <= i % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(i % 10, "th")
    return f"{i}{suffix}"


def _passkey_hard(keys: int = 4) -> Callable:
    """The YaRN repo's hard passkey: `keys` numbered pass keys U[1, 50000] in real text, one asked; here the
    asked key sits at the trial's depth, the others at random depths."""

    def build(rng, units, depth, src: Sources, length: int) -> Parts:
        values = [int(v) for v in rng.integers(1, 50_001, keys)]
        asked = int(rng.integers(0, keys))
        depths = list(rng.random(keys))
        depths[asked] = depth
        start = int(rng.integers(0, len(src.lines)))
        lines = [f"The {ordinal(i + 1)} pass key is {v}. Remember it. {v} is the {ordinal(i + 1)} pass key."
                 for i, v in enumerate(values)]
        context = _insert(_text(src, start, units), list(zip(depths, lines)), "\n")
        return Parts(passkey.TASK, context,
                     f"What is the {ordinal(asked + 1)} pass key?", f"The {ordinal(asked + 1)} pass key is",
                     (str(values[asked]),), depth, units)

    return build


TASKS: dict[str, Synthetic] = {t.name: t for t in (
    Synthetic("niah_single_1", _niah("noise", value_kind="number"), 32),
    Synthetic("niah_single_2", _niah("text", value_kind="word"), 32),
    Synthetic("niah_single_3", _niah("text", value_kind="uuid"), 48),
    Synthetic("niah_multikey_1", _niah("text", distractors=3), 32),
    Synthetic("niah_multikey_2", _niah("needles"), 32),
    Synthetic("niah_multikey_3", _niah("needles", key_kind="uuid", value_kind="uuid"), 48),
    Synthetic("niah_multivalue", _niah("text", values=4), 64),
    Synthetic("niah_multiquery", _niah("text", queries=4), 64),
    Synthetic("vt", _variable_tracking(), 48),
    Synthetic("cwe", _common_words(), 96, has_depth=False),
    Synthetic("fwe", _frequent_words(), 32, has_depth=False),
    Synthetic("passkey_hard", _passkey_hard(), 10, score="first_int", digits_only=True),
)}


def task_names(spec: list[str]) -> list[str]:
    """`all` or names -> the task names in TASKS order (ConfigError naming an unknown one)."""
    names = list(TASKS) if "all" in spec else spec
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ConfigError(f"ruler: unknown task(s) {unknown}; tasks: all, {', '.join(TASKS)}")
    return [n for n in TASKS if n in names]


def trial_seed(seed: int, task: str, length: int, trial: int) -> list[int]:
    return [seed, zlib.crc32(task.encode()), length, trial]


def depths(n: int) -> list[float]:
    """Trial depths spread uniformly over [0, 1] (the passkey test's rule)."""
    return [i / (n - 1) if n > 1 else 0.5 for i in range(n)]


def fit(task: Synthetic, seed: list[int], depth: float, src: Sources, count_tokens: Callable[[Parts], int],
        length: int) -> tuple[Parts, int]:
    """The task's parts with the most haystack units whose prompt tokens + max_new_tokens <= length, and that
    token count. ConfigError when even an empty haystack does not fit."""
    budget = length - task.max_new_tokens

    def make(units: int) -> tuple[Parts, int]:
        parts = task.build(np.random.default_rng(seed), units, depth, src, length)
        return parts, count_tokens(parts)

    lo, (best, n) = 0, make(0)
    if n > budget:
        raise ConfigError(f"ruler_lengths: {length} tokens is too short for task {task.name!r} (its prompt needs "
                          f"{n} tokens with an empty haystack, plus {task.max_new_tokens} to answer)")
    one = make(1)[1] - n  # tokens per unit, to start near the answer
    hi = max(2, int(1.2 * (budget - n) / max(one, 1)) + 1)
    while True:
        parts, m = make(hi)
        if m > budget:
            break
        lo, best, n, hi = hi, parts, m, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        parts, m = make(mid)
        if m <= budget:
            lo, best, n = mid, parts, m
        else:
            hi = mid
    return best, n


def score(task: Synthetic, answers: tuple[str, ...], generated: str) -> float:
    """RULER's string_match_all (fraction of answers found, case-insensitive), or the first integer's match."""
    if task.score == "first_int":
        m = re.search(r"\d+", generated)
        return float(m is not None and m.group() == answers[0])
    text = generated.lower()
    return float(np.mean([a.lower() in text for a in answers]))
