"""Forward + per-token NLL on a Shakespeare play: yarn_jax (attention `auto`) against transformers'
PyTorch LlamaForCausalLM (sdpa), SmolLM2-135M, float32, YaRN factor 4, same tokens, in one run.

Each measurement runs in its own subprocess (so peak RSS is that implementation's alone); the two
implementations alternate and repeat, and the table quotes medians and their ratio. Model FLOPs
utilisation is against a JAX float32 matmul peak measured in the same run. Results are written to JSON
after every measurement (an interrupted run keeps what it measured).

    python bench/forward_vs_torch.py --lengths 2048 4096 8192 16384 32768 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROPE = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}
HERE = Path(__file__).resolve().parent
# Up to this length both implementations run once untimed at full length before the timed calls; beyond
# it (minutes per call) yarn_jax is compiled ahead of time and torch warms up on a 256-token prefix.
FULL_WARMUP_MAX = 8192


def _tokens(n: int, play: str):
    from tokenizers import Tokenizer

    from yarn_jax import assets

    tok = Tokenizer.from_file(str(assets.smollm2() / "tokenizer.json"))
    ids = tok.encode(assets.play_text(play)).ids
    if len(ids) < n:
        raise SystemExit(f"play {play!r} has {len(ids)} tokens, fewer than {n}")
    return ids[:n]


def worker_jax(n: int, play: str, timed_runs: int) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    import yarn_jax
    from yarn_jax import assets
    from yarn_jax.model import next_token_log_probs

    model = yarn_jax.from_pretrained(str(assets.smollm2()), rope_scaling=ROPE, attention_backend="auto")
    ids = np.asarray([_tokens(n, play)], np.int32)
    graphdef, state = nnx.split(model.module)
    t0 = time.perf_counter()  # compile ahead of time; the timed calls then run the compiled program
    fn = jax.jit(lambda s, x: next_token_log_probs(nnx.merge(graphdef, s), x)).lower(state, ids).compile()
    compile_seconds = time.perf_counter() - t0
    if n <= FULL_WARMUP_MAX:  # a first execution carries ~2 s of one-time setup; beyond this it is <1 %
        fn(state, ids).block_until_ready()
    times = []
    for _ in range(timed_runs):
        t0 = time.perf_counter()
        lp = fn(state, ids).block_until_ready()
        times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "compile_seconds": compile_seconds, "nll": float(-np.mean(np.asarray(lp)))}


def worker_torch(n: int, play: str, timed_runs: int) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    from yarn_jax import assets
    from yarn_jax.config import LlamaConfig

    torch.set_num_threads(os.cpu_count() or 1)
    theta = LlamaConfig.from_json_file(assets.smollm2() / "config.json").rope.theta  # the checkpoint's base
    model = LlamaForCausalLM.from_pretrained(str(assets.smollm2()), dtype=torch.float32, attn_implementation="sdpa",
                                             rope_parameters={**ROPE, "rope_theta": theta}).eval()
    ids = torch.tensor([_tokens(n, play)])

    def run(x):
        with torch.no_grad():
            logits = model(x).logits[0, :-1]
            return torch.log_softmax(logits, -1).gather(-1, x[0, 1:, None]).mean()

    run(ids if n <= FULL_WARMUP_MAX else ids[:, :256])  # long inputs: warm up on a prefix (no JIT to amortise)
    times = []
    for _ in range(timed_runs):
        t0 = time.perf_counter()
        mean_lp = run(ids)
        times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "nll": float(-mean_lp)}


def worker_peak() -> dict:
    """Best JAX float32 matmul rate (4096^2), the MFU denominator."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (4096, 4096), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        best = max(best, 2 * 4096**3 / (time.perf_counter() - t0))
    return {"gflops": best / 1e9}


def model_flops(n: int) -> float:
    """Forward FLOPs of SmolLM2-135M on n tokens: 2 x (non-embedding params + LM head) per token plus
    causal attention (QK^T and PV over n^2/2 pairs, 9 heads x 64 dims x 30 layers)."""
    layers, e, heads, kv, d, f, vocab = 30, 576, 9, 3, 64, 1536, 49152
    per_layer = e * heads * d + 2 * e * kv * d + heads * d * e + 3 * e * f
    dense = 2 * n * (layers * per_layer + e * vocab)
    attention = layers * 2 * 2 * heads * d * n * n / 2
    return dense + attention


