"""Run an evaluation config: every task's cells (`tasks.TASKS`: perplexity, passkey), summaries, tables
and plots.

Everything that can fail on bad input (model path, methods, data, the run directory) is checked before
the first forward; each finished cell is written at once (results.RunStore), and a re-run skips it.
"""

from __future__ import annotations

import jax
from rich.console import Console

from yarn_jax.pretrained import load_pretrained
from yarn_jax.assets import resolve_model
from yarn_jax.errors import ConfigError
from yarn_jax.evaluation import statistics
from yarn_jax.evaluation.config import RESULT_FIELDS, EvalConfig
from yarn_jax.evaluation.methods import parse_methods, parse_pairs
from yarn_jax.evaluation.tasks import TASKS, RunContext, Task
from yarn_jax.fingerprint import model_identity, short, tokenizer_identity
from yarn_jax.outputs import lock
from yarn_jax.progress import Progress, console as log_console
from yarn_jax.provenance import Invocation
from yarn_jax.rundir import RunStore, write_csv_atomic, write_json_atomic
from yarn_jax.sharding import distributed


def run(cfg: EvalConfig, console: Console | None = None, note: str | None = None) -> dict:
    """Every process of a multi-process run calls this; process 0 alone writes and prints. Process 0 holds
    the run directory's lock for the whole run (a second command on the same --out is refused). `note`
    (where the settings came from) is printed when the run starts."""
    distributed.initialize(cfg.distributed_config())
    primary = distributed.is_primary()
    with lock(cfg.out, f"run directory {cfg.out}", enabled=primary, run_dir=True):
        return _run(cfg, console, primary, note)


def _run(cfg: EvalConfig, console: Console | None, primary: bool, note: str | None) -> dict:
    console = console or log_console(quiet=not primary)
    sharder = cfg.sharder()
    decoding = [f for f in ("passkey_lengths", "ruler") if getattr(cfg, f)]
    if decoding and jax.process_count() > 1:
        raise ConfigError(f"{decoding[0]}: decoding runs in a single process (a mesh over its devices is fine); "
                          "run it without the multi-process settings")
    tasks = [t() for t in TASKS]
    for t in tasks:  # before the model loads
        t.check_config(cfg)
    model_path = resolve_model(cfg.model) if primary or jax.process_count() == 1 else None
    model_path = distributed.share_from_primary(model_path)  # only process 0 fetches the bundled asset
    pm = load_pretrained(model_path, dtype=cfg.dtype, attention_backend=cfg.attention_backend, sharder=sharder,
                         splash_blocks=cfg.splash())
    if sharder is not None:
        console.print(f"mesh {dict(sharder.mesh.shape)} over {jax.device_count()} devices, "
                      f"{jax.process_count()} process(es)"
                      + (f"; replicated where not divisible: {sharder.fallbacks}" if sharder.fallbacks else ""))
    mc = pm.config
    l0 = cfg.original_context or mc.rope.original_max_position_embeddings or mc.max_position_embeddings
    methods = parse_methods(cfg.methods, cfg.scales, l0)
    pairs = parse_pairs(cfg.compare, methods, cfg.scales, l0)
    # every rope dict validated now, not after an hour of compute, and resolved once for every task
    ropes = {m.key: mc.with_rope(m.rope, where=f"method {m.label!r}").rope if m.rope else mc.rope for m in methods}
    bos = mc.bos_token_id if cfg.bos == "auto" else (None if cfg.bos == "none" else int(cfg.bos))
    if bos is not None and not 0 <= bos < mc.vocab_size:
        raise ConfigError(f"bos: token id {bos} is outside the vocabulary [0, {mc.vocab_size})")
    ctx = RunContext(cfg, pm, pm.tokenizer(), methods, ropes, bos, console, original_context=l0, pairs=pairs)
    task_inputs = {}
    for t in tasks:
        task_inputs.update(t.prepare(ctx))
    inputs = None
    if primary:
        inputs = {"model": model_identity(model_path), "tokenizer": tokenizer_identity(pm.tokenizer_dir),
                  **task_inputs}
    ctx.store = RunStore(cfg.out, {**{k: getattr(cfg, k) for k in RESULT_FIELDS}, "bos": bos},  # bos resolved
                         inputs, write=primary, recompute_changed=cfg.recompute_changed)
    # every process skips the same finished cells, keyed by the same model identity
    ctx.store.cells, ctx.ident = distributed.share_from_primary(
        (ctx.store.cells, short([inputs["model"], inputs["tokenizer"]]) if primary else None))
    if note:
        console.print(note, markup=False, highlight=False)
    console.print(", ".join([f"[bold]{cfg.model}[/] (L0 = {l0}), {len(methods)} methods, bos = {bos}",
                             *filter(None, (t.describe() for t in tasks))]) + f"; results in {ctx.store.dir}")
    invocation = None
    if primary:
        invocation = Invocation(ctx.store.dir, {"model": cfg.model, "model_path": str(model_path),
                                                "original_context": l0, "identity": inputs}, sharder).start()
    try:
        for t in tasks:
            _run_cells(t, ctx, tasks)
        summary = summarize(ctx, tasks)
        for t in tasks:
            t.check(ctx, summary)
    except BaseException as e:
        if invocation is not None:
            invocation.finish(e)
        raise
    if invocation is not None:
        invocation.finish()
    return summary


