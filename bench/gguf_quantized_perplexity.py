"""What a quantized GGUF export costs, and whether llama.cpp reads it as written: the bundled SmolLM2 exported
by `yarn-jax convert` as float32 and each block-quantized type, then the perplexity of the first N tokens of
Hamlet (one window, the model's BOS first) computed by yarn_jax reading each file and — with
llama-cpp-python installed — by llama.cpp on the same tokens (float32 KV cache).

    python bench/gguf_quantized_perplexity.py [--tokens 4096] [--dtypes float32 q8_0 q4_0]
        [--out bench/results/gguf_quantized_perplexity.json]

The documented tolerances (docs/conversion.md): llama.cpp's perplexity on a file equals yarn_jax's reading
of that file within 1e-3 relative (as the float32 opt-in test holds); the quantization cost itself is
reported, not bounded.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from report import report  # noqa: E402
from test_gguf import llama_cpp_llama  # noqa: E402

import yarn_jax  # noqa: E402
from yarn_jax import assets  # noqa: E402
from yarn_jax.convert import convert  # noqa: E402
from yarn_jax.model import next_token_log_probs  # noqa: E402


def llama_cpp_log_probs(path: Path, ids: list[int]) -> np.ndarray:
    """[n - 1] log p of each next token by llama.cpp (logits of every position, float32 KV cache)."""
    llm = llama_cpp_llama(path, n_ctx=max(512, len(ids)))
    llm.eval(ids)
    scores = np.asarray(llm.scores[:len(ids)], np.float64)
    lp = scores - np.logaddexp.reduce(scores, axis=-1, keepdims=True)
    del llm
    return lp[np.arange(len(ids) - 1), ids[1:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "q8_0", "q5_1", "q4_0"])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gguf_quantized_perplexity.json"))
    args = ap.parse_args()
    have_llama = importlib.util.find_spec("llama_cpp") is not None
    base = yarn_jax.from_pretrained("smollm2")
    ids = [base.config.bos_token_id] + base.tokenizer().encode(assets.play_text("hamlet"),
                                                                add_special_tokens=False).ids[:args.tokens - 1]
    rows, runs = [], []
    ref_ppl = None
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes:
            path = Path(tmp) / f"smollm2-{dtype}.gguf"
            t0 = time.perf_counter()
            rep = convert(str(assets.smollm2()), path, dtype=dtype, verify_tokens=256, progress=False)
            seconds = time.perf_counter() - t0
            model = yarn_jax.from_pretrained(path)
            ours = np.asarray(jax.jit(next_token_log_probs)(model.module, np.asarray([ids])))[0]
            del model
            ppl = float(np.exp(-ours.mean()))
            ref_ppl = ppl if dtype == "float32" else ref_ppl
            row = {"dtype": dtype, "mb": path.stat().st_size / 1e6, "types": rep["gguf"]["tensor_types"],
                   "check_passed": rep["verify"]["passed"], "ppl_yarn_jax": ppl,
                   "vs_float32": ppl / ref_ppl - 1 if ref_ppl else float("nan"), "convert_s": seconds,
                   "ppl_llama_cpp": float("nan"), "llama_cpp_vs_yarn_jax": float("nan")}
            if have_llama:
                theirs = llama_cpp_log_probs(path, ids)
                row["ppl_llama_cpp"] = float(np.exp(-theirs.mean()))
                row["llama_cpp_vs_yarn_jax"] = row["ppl_llama_cpp"] / ppl - 1
                row["mean_abs_dlogprob"] = float(np.abs(theirs - ours).mean())
            rows.append(row)
            runs.append({**row, "verify": rep["verify"]})
            print(row, flush=True)
    report(args.out, runs, rows, [("dtype", "{dtype}"), ("file MB", "{mb:.1f}"), ("check", "{check_passed}"),
                                  ("ppl (yarn_jax)", "{ppl_yarn_jax:.4f}"), ("vs float32", "{vs_float32:+.2%}"),
                                  ("ppl (llama.cpp)", "{ppl_llama_cpp:.4f}"),
                                  ("llama.cpp vs yarn_jax", "{llama_cpp_vs_yarn_jax:+.1e}")])


if __name__ == "__main__":
    main()