def run_worker(kind: str, n: int, play: str, timed_runs: int, timeout: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--tokens", str(n), "--play", play,
           "--timed-runs", str(timed_runs)]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr or "")[-600:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384, 32768])
    p.add_argument("--repeats", type=int, default=3, help="subprocess runs per implementation and length")
    p.add_argument("--timed-runs", type=int, default=1, help="timed calls per subprocess after the warm-up")
    p.add_argument("--play", default="hamlet")
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--out", default=str(HERE / "results" / "forward_vs_torch.json"))
    p.add_argument("--worker", choices=["jax", "torch", "peak"], help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        result = (worker_peak() if args.worker == "peak" else
                  {"jax": worker_jax, "torch": worker_torch}[args.worker](args.tokens, args.play, args.timed_runs))
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print(json.dumps(result))
        return

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"config": {"model": "SmolLM2-135M-Instruct (Q4_1 dequantized, float32)", "rope": ROPE,
                         "play": args.play, "repeats": args.repeats, "cpu_count": os.cpu_count()},
              "peak": run_worker("peak", 0, args.play, 0, 600), "runs": []}
    peak_gflops = report["peak"].get("gflops")

    def save() -> None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, out)

    save()
    with Progress() as progress:
        task = progress.add_task("measuring", total=len(args.lengths) * args.repeats * 2)
        for n in args.lengths:
            for r in range(args.repeats):
                order = ("jax", "torch") if r % 2 == 0 else ("torch", "jax")
                for kind in order:
                    progress.update(task, description=f"{kind} T={n} run {r + 1}")
                    res = run_worker(kind, n, args.play, args.timed_runs, args.timeout)
                    report["runs"].append({"impl": kind, "tokens": n, "repeat": r, **res})
                    save()
                    progress.advance(task)

    table = Table(title=f"SmolLM2-135M forward + per-token NLL, YaRN x4, float32 ({os.cpu_count()} CPU cores)")
    for col in ("T", "yarn_jax tok/s", "torch tok/s", "ratio", "per repeat", "yarn_jax GB", "torch GB",
                "yarn_jax MFU", "NLL jax / torch"):
        table.add_column(col, justify="right")
    summary = []
    for n in args.lengths:
        row = {"tokens": n}
        for kind in ("jax", "torch"):
            ok = [x for x in report["runs"] if x["impl"] == kind and x["tokens"] == n and "seconds" in x]
            if ok:
                secs = statistics.median(x["seconds"] for x in ok)
                row[kind] = {"tok_s": n / secs, "seconds": secs, "peak_rss_gb": statistics.median(
                    x["peak_rss_gb"] for x in ok), "nll": ok[0]["nll"], "runs": len(ok)}
        if "jax" in row and "torch" in row:
            row["ratio_tok_s"] = row["jax"]["tok_s"] / row["torch"]["tok_s"]
            secs = {(x["impl"], x["repeat"]): x["seconds"] for x in report["runs"]
                    if x["tokens"] == n and "seconds" in x}
            row["ratio_per_repeat"] = [secs["torch", r] / secs["jax", r] for r in range(args.repeats)
                                       if ("jax", r) in secs and ("torch", r) in secs]  # each alternating pair
        if "jax" in row and peak_gflops:
            row["jax"]["mfu"] = model_flops(n) / row["jax"]["seconds"] / (peak_gflops * 1e9)
        summary.append(row)
        g = lambda k, f, key="tok_s": f.format(row[k][key]) if k in row and key in row[k] else "—"  # noqa
        table.add_row(str(n), g("jax", "{:.0f}"), g("torch", "{:.0f}"),
                      f"{row['ratio_tok_s']:.2f}" if "ratio_tok_s" in row else "—",
                      f"{min(row['ratio_per_repeat']):.2f}–{max(row['ratio_per_repeat']):.2f}"
                      if row.get("ratio_per_repeat") else "—",
                      g("jax", "{:.2f}", "peak_rss_gb"), g("torch", "{:.2f}", "peak_rss_gb"),
                      g("jax", "{:.0%}", "mfu"),
                      f"{row['jax']['nll']:.4f} / {row['torch']['nll']:.4f}" if "ratio_tok_s" in row else "—")
    for kind in ("jax", "torch"):  # peak-memory slope against T (least squares), GB per 1k tokens
        pts = [(r["tokens"], r[kind]["peak_rss_gb"]) for r in summary if kind in r]
        if len(pts) >= 2:
            mx = sum(x for x, _ in pts) / len(pts)
            my = sum(y for _, y in pts) / len(pts)
            slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
            report.setdefault("memory_slope_gb_per_1k_tokens", {})[kind] = slope * 1000
    report["summary"] = summary
    save()
    console = Console(width=140)
    console.print(table)
    console.print(f"JAX float32 matmul peak: {peak_gflops:.0f} GFLOP/s" if peak_gflops else "peak: —")
    console.print(f"peak-RSS slope (GB per 1k tokens): {report.get('memory_slope_gb_per_1k_tokens')}")
    console.print(f"JSON: {out}")


if __name__ == "__main__":
    main()
