"""Run an evaluation config: perplexity cells, passkey trials, summaries, table and plots.

Everything that can fail on bad input (model path, methods, data, the run directory) is checked before
the first forward; each finished cell is written at once (results.RunStore), and a re-run skips it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import jax
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from yarn_jax.api import from_pretrained
from yarn_jax.assets import resolve_model
from yarn_jax.errors import ConfigError, NumericsError
from yarn_jax.evaluation import passkey as pk
from yarn_jax.evaluation import plots
from yarn_jax.evaluation.config import RESULT_FIELDS, EvalConfig
from yarn_jax.evaluation.data import check_source, load_documents
from yarn_jax.evaluation.methods import parse_methods
from yarn_jax.evaluation.perplexity import PerplexityScorer, aggregate, position_buckets
from yarn_jax.evaluation.results import RunStore, write_json_atomic
from yarn_jax.fingerprint import model_identity, short, tokenizer_identity
from yarn_jax.outputs import lock, write_csv_atomic
from yarn_jax.sharding import distributed


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


def run(cfg: EvalConfig, console: Console | None = None) -> dict:
    """Every process of a multi-process run calls this; process 0 alone writes and prints. Process 0 holds
    the run directory's lock for the whole run (a second command on the same --out is refused)."""
    distributed.initialize(cfg.distributed_config())
    primary = distributed.is_primary()
    with lock(cfg.out, f"run directory {cfg.out}", enabled=primary, run_dir=True):
        return _run(cfg, console, primary)


def _run(cfg: EvalConfig, console: Console | None, primary: bool) -> dict:
    console = console or Console(stderr=True, width=max(100, Console(stderr=True).width), quiet=not primary)
    sharder = cfg.sharder()
    if cfg.passkey_lengths and jax.process_count() > 1:
        raise ConfigError("passkey_lengths: passkey decoding runs in a single process (a mesh over its devices "
                          "is fine); run it without the multi-process settings")
    if cfg.protocol != "none" and cfg.lengths:
        check_source(cfg.data)  # before the model loads
    model_path = resolve_model(cfg.model) if primary or jax.process_count() == 1 else None
    model_path = distributed.share_from_primary(model_path)  # only process 0 fetches the bundled asset
    pm = from_pretrained(model_path, dtype=cfg.dtype, attention_backend=cfg.attention_backend,
                                  sharder=sharder, splash_blocks=cfg.splash())
    if sharder is not None:
        console.print(f"mesh {dict(sharder.mesh.shape)} over {jax.device_count()} devices, "
                      f"{jax.process_count()} process(es)"
                      + (f"; replicated where not divisible: {sharder.fallbacks}" if sharder.fallbacks else ""))
    mc = pm.config
    l0 = cfg.original_context or mc.rope.original_max_position_embeddings or mc.max_position_embeddings
    methods = parse_methods(cfg.methods, cfg.scales, l0)
    for m in methods:  # every rope dict validated now, not after an hour of compute
        if m.rope is not None:
            mc.with_rope(m.rope, where=f"method {m.label!r}")
    bos = mc.bos_token_id if cfg.bos == "auto" else (None if cfg.bos == "none" else int(cfg.bos))
    if bos is not None and not 0 <= bos < mc.vocab_size:
        raise ConfigError(f"bos: token id {bos} is outside the vocabulary [0, {mc.vocab_size})")
    tok = pm.tokenizer()
    if cfg.passkey_lengths:  # a length too short for the prompt fails now, not after the perplexity cells
        pk.check_lengths(tok, cfg.passkey_lengths, cfg.passkey_trials, cfg.seed, bos)
    docs = []
    if cfg.protocol != "none" and cfg.lengths:
        docs = load_documents(cfg.data, tok, min_tokens=max(cfg.lengths), max_docs=cfg.max_docs,
                              text_field=cfg.text_field, tfds_data_dir=cfg.tfds_data_dir)
    inputs = None
    if primary:
        inputs = {"model": model_identity(model_path), "tokenizer": tokenizer_identity(pm.tokenizer_dir),
                  "documents": {d.name: d.digest for d in docs}}
    store = RunStore(cfg.out, {**{k: getattr(cfg, k) for k in RESULT_FIELDS}, "bos": bos},  # bos resolved
                     inputs, write=primary, recompute_changed=cfg.recompute_changed)
    # every process skips the same finished cells, keyed by the same model identity
    store.cells, ident = distributed.share_from_primary(
        (store.cells, short([inputs["model"], inputs["tokenizer"]]) if primary else None))
    console.print(f"[bold]{cfg.model}[/] (L0 = {l0}), {len(methods)} methods, bos = {bos}, "
                  f"{len(docs)} document(s): {', '.join(d.name for d in docs)}; results in {store.dir}")
    keys = CellKeys(cfg, ident)

    def refresh():  # summary.json and the CSVs kept current after every finished cell
        summarize(cfg, methods, docs, store, console, quiet=True, keys=keys)

    if docs:
        _perplexity(cfg, pm, methods, docs, bos, store, console, refresh, keys)
    if cfg.passkey_lengths:
        _passkey(cfg, pm, tok, methods, bos, store, console, refresh, keys)
    summary = summarize(cfg, methods, docs, store, console, keys=keys)
    bad = [f"{r['method']} at {r['length']}" for r in summary["perplexity"] if not np.isfinite(r["ppl"])]
    if bad:
        raise NumericsError(f"non-finite perplexity for {', '.join(bad[:6])}{' ...' if len(bad) > 6 else ''} "
                            f"(results written to {store.dir}, non-finite values left out of the plots); "
                            "try --dtype float32 or check the checkpoint")
    return summary


