"""The perplexity task: one cell per (length, document, method), scored by `evaluation.perplexity`.

Summary sections: `perplexity` (one row per method and length: the paper's aggregate over documents)
and `position_curves` (mean NLL by position at the longest length, from the cells' position buckets).
Two methods with the same frequencies at every window of a cell (e.g. Dynamic-YaRN inside L0 and the
unscaled rope) give identical scores: the second copies the first's record (`same_as`).
"""

from __future__ import annotations

import time

import numpy as np
from rich.table import Table

from yarn_jax.data.corpus import check_source, load_documents
from yarn_jax.errors import NumericsError
from yarn_jax.evaluation import plots
from yarn_jax.evaluation.perplexity import PerplexityScorer, aggregate, position_buckets
from yarn_jax.evaluation.tasks.base import Cell, RunContext, Task


class PerplexityTask(Task):
    name = "perplexity"

    def __init__(self):
        self.docs, self.scorer, self._same = [], None, {}

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

    def cells(self, ctx: RunContext) -> list[Cell]:
        if not self.docs:
            return []
        cfg = ctx.cfg
        self.scorer = PerplexityScorer(ctx.model.module, ctx.bos, ropes=ctx.ropes)
        return [Cell(self._key(ctx, n, d, m), f"{cfg.protocol} L={n} {d.name} {m.label}",
                     len(self.scorer.windows(d, n, cfg.stride, cfg.protocol)), (n, d, m))
                for n in cfg.lengths for d in self.docs for m in ctx.methods]

    def run(self, ctx: RunContext, cell: Cell, advance) -> dict:
        cfg, (n, doc, method) = ctx.cfg, cell.args
        sig = (n, doc.name, self.scorer.signature(method, doc, n, cfg.stride, cfg.protocol))
        if sig in self._same:  # identical frequencies at every window: identical scores
            first = self._same[sig]
            return {**first, "method": method.label, "rope": method.rope, "seconds": 0.0, "same_as": first["method"]}
        t0 = time.perf_counter()
        scores = self.scorer.score(doc, n, method, protocol=cfg.protocol, stride=cfg.stride, progress=advance)
        sums, counts = position_buckets(scores, n, cfg.position_buckets)
        rec = {"kind": "ppl", "protocol": cfg.protocol, "stride": cfg.stride, "length": n, "doc": doc.name,
               "method": method.label, "rope": method.rope, "nll_sum": float(scores.nll.sum()),
               "tokens": scores.tokens, "bucket_sums": sums, "bucket_counts": counts,
               "seconds": time.perf_counter() - t0}
        self._same[sig] = rec
        return rec

    def summarize(self, ctx: RunContext) -> dict:
        cfg, rows, curves = ctx.cfg, [], {}
        for m in ctx.methods:
            for n in cfg.lengths:
                cells = ctx.records(self._key(ctx, n, d, m) for d in self.docs)
                if cells:
                    rows.append({"method": m.label, **ctx.rope_columns(m), "length": n, "protocol": cfg.protocol,
                                 **aggregate(cells)})
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

    def plots(self, ctx, summary, out):
        cfg, paths = ctx.cfg, []
        if summary["perplexity"]:
            paths.append(plots.ppl_vs_length(summary["perplexity"], out / "ppl_vs_length.png",
                                             f"{cfg.model}: {cfg.protocol} perplexity on {cfg.data}",
                                             l0=ctx.original_context))
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
