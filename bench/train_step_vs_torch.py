"""One training step (forward, backward, AdamW update, gradient clipping) on SmolLM2-135M, float32:
yarn_jax (`TrainStep`, YaRN x2) against transformers' LlamaForCausalLM (sdpa) + torch.optim.AdamW, same
tokens of a Shakespeare play, same rope, at 1k and 4k tokens, with rematerialization on and off
(yarn_jax's `--jax-remat` policy per scanned layer, `full` by default or `attention`, which also keeps the
attention kernel's output; transformers `gradient_checkpointing_enable()`).

Each (implementation, length, remat) runs in its own subprocess (peak RSS = that run alone): one untimed
step (compilation / allocator warm-up), then timed steps; implementations alternate, repeats follow each
other, the table quotes medians and ratios. JSON is written after every measurement.

    python bench/train_step_vs_torch.py --lengths 1024 4096 --repeats 2 --steps 2 [--jax-remat attention]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report import report  # noqa: E402
ROPE = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 8192}


def _ids(n: int):
    from tokenizers import Tokenizer

    from yarn_jax import assets

    tok = Tokenizer.from_file(str(assets.smollm2() / "tokenizer.json"))
    return tok.encode(assets.play_text("hamlet")).ids[:n]


def run_jax(n: int, remat: str, steps: int) -> list[float]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import yarn_jax
    from yarn_jax import assets
    from yarn_jax.training.step import TrainStep, donatable, make_optimizer

    pm = yarn_jax.from_pretrained(assets.smollm2(), rope_scaling=ROPE, remat=remat or "none")
    step = TrainStep(pm.module, make_optimizer(2e-5, warmup_steps=0, clip_norm=1.0))
    state = donatable(nnx.state(pm.module))  # as the training loop: parameters in buffers the step can donate
    del pm
    opt = step.init(state)
    batch = {"input_ids": jnp.asarray([_ids(n)], jnp.int32)}
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        state, opt, m = step(state, opt, batch)
        jax.block_until_ready(m["loss"])
        if i:
            times.append(time.perf_counter() - t0)
    return times


def run_torch(n: int, remat: bool, steps: int) -> list[float]:
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    from yarn_jax import assets

    path = assets.smollm2()
    config = AutoConfig.from_pretrained(str(path))
    config.rope_parameters = {**ROPE, "rope_theta": config.rope_parameters["rope_theta"]}
    model = LlamaForCausalLM.from_pretrained(str(path), config=config, attn_implementation="sdpa",
                                             torch_dtype=torch.float32)
    model.train()
    if remat:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, betas=(0.9, 0.95), weight_decay=0.0)
    ids = torch.tensor([_ids(n)])
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    return times


def child(impl: str, n: int, remat: bool, steps: int, policy: str) -> None:
    times = run_jax(n, policy if remat else "", steps) if impl == "yarn_jax" else run_torch(n, remat, steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"impl": impl, "tokens": n, "remat": remat,
                      "remat_policy": (policy if impl == "yarn_jax" else "gradient_checkpointing") if remat else None,
                      "step_s": statistics.median(times),
                      "tok_s": n / statistics.median(times), "peak_gb": peak, "times": times}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--remat", choices=["on", "off", "both"], default="both")
    ap.add_argument("--jax-remat", default="full", choices=["full", "attention", "dots"],
                    help="yarn_jax's remat policy when remat is on")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per measurement")
    ap.add_argument("--out", default=str(HERE / "results" / "train_step_vs_torch.json"))
    ap.add_argument("--child", nargs=5, metavar=("IMPL", "N", "REMAT", "STEPS", "POLICY"))
    args = ap.parse_args()
    if args.child:
        impl, n, remat, steps, policy = args.child
        return child(impl, int(n), remat == "1", int(steps), policy)
    from yarn_jax import assets

    assets.smollm2()
    remats = {"on": [True], "off": [False], "both": [True, False]}[args.remat]
    runs: list[dict] = []
    for n in args.lengths:
        for remat in remats:
            for r in range(args.repeats):
                for impl in ("yarn_jax", "torch") if r % 2 == 0 else ("torch", "yarn_jax"):
                    out = subprocess.run([sys.executable, __file__, "--child", impl, str(n), "1" if remat else "0",
                                          str(args.steps), args.jax_remat], capture_output=True, text=True, timeout=7200)
                    if out.returncode:
                        raise SystemExit(out.stderr[-3000:])
                    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                    print(f"{impl} T={n} remat={remat}: {runs[-1]['tok_s']:.1f} tok/s, "
                          f"{runs[-1]['peak_gb']:.2f} GB", file=sys.stderr)
                    Path(args.out).write_text(json.dumps({"runs": runs}, indent=2))
    rows = []
    for n in args.lengths:
        for remat in remats:
            med = {impl: {k: statistics.median(x[k] for x in runs if x["impl"] == impl and x["tokens"] == n
                                               and x["remat"] == remat) for k in ("tok_s", "peak_gb")}
                   for impl in ("yarn_jax", "torch")}
            rows.append({"tokens": n, "remat": remat, "yarn_jax_tok_s": med["yarn_jax"]["tok_s"],
                         "torch_tok_s": med["torch"]["tok_s"], "ratio": med["yarn_jax"]["tok_s"] / med["torch"]["tok_s"],
                         "yarn_jax_peak_gb": med["yarn_jax"]["peak_gb"], "torch_peak_gb": med["torch"]["peak_gb"]})
    for r in rows:
        r["remat_name"] = f"on ({args.jax_remat})" if r["remat"] else "off"
    report(args.out, runs, rows, [("tokens", "{tokens}"), ("remat", "{remat_name}"),
                                  ("yarn_jax tok/s", "{yarn_jax_tok_s:.1f}"), ("torch tok/s", "{torch_tok_s:.1f}"),
                                  ("ratio", "{ratio:.2f}"), ("yarn_jax peak RSS", "{yarn_jax_peak_gb:.2f} GB"),
                                  ("torch peak RSS", "{torch_peak_gb:.2f} GB")])

if __name__ == "__main__":
    main()
