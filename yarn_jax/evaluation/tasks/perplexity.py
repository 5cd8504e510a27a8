"""The perplexity task: one cell per (length, document, method), scored by `evaluation.perplexity`.

Summary sections: `perplexity` (one row per method and length: the paper's aggregate over documents)
and `position_curves` (mean NLL by position at the longest length, from the cells' position buckets).
Two methods with the same frequencies at every window of a cell (e.g. Dynamic-YaRN inside L0 and the
unscaled rope) give identical scores: the second copies the first's record (`same_as`).

Prefix sharing (truncate protocol): the window at length L is [BOS] + doc[:L-1], a prefix of every longer
length's window, and causal attention makes its per-token NLLs exactly the first L-1 of the longer
forward's — as long as the rope's frequencies are the same at both lengths. So lengths are grouped by the
method's frequencies (all of them for static ropes; those up to L0 for dynamic ones), the longest of each
group is one forward, and the others are its prefixes (`obtained` says which). Cells run longest first.
"""

from __future__ import annotations

import time

import numpy as np
from rich.table import Table

from yarn_jax.data.corpus import check_source, load_documents
from yarn_jax.errors import NumericsError
from yarn_jax.evaluation import plots, statistics
from yarn_jax.evaluation.perplexity import PerplexityScorer, Scores, aggregate, position_buckets
from yarn_jax.evaluation.tasks.base import Cell, RunContext, Task, copied


