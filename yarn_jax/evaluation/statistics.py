"""95 % intervals for evaluation summaries, and paired differences between methods.

Perplexity: a two-stage percentile bootstrap (documents, then blocks of consecutive positions within each
document — the cells' position buckets), so one long document still gets an interval from how its
NLL varies along the text. The statistic is the headline's: mean over documents of each document's mean
NLL (exp of it for perplexity). Accuracies (passkey, retrieval tasks): the Wilson score interval of the
mean score over n trials (a bootstrap of 10 correct trials would say [1, 1]). Differences between two
methods evaluated on the same documents or trials: the paired bootstrap — both methods resampled with
the same indices — and a difference is "resolved" when its interval excludes 0 and the difference is
larger than float32 rounding (`resolved`: relative 1e-5; two programs computing the same numbers in a
different order, e.g. a shared prefix and a separate forward, differ by about 1e-7).

Everything is a pure function of its inputs and a seed (`numpy.random.default_rng([seed, ...])`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

LEVEL = 0.95
N_BOOT = 2000


@dataclasses.dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


NUMERICAL_RTOL = 1e-5  # differences below this, relative to the values compared, are rounding


def resolved(delta: float, interval: Interval, scale: float) -> bool:
    """A difference is resolved when its interval excludes 0 and it exceeds rounding (|delta| > 1e-5 * scale,
    `scale` the magnitude of the values compared)."""
    return interval.excludes_zero() and abs(delta) > NUMERICAL_RTOL * abs(scale)


def _percentiles(draws: np.ndarray, level: float) -> Interval:
    a = (1 - level) / 2
    lo, hi = np.quantile(draws, [a, 1 - a])
    return Interval(float(lo), float(hi))


def _block_draws(sums: np.ndarray, counts: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Resampling indices of the two-stage bootstrap for D documents of B blocks: [n_boot, D] documents,
    [n_boot, D, B] blocks (only blocks holding tokens are drawn)."""
    d, b = sums.shape
    docs = rng.integers(0, d, size=(n_boot, d))
    valid = counts > 0  # [D, B]
    n_valid = valid.sum(axis=1)  # blocks per document
    order = np.argsort(~valid, axis=1, kind="stable")  # each document's valid blocks first
    pick = (rng.random((n_boot, d, b)) * n_valid[docs][..., None]).astype(np.int64)
    blocks = np.take_along_axis(order[docs], pick, axis=2)  # [n_boot, D, B]
    return docs, blocks


def _doc_mean_nll(sums, counts, docs, blocks) -> np.ndarray:
    """[n_boot] mean over resampled documents of each one's mean NLL over its resampled blocks."""
    s = np.take_along_axis(sums[docs], blocks, axis=2).sum(axis=2)
    c = np.take_along_axis(counts[docs], blocks, axis=2).sum(axis=2)
    return (s / c).mean(axis=1)


def nll_interval(sums, counts, *, seed: int = 0, n_boot: int = N_BOOT, level: float = LEVEL) -> Interval:
    """Interval of the mean-over-documents NLL from per-document block sums and token counts [D, B]."""
    sums, counts = np.asarray(sums, np.float64), np.asarray(counts, np.float64)
    docs, blocks = _block_draws(sums, counts, n_boot, np.random.default_rng([seed, 1]))
    return _percentiles(_doc_mean_nll(sums, counts, docs, blocks), level)


def ppl_interval(sums, counts, **kw) -> Interval:
    iv = nll_interval(sums, counts, **kw)
    return Interval(math.exp(iv.low), math.exp(iv.high))


def paired_ppl_difference(a: tuple, b: tuple, *, seed: int = 0, n_boot: int = N_BOOT,
                          level: float = LEVEL) -> tuple[float, Interval]:
    """ppl(A) - ppl(B) and its paired-bootstrap interval; `a`, `b` = (sums, counts) [D, B] over the same
    documents and blocks (the same resampling indices are applied to both)."""
    sa, ca = (np.asarray(x, np.float64) for x in a)
    sb, cb = (np.asarray(x, np.float64) for x in b)
    if sa.shape != sb.shape:
        raise ValueError(f"paired samples differ in shape: {sa.shape} vs {sb.shape}")
    docs, blocks = _block_draws(sa, ca + cb, n_boot, np.random.default_rng([seed, 2]))
    draws = np.exp(_doc_mean_nll(sa, ca, docs, blocks)) - np.exp(_doc_mean_nll(sb, cb, docs, blocks))
    delta = math.exp(np.mean(sa.sum(1) / ca.sum(1))) - math.exp(np.mean(sb.sum(1) / cb.sum(1)))
    return delta, _percentiles(draws, level)


def wilson_interval(mean_score: float, n: int, level: float = LEVEL) -> Interval:
    """Wilson score interval of a proportion (the mean of n scores in [0, 1])."""
    if n <= 0:
        return Interval(math.nan, math.nan)
    z = float(stats.norm.ppf((1 + level) / 2))
    p = mean_score
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))  # p = 0 or 1: exact ends


def paired_mean_difference(a, b, *, seed: int = 0, n_boot: int = N_BOOT,
                           level: float = LEVEL) -> tuple[float, Interval]:
    """mean(A) - mean(B) over paired units (trials with the same depth and key) and its paired-bootstrap
    interval."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or not a.size:
        raise ValueError(f"paired samples must be equal-length vectors, got {a.shape} and {b.shape}")
    delta = float(a.mean() - b.mean())
    if np.all(a - b == a[0] - b[0]):  # a constant difference: no spread to resample
        return delta, Interval(delta, delta)
    res = stats.bootstrap((a, b), lambda x, y, axis: np.mean(x - y, axis=axis), paired=True, vectorized=True,
                          n_resamples=n_boot, confidence_level=level, method="percentile",
                          rng=np.random.default_rng([seed, 3]))
    return delta, Interval(float(res.confidence_interval.low), float(res.confidence_interval.high))