class CellKeys:
    """The cell keys of a run: the settings and the identity of the inputs that produced each result (a
    changed model, tokenizer or document never matches an old cell)."""

    def __init__(self, cfg: EvalConfig, ident: str):
        self.cfg, self.ident = cfg, ident

    def ppl(self, length, doc, method) -> str:
        c = self.cfg
        return f"ppl|{c.protocol}|{c.stride}|{length}|{doc.name}|{doc.digest}|{method.key}|{self.ident}"

    def passkey(self, length, method, trial) -> str:
        return f"passkey|{length}|{method.key}|{trial}|{self.ident}"


def _perplexity(cfg, pm, methods, docs, bos, store, console, refresh, keys: CellKeys) -> None:
    scorer = PerplexityScorer(pm.module, bos)
    todo = [(n, d, m) for n in cfg.lengths for d in docs for m in methods if not store.get(keys.ppl(n, d, m))]
    total = sum(len(scorer.windows(d, n, cfg.stride, cfg.protocol)) for n, d, _ in todo)
    by_signature: dict[tuple, dict] = {}
    with _progress(console) as progress:
        task = progress.add_task("perplexity", total=total)
        for n, doc, method in todo:
            progress.update(task, description=f"{cfg.protocol} L={n} {doc.name} {method.label}")
            sig = (n, doc.name, scorer.signature(method, doc, n, cfg.stride, cfg.protocol))
            n_windows = len(scorer.windows(doc, n, cfg.stride, cfg.protocol))
            if sig in by_signature:  # identical frequencies at every window: identical scores
                rec = {**by_signature[sig], "method": method.label, "rope": method.rope, "seconds": 0.0,
                       "same_as": by_signature[sig]["method"]}
                progress.advance(task, n_windows)
            else:
                t0 = time.perf_counter()
                scores = scorer.score(doc, n, method, protocol=cfg.protocol, stride=cfg.stride,
                                      progress=lambda k: progress.advance(task, k))
                sums, counts = position_buckets(scores, n, cfg.position_buckets)
                rec = {"kind": "ppl", "protocol": cfg.protocol, "stride": cfg.stride, "length": n,
                       "doc": doc.name, "method": method.label, "rope": method.rope,
                       "nll_sum": float(scores.nll.sum()), "tokens": scores.tokens, "bucket_sums": sums,
                       "bucket_counts": counts, "seconds": time.perf_counter() - t0}
                by_signature[sig] = rec
            rec["key"] = keys.ppl(n, doc, method)
            store.add(rec)
            refresh()


def _passkey(cfg, pm, tok, methods, bos, store, console, refresh, keys: CellKeys) -> None:
    cells = [(n, m, i, depth, key) for n in cfg.passkey_lengths for m in methods
             for i, (depth, key) in enumerate(pk.trials(cfg.passkey_trials, cfg.seed, n))]
    todo = [c for c in cells if not store.get(keys.passkey(*c[:3]))]
    modules = {}
    with _progress(console) as progress:
        task = progress.add_task("passkey", total=len(todo))
        for n, method, i, depth, key in todo:
            progress.update(task, description=f"passkey L={n} {method.label} depth {depth:.0%}")
            if method.key not in modules:
                modules[method.key] = pm.with_rope(method.rope).module if method.rope else pm.module
            t0 = time.perf_counter()
            trial = pk.run_trial(modules[method.key], tok, n, depth, key, bos=bos,
                                 max_new_tokens=cfg.passkey_max_new_tokens,
                                 dynamic_cache=cfg.passkey_dynamic_cache)
            store.add({"key": keys.passkey(n, method, i), "kind": "passkey", "length": n, "method": method.label,
                       "rope": method.rope, "trial": i, "depth": depth, "passkey": key,
                       "prompt_tokens": trial.prompt_tokens, "answer": trial.answer, "correct": trial.correct,
                       "seconds": time.perf_counter() - t0})
            refresh()
            progress.advance(task)