def _run_cells(task: Task, ctx: RunContext, tasks: list[Task]) -> None:
    """The task's unfinished cells, each stored as soon as it is done (summary.json and the CSVs kept
    current after every one)."""
    todo = [c for c in task.cells(ctx) if not ctx.store.get(c.key)]
    if not todo:
        return
    with Progress(sum(c.work for c in todo), task.name, unit=task.unit, enabled=not ctx.console.quiet) as bar:
        for i, cell in enumerate(todo):
            bar.describe(f"{task.name} {i + 1}/{len(todo)}: {cell.label}")
            done = [0]

            def advance(k: int, done=done) -> None:
                done[0] += k
                bar.update(k)

            record = task.run(ctx, cell, advance)
            ctx.store.add({**record, "key": cell.key})
            bar.update(max(cell.work - done[0], 0))
            summarize(ctx, tasks, quiet=True)


def summarize(ctx: RunContext, tasks: list[Task], quiet: bool = False) -> dict:
    """summary.json and each task's CSV from the stored cells of this config; unless quiet (the per-cell
    refresh), also the plots and the tables."""
    out = ctx.store.dir
    summary: dict = {"config": ctx.cfg.model_dump(),  # and the model it named, resolved
                     "model": {"path": ctx.model.source, "original_context": ctx.original_context}}
    for t in tasks:
        summary.update(t.summarize(ctx))
    summary["comparisons"] = comparisons(ctx, tasks)
    summary["statistics"] = {"level": statistics.LEVEL, "bootstrap_resamples": statistics.N_BOOT,
                             "seed": ctx.cfg.seed, "perplexity": "two-stage bootstrap: documents, then position "
                             "blocks", "accuracy": "Wilson score", "differences": "paired bootstrap"}
    if not ctx.store.write:  # not process 0
        return summary
    write_json_atomic(out / "summary.json", summary)
    for t in tasks:
        write_csv_atomic(out / f"{t.name}.csv", summary[t.name])
    if quiet:
        return summary
    paths = [p for t in tasks for p in t.plots(ctx, summary, out)]
    summary["plots"] = [str(p) for p in paths]
    write_json_atomic(out / "summary.json", summary)
    for t in tasks:
        table = t.table(ctx, summary)
        if table is not None:
            ctx.console.print(table)
    for c in summary["comparisons"]:
        ctx.console.print(f"{c['a']} vs {c['b']}, {c['metric']}: delta {c['delta']:+.4g}, 95 % CI "
                          f"[{c['ci_low']:+.4g}, {c['ci_high']:+.4g}] ({c['n']}; "
                          f"{'resolved' if c['resolved'] else 'not resolved'})", highlight=False)
    for p in paths:
        ctx.console.print(f"plot: {p}")
    return summary


def comparisons(ctx: RunContext, tasks: list[Task]) -> list[dict]:
    """Every `compare` pair's paired differences, task by task; resolved = the interval excludes 0 and the
    difference exceeds rounding."""
    out = []
    for a, b in ctx.pairs:
        for t in tasks:
            for c in t.compare(ctx, a, b):
                res = statistics.resolved(c["delta"], statistics.Interval(c["ci_low"], c["ci_high"]), c["scale"])
                out.append({"a": a.label, "b": b.label, **c, "resolved": res})
    return out


def task_metrics(summary: dict) -> dict[str, float]:
    """Every task's flat metrics of a run's summary (the columns a sweep tabulates)."""
    return {k: v for t in TASKS for k, v in t().metrics(summary).items()}