def _blocks(cells: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The cells' NLL sums and token counts per position bucket [documents, buckets]: the bootstrap's blocks."""
    return (np.asarray([c["bucket_sums"] for c in cells], np.float64),
            np.asarray([c["bucket_counts"] for c in cells], np.float64))


class PerplexityTask(Task):
    name = "perplexity"

    def __init__(self):
        self.docs, self.scorer, self._same, self._forwards = [], None, {}, {}

    @staticmethod
    def enabled(cfg) -> bool:
        return cfg.protocol != "none" and bool(cfg.lengths)

    @staticmethod
    def check_config(cfg) -> None:
        if PerplexityTask.enabled(cfg):
            check_source(cfg.data)

    def prepare(self, ctx: RunContext) -> dict:
        cfg = ctx.cfg
        if not self.enabled(cfg):
            return {"documents": {}}
        self.docs = load_documents(cfg.data, ctx.tokenizer, min_tokens=max(cfg.lengths), max_docs=cfg.max_docs,
                                   text_field=cfg.text_field, tfds_data_dir=cfg.tfds_data_dir)
        return {"documents": {d.name: d.digest for d in self.docs}}

    def describe(self) -> str:
        return f"{len(self.docs)} document(s): {', '.join(d.name for d in self.docs)}" if self.docs else ""

    def _key(self, ctx, n, doc, method) -> str:
        c = ctx.cfg
        return ctx.key("ppl", c.protocol, c.stride, n, doc.name, doc.digest, method.key)

    def _source(self, ctx, n, doc, method) -> int:
        """The length whose forward yields the cell at length n: n itself, or under the truncate protocol the
        longest evaluated length with the same frequencies at its window as n's (n's window is its prefix)."""
        cfg = ctx.cfg
        if cfg.protocol != "truncate" or not cfg.share_prefix:
            return n
        sig = self.scorer.signature(method, doc, n, cfg.stride, cfg.protocol)
        return max(m for m in cfg.lengths if m >= n and self.scorer.signature(method, doc, m, cfg.stride,
                                                                                  cfg.protocol) == sig)

    def cells(self, ctx: RunContext) -> list[Cell]:
        if not self.docs:
            return []
        cfg = ctx.cfg
        self.scorer = PerplexityScorer(ctx.model.module, ctx.bos, ropes=ctx.ropes)
        sharing = cfg.protocol == "truncate" and cfg.share_prefix
        out, planned = [], set()
        for d in self.docs:  # one (document, method) at a time, longest first: a group's forward runs at its
            for m in ctx.methods:  # first pending cell, and only that group's forwards are kept in memory
                for n in sorted(cfg.lengths, reverse=sharing):
                    key, src = self._key(ctx, n, d, m), self._source(ctx, n, d, m)
                    work = 0
                    if ctx.store.get(key) is None and (d.name, m.key, src) not in planned:
                        planned.add((d.name, m.key, src))
                        work = len(self.scorer.windows(d, src, cfg.stride, cfg.protocol)) * src
                    out.append(Cell(key, f"{cfg.protocol} L={n} {d.name} {m.label}", work, (n, d, m)))
        return out

    def _scores(self, ctx, doc, method, n, advance):
        """(per-token scores of the forward(s) at length n, seconds); kept for the group's prefixes."""
        cfg, k = ctx.cfg, (doc.name, method.key, n)
        if k not in self._forwards:
            t0 = time.perf_counter()
            scores = self.scorer.score(doc, n, method, protocol=cfg.protocol, stride=cfg.stride,
                                       progress=lambda windows: advance(windows * n))  # n tokens each
            self._forwards = {kk: v for kk, v in self._forwards.items() if kk[:2] == k[:2]}  # this group's only
            self._forwards[k] = scores, time.perf_counter() - t0
        return self._forwards[k]

    def run(self, ctx: RunContext, cell: Cell, advance) -> dict:
        cfg, (n, doc, method) = ctx.cfg, cell.args
        sig = (n, doc.name, self.scorer.signature(method, doc, n, cfg.stride, cfg.protocol))
        if sig in self._same:  # identical frequencies at every window: identical scores
            first = self._same[sig]
            return copied(first, method)
        src = self._source(ctx, n, doc, method)
        scores, seconds = self._scores(ctx, doc, method, src, advance)
        obtained = "forward"
        if src != n:  # the first n-1 predicted tokens of the longer window
            (w,) = self.scorer.windows(doc, n, cfg.stride, cfg.protocol)
            real = w.end - w.begin + (ctx.bos is not None)
            keep = (scores.position >= real - w.scored) & (scores.position < real)
            scores, seconds, obtained = Scores(scores.nll[keep], scores.position[keep]), 0.0, f"prefix of L={src}"
        sums, counts = position_buckets(scores, n, cfg.position_buckets)
        rec = {"kind": "ppl", "protocol": cfg.protocol, "stride": cfg.stride, "length": n, "doc": doc.name,
               "method": method.label, "rope": method.rope, "nll_sum": float(scores.nll.sum()),
               "tokens": scores.tokens, "bucket_sums": sums, "bucket_counts": counts, "obtained": obtained,
               "seconds": seconds}
        self._same[sig] = rec
        return rec

    def summarize(self, ctx: RunContext) -> dict:
        cfg, rows, curves = ctx.cfg, [], {}
        for m in ctx.methods:
            for n in cfg.lengths:
                cells = ctx.records(self._key(ctx, n, d, m) for d in self.docs)
                if cells:
                    iv = statistics.ppl_interval(*_blocks(cells), seed=cfg.seed)
                    rows.append({"method": m.label, **ctx.rope_columns(m), "length": n, "protocol": cfg.protocol,
                                 **aggregate(cells), "ppl_ci_low": iv.low, "ppl_ci_high": iv.high,
                                 "blocks": int(np.count_nonzero(_blocks(cells)[1]))})
            if self.docs:  # NLL by position from the longest length's forwards
                n = max(cfg.lengths)
                cells = ctx.records(self._key(ctx, n, d, m) for d in self.docs)
                if cells:
                    sums = np.sum([c["bucket_sums"] for c in cells], axis=0)
                    counts = np.sum([c["bucket_counts"] for c in cells], axis=0)
                    width = n / cfg.position_buckets
                    keep = counts > 0
                    curves[m.label] = {"length": n, "mean_nll": (sums[keep] / counts[keep]).tolist(),
                                       "bucket_centres": ((np.arange(cfg.position_buckets) + 0.5) * width)[keep].tolist()}
        return {"perplexity": rows, "position_curves": curves}

    def compare(self, ctx: RunContext, a, b) -> list[dict]:
        """Paired differences ppl(a) - ppl(b) at every length both finished on the same documents."""
        out = []
        for n in ctx.cfg.lengths:
            ca = ctx.records(self._key(ctx, n, d, a) for d in self.docs)
            cb = ctx.records(self._key(ctx, n, d, b) for d in self.docs)
            if ca and len(ca) == len(cb) == len(self.docs):
                delta, iv = statistics.paired_ppl_difference(_blocks(ca), _blocks(cb), seed=ctx.cfg.seed)
                out.append({"metric": f"ppl@{n}", "delta": delta, "ci_low": iv.low, "ci_high": iv.high,
                            "n": f"{len(ca)} doc(s) x {ctx.cfg.position_buckets} blocks",
                            "scale": aggregate(cb)["ppl"]})
        return out

    def plots(self, ctx, summary, out):
        cfg, paths, order = ctx.cfg, [], [m.label for m in ctx.methods]
        if summary["perplexity"]:
            how = "first L tokens" if cfg.protocol == "truncate" else f"sliding windows, stride {cfg.stride}"
            paths.append(plots.ppl_vs_length(summary["perplexity"], out / "ppl_vs_length.png",
                                             f"{ctx.model_name}: perplexity ({how}) on {ctx.data_name}",
                                             l0=ctx.original_context, order=order))
        if summary["position_curves"]:
            curves = {k: (v["bucket_centres"], v["mean_nll"]) for k, v in summary["position_curves"].items()}
            paths.append(plots.nll_vs_position(curves, out / "nll_vs_position.png",
                                               f"NLL by position at {max(cfg.lengths)} tokens",
                                               l0=ctx.original_context))
        return paths

    def table(self, ctx, summary):
        if not summary["perplexity"]:
            return None
        cfg = ctx.cfg
        t = Table(title=f"{cfg.protocol} perplexity", caption="exp(mean over documents of each document's "
                  "mean NLL); token-weighted in perplexity.csv")
        t.add_column("method")
        for n in cfg.lengths:
            t.add_column(str(n), justify="right")
        cell = {(r["method"], r["length"]): r["ppl"] for r in summary["perplexity"]}
        for m in ctx.methods:
            t.add_row(m.label, *[f"{cell[(m.label, n)]:.3f}" if (m.label, n) in cell else "—" for n in cfg.lengths])
        return t

    def metrics(self, summary):
        return {f"ppl@{r['length']}": r["ppl"] for r in summary.get("perplexity", [])}

    def check(self, ctx, summary):
        bad = [f"{r['method']} at {r['length']}" for r in summary["perplexity"] if not np.isfinite(r["ppl"])]
        if bad:
            raise NumericsError(f"non-finite perplexity for {', '.join(bad[:6])}{' ...' if len(bad) > 6 else ''} "
                                f"(results written to {ctx.store.dir}, non-finite values left out of the plots); "
                                "try --dtype float32 or check the checkpoint")
