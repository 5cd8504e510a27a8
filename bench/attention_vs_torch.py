"""The attention core alone: yarn_jax's blockwise backend against torch's `scaled_dot_product_attention`
(causal, GQA), SmolLM2-135M's shapes (9 query heads over 3 KV heads, 64 dims, batch 1), float32, one layer.

Forward, or forward + backward (`--backward`: the vjp of a fixed cotangent, dq/dk/dv). Both in one
process on the same inputs; the two alternate, every call is timed, and the table quotes medians, the
median ratio and its range over the alternating pairs. Also checks the outputs agree.

    python bench/attention_vs_torch.py --lengths 4096 8192 16384 --repeats 7
    python bench/attention_vs_torch.py --lengths 4096 --backward
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from report import report  # noqa: E402

HEADS, KV_HEADS, DIM = 9, 3, 64


def measure(n: int, repeats: int, backward: bool) -> dict:
    import jax
    import numpy as np
    import torch

    from yarn_jax.attention import blockwise_attention

    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q = jax.random.normal(keys[0], (1, n, HEADS, DIM))
    k = jax.random.normal(keys[1], (1, n, KV_HEADS, DIM))
    v = jax.random.normal(keys[2], (1, n, KV_HEADS, DIM))
    cot = jax.random.normal(keys[3], (1, n, HEADS, DIM))
    if backward:
        ours = jax.jit(lambda q, k, v: jax.vjp(blockwise_attention, q, k, v)[1](cot))
    else:
        ours = jax.jit(blockwise_attention)
    tq, tk, tv, tcot = (torch.from_numpy(np.array(x)).transpose(1, 2).contiguous() for x in (q, k, v, cot))

    def theirs():
        if not backward:
            with torch.no_grad():
                return (torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True,
                                                                        enable_gqa=True),)
        a, b, c = (x.detach().requires_grad_() for x in (tq, tk, tv))
        torch.nn.functional.scaled_dot_product_attention(a, b, c, is_causal=True, enable_gqa=True).backward(tcot)
        return a.grad, b.grad, c.grad

    got = [np.asarray(x) for x in jax.tree.leaves(ours(q, k, v))]  # compiles; warm-up
    want = [x.transpose(1, 2).numpy() for x in theirs()]
    max_diff = max(float(np.abs(a - b).max()) for a, b in zip(got, want))
    times = {"yarn_jax": [], "torch": []}
    for r in range(repeats):
        for impl in (("yarn_jax", "torch") if r % 2 == 0 else ("torch", "yarn_jax")):
            t0 = time.perf_counter()
            if impl == "yarn_jax":
                jax.block_until_ready(ours(q, k, v))
            else:
                theirs()
            times[impl].append(time.perf_counter() - t0)
    ratios = [t / j for j, t in zip(times["yarn_jax"], times["torch"])]
    return {"tokens": n, "backward": backward, "yarn_jax_ms": 1e3 * statistics.median(times["yarn_jax"]),
            "torch_ms": 1e3 * statistics.median(times["torch"]), "ratio": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios), "max_abs_diff": max_diff, "times": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--backward", action="store_true", help="time forward + backward (dq, dk, dv)")
    ap.add_argument("--out", default=None, help="JSON (default bench/results/attention_vs_torch[_backward].json)")
    args = ap.parse_args()
    out = args.out or HERE / "results" / f"attention_vs_torch{'_backward' if args.backward else ''}.json"
    rows = [measure(n, args.repeats, args.backward) for n in args.lengths]
    report(out, [r.pop("times") for r in rows], rows,
           [("tokens", "{tokens}"), ("yarn_jax ms", "{yarn_jax_ms:.0f}"), ("torch ms", "{torch_ms:.0f}"),
            ("ratio (torch / yarn_jax time)", "{ratio:.2f}"), ("range", "{ratio_min:.2f}–{ratio_max:.2f}"),
            ("max |Δ|", "{max_abs_diff:.1e}")])


if __name__ == "__main__":
    main()
