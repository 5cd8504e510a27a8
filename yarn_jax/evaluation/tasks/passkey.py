"""The passkey task: one cell per (length, method, trial), decoded by `evaluation.passkey`.

Summary sections: `passkey` (accuracy per method and length) and `passkey_context` (the paper's
"passkey context": the largest length with >= 80 % accuracy, and the mean accuracy up to it).
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
from rich.table import Table

from yarn_jax.evaluation import passkey as pk
from yarn_jax.evaluation import plots, statistics
from yarn_jax.evaluation.tasks.base import Cell, RunContext, Task, copied
from yarn_jax.generate import decode_signature


class PasskeyTask(Task):
    name = "passkey"

    def __init__(self):
        self._modules, self._same, self._prompt_len = {}, {}, {}

    def prepare(self, ctx: RunContext) -> dict:
        cfg = ctx.cfg
        if cfg.passkey_lengths:  # a length too short for the prompt fails now, not after other tasks' cells
            pk.check_lengths(ctx.tokenizer, cfg.passkey_lengths, cfg.passkey_trials, cfg.seed, ctx.bos)
        return {}

    def _key(self, ctx, n, method, trial) -> str:
        """Trial i of N (its depth is i/(N-1)): another trial count makes other cells."""
        return ctx.key("passkey", n, method.key, f"{trial}/{ctx.cfg.passkey_trials}")

    def cells(self, ctx: RunContext) -> list[Cell]:
        cfg = ctx.cfg
        return [Cell(self._key(ctx, n, m, i), f"passkey L={n} {m.label} depth {depth:.0%}", n, (n, m, i, depth, key))
                for n in cfg.passkey_lengths for i, (depth, key) in enumerate(pk.trials(cfg.passkey_trials, cfg.seed, n))
                for m in ctx.methods]  # a trial's methods together: its prompt is built once

    def run(self, ctx: RunContext, cell: Cell, advance) -> dict:
        cfg, (n, method, i, depth, key) = ctx.cfg, cell.args
        if method.key not in self._modules:
            self._modules[method.key] = ctx.module(method)
        if (n, i) not in self._prompt_len:
            self._prompt_len = {(n, i): pk.prompt_ids(ctx.tokenizer, key, n, depth, ctx.bos).size}
        start = self._prompt_len[(n, i)]
        sig = (n, i, decode_signature(self._modules[method.key], start, start + cfg.passkey_max_new_tokens - 1))
        if sig in self._same:  # the same frequencies over the whole decode: the same answer
            first = self._same[sig]
            return copied(first, method)
        t0 = time.perf_counter()
        trial = pk.run_trial(self._modules[method.key], ctx.tokenizer, n, depth, key, bos=ctx.bos,
                             max_new_tokens=cfg.passkey_max_new_tokens, dynamic_cache=cfg.passkey_dynamic_cache)
        rec = {"kind": "passkey", "length": n, "method": method.label, "rope": method.rope, "trial": i,
               "depth": depth, "passkey": key, "prompt_tokens": trial.prompt_tokens, "answer": trial.answer,
               "correct": trial.correct, "seconds": time.perf_counter() - t0}
        self._same[sig] = rec
        return rec

    def _records(self, ctx, n, m) -> list[dict]:
        return ctx.records(self._key(ctx, n, m, i) for i in range(ctx.cfg.passkey_trials))

    def summarize(self, ctx: RunContext) -> dict:
        rows, contexts = [], {}
        for m in ctx.methods:
            by_len = {}
            for n in ctx.cfg.passkey_lengths:
                recs = self._records(ctx, n, m)
                if recs:
                    by_len[n] = float(np.mean([r["correct"] for r in recs]))
                    iv = statistics.wilson_interval(by_len[n], len(recs))
                    rows.append({"method": m.label, **ctx.rope_columns(m), "length": n, "accuracy": by_len[n],
                                 "trials": len(recs), "ci_low": iv.low, "ci_high": iv.high})
            if by_len:
                ctx_len, mean_acc = pk.passkey_context(by_len)
                contexts[m.label] = {"context": ctx_len, "accuracy": mean_acc}
        out = {"passkey": rows}
        if contexts:
            out["passkey_context"] = contexts
        return out

    def compare(self, ctx: RunContext, a, b) -> list[dict]:
        """Paired accuracy differences at every length both finished all trials (trial i: the same depth and
        key for both methods)."""
        out = []
        for n in ctx.cfg.passkey_lengths:
            ra, rb = self._records(ctx, n, a), self._records(ctx, n, b)
            if ra and len(ra) == len(rb) == ctx.cfg.passkey_trials:
                delta, iv = statistics.paired_mean_difference([r["correct"] for r in ra], [r["correct"] for r in rb],
                                                              seed=ctx.cfg.seed)
                out.append({"metric": f"passkey@{n}", "delta": delta, "ci_low": iv.low, "ci_high": iv.high,
                            "n": f"{len(ra)} trials", "scale": 1.0})
        return out

    def plots(self, ctx, summary, out):
        acc: dict[str, dict] = defaultdict(dict)
        for m in ctx.methods:
            for n in ctx.cfg.passkey_lengths:
                for r in self._records(ctx, n, m):
                    acc[m.label][(n, r["depth"])] = float(r["correct"])
        return [plots.depth_heatmap(dict(acc), out / "passkey_heatmap.png", "accuracy",
                                    "passkey retrieval by length and depth")] if acc else []

    def table(self, ctx, summary):
        if not summary["passkey"]:
            return None
        lengths = ctx.cfg.passkey_lengths
        t = Table(title="passkey retrieval accuracy")
        t.add_column("method")
        for n in lengths:
            t.add_column(str(n), justify="right")
        t.add_column("passkey context", justify="right")
        acc = {(r["method"], r["length"]): r["accuracy"] for r in summary["passkey"]}
        contexts = summary.get("passkey_context", {})
        for m in ctx.methods:
            c = contexts.get(m.label, {}).get("context")
            t.add_row(m.label, *[f"{acc[(m.label, n)]:.0%}" if (m.label, n) in acc else "—" for n in lengths],
                      str(c) if c else "—")
        return t

    def metrics(self, summary):
        return {f"passkey@{r['length']}": r["accuracy"] for r in summary.get("passkey", [])}