def summarize(cfg: EvalConfig, methods, docs, store: RunStore, console: Console, quiet: bool = False, *,
              keys: CellKeys) -> dict:
    """Summary JSON + CSV from the stored cells of this config; unless quiet (the per-cell refresh), also the
    plots and the tables."""
    out = store.dir
    summary: dict = {"config": cfg.model_dump(), "perplexity": [], "position_curves": {}, "passkey": []}
    for m in methods:
        for n in cfg.lengths:
            cells = [store.get(keys.ppl(n, d, m)) for d in docs]
            cells = [c for c in cells if c]
            if cells:
                summary["perplexity"].append({"method": m.label, "length": n, "protocol": cfg.protocol,
                                              **aggregate(cells)})
        if docs:  # NLL by position from the longest length's forwards
            n = max(cfg.lengths)
            cells = [c for c in (store.get(keys.ppl(n, d, m)) for d in docs) if c]
            if cells:
                sums = np.sum([c["bucket_sums"] for c in cells], axis=0)
                counts = np.sum([c["bucket_counts"] for c in cells], axis=0)
                width = n / cfg.position_buckets
                keep = counts > 0
                summary["position_curves"][m.label] = {
                    "length": n, "bucket_centres": ((np.arange(cfg.position_buckets) + 0.5) * width)[keep].tolist(),
                    "mean_nll": (sums[keep] / counts[keep]).tolist()}
    pk_acc: dict[str, dict] = defaultdict(dict)
    for m in methods:
        by_len = {}
        for n in cfg.passkey_lengths:
            recs = [store.get(keys.passkey(n, m, i)) for i in range(cfg.passkey_trials)]
            recs = [r for r in recs if r]
            if not recs:
                continue
            by_len[n] = float(np.mean([r["correct"] for r in recs]))
            for r in recs:
                pk_acc[m.label][(n, r["depth"])] = float(r["correct"])
            summary["passkey"].append({"method": m.label, "length": n, "accuracy": by_len[n], "trials": len(recs)})
        if by_len:
            ctx, mean_acc = pk.passkey_context(by_len)
            summary.setdefault("passkey_context", {})[m.label] = {"context": ctx, "accuracy": mean_acc}

    if not store.write:  # not process 0
        return summary
    write_json_atomic(out / "summary.json", summary)
    write_csv_atomic(out / "perplexity.csv", summary["perplexity"])
    write_csv_atomic(out / "passkey.csv", summary["passkey"])
    if quiet:
        return summary
    paths = []
    if summary["perplexity"]:
        paths.append(plots.ppl_vs_length(summary["perplexity"], out / "ppl_vs_length.png",
                                         f"{cfg.model}: {cfg.protocol} perplexity on {cfg.data}"))
    if summary["position_curves"]:
        curves = {k: (v["bucket_centres"], v["mean_nll"]) for k, v in summary["position_curves"].items()}
        paths.append(plots.nll_vs_position(curves, out / "nll_vs_position.png",
                                           f"NLL by position at {max(cfg.lengths)} tokens"))
    if pk_acc:
        paths.append(plots.passkey_heatmap(dict(pk_acc), out / "passkey_heatmap.png"))
    summary["plots"] = [str(p) for p in paths]
    write_json_atomic(out / "summary.json", summary)
    _print_tables(cfg, methods, summary, console)
    for p in paths:
        console.print(f"plot: {p}")
    return summary


def _print_tables(cfg, methods, summary, console) -> None:
    if summary["perplexity"]:
        t = Table(title=f"{cfg.protocol} perplexity", caption="exp(mean over documents of each document's "
                  "mean NLL); token-weighted in perplexity.csv")
        t.add_column("method")
        for n in cfg.lengths:
            t.add_column(str(n), justify="right")
        cell = {(r["method"], r["length"]): r["ppl"] for r in summary["perplexity"]}
        for m in methods:
            t.add_row(m.label, *[f"{cell[(m.label, n)]:.3f}" if (m.label, n) in cell else "—" for n in cfg.lengths])
        console.print(t)
    if summary["passkey"]:
        t = Table(title="passkey retrieval accuracy")
        t.add_column("method")
        for n in cfg.passkey_lengths:
            t.add_column(str(n), justify="right")
        t.add_column("passkey context", justify="right")
        acc = {(r["method"], r["length"]): r["accuracy"] for r in summary["passkey"]}
        ctx = summary.get("passkey_context", {})
        for m in methods:
            c = ctx.get(m.label, {}).get("context")
            t.add_row(m.label, *[f"{acc[(m.label, n)]:.0%}" if (m.label, n) in acc else "—"
                                 for n in cfg.passkey_lengths], str(c) if c else "—")
        console.print(t)
