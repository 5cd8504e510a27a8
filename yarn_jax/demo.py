"""Demo: SmolLM2-135M with and without YaRN, perplexity of a play excerpt in yarn_jax next to transformers'
PyTorch LlamaForCausalLM on the same tokens (needs torch: the `test` extra; --no-reference without it).

    yarn-jax demo [--play hamlet] [--tokens 2048] [--rope yarn:factor=4,original_max_position_embeddings=8192]
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time

import jax
import numpy as np
from rich.table import Table

from yarn_jax import assets
from yarn_jax.api import from_pretrained
from yarn_jax.errors import CommandHelp, CommandParser, command
from yarn_jax.rope import HF_ROPE_TYPES, parse_rope_spec
from yarn_jax.progress import console as log_console


def mean_nll(logits: np.ndarray, ids: np.ndarray) -> float:
    """Mean next-token NLL of ids [1, T] under logits [1, T, V] (float32 log-softmax)."""
    log_probs = jax.nn.log_softmax(logits[0, :-1].astype(np.float32), axis=-1)
    return float(-np.mean(np.take_along_axis(np.asarray(log_probs), ids[0, 1:, None], axis=-1)))


def transformers_logits(model_dir: str, rope: dict | None, theta: float, ids: np.ndarray) -> np.ndarray:
    import torch
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its loading bars would interleave with our report

    kwargs = {} if rope is None else {"rope_parameters": {"rope_theta": theta, **rope}}
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa",
                                             **kwargs).eval()
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.numpy()


@command
def main(argv=None) -> None:
    parser = CommandParser(prog="yarn-jax demo", description=__doc__,
                                     formatter_class=CommandHelp)
    parser.add_argument("--play", default="hamlet", help="play (file stem) from the Shakespeare corpus")
    parser.add_argument("--tokens", type=int, default=2048, help="excerpt length in tokens")
    parser.add_argument("--rope", action="append", default=None,
                        help="rope configuration(s) to compare (JSON or short form); repeatable (default: "
                             "default and yarn:factor=4,original_max_position_embeddings=8192)")
    parser.add_argument("--no-reference", action="store_true", help="skip the transformers comparison")
    args = parser.parse_args(argv)
    specs = args.rope or ["default", "yarn:factor=4,original_max_position_embeddings=8192"]
    ropes = [parse_rope_spec(s) for s in specs]  # fail on a bad spec before any compute

    console = log_console()
    reference = not args.no_reference
    if reference and importlib.util.find_spec("torch") is None:
        console.print("torch is not installed (the `test` extra): yarn_jax only, no transformers column")
        reference = False
    model_dir = str(assets.smollm2())
    model = from_pretrained(model_dir)
    text = assets.play_text(args.play)
    ids = np.asarray([model.tokenizer().encode(text).ids[: args.tokens]], dtype=np.int32)
    console.print(f"SmolLM2-135M-Instruct, {ids.shape[1]} tokens of {args.play}, float32")

    table = Table(title=f"Perplexity of {ids.shape[1]} tokens of {args.play}")
    for col in ("rope", "yarn_jax ppl", "transformers ppl", "max |Δlogit|", "yarn_jax s (incl. compile)",
                "transformers s (incl. load)"):
        table.add_column(col, justify="right" if col != "rope" else "left",
                         overflow="fold")  # a long rope spec wraps, never cut
    rows = []
    for spec, rope in zip(specs, ropes):
        m = from_pretrained(model_dir, rope_scaling=rope) if rope else model
        with console.status(f"yarn_jax forward ({spec})"):
            t0 = time.perf_counter()
            ours = np.asarray(m.logits(ids))
            t_ours = time.perf_counter() - t0
        row = {"rope": spec, "yarn_jax_ppl": float(np.exp(mean_nll(ours, ids))), "yarn_jax_seconds": t_ours}
        hf_supported = m.config.rope.rope_type in HF_ROPE_TYPES
        if reference and hf_supported:
            with console.status(f"transformers forward ({spec})"):
                t0 = time.perf_counter()
                ref = transformers_logits(model_dir, rope, m.config.rope.theta, ids)
                row["transformers_seconds"] = time.perf_counter() - t0
            row["transformers_ppl"] = float(np.exp(mean_nll(ref, ids)))
            row["max_abs_logit_diff"] = float(np.abs(ours - ref).max())
        rows.append(row)
        fmt = lambda k, f: f.format(row[k]) if k in row else "—"  # noqa: E731
        table.add_row(spec, fmt("yarn_jax_ppl", "{:.4f}"), fmt("transformers_ppl", "{:.4f}"),
                      fmt("max_abs_logit_diff", "{:.2e}"), fmt("yarn_jax_seconds", "{:.1f}"),
                      fmt("transformers_seconds", "{:.1f}"))
    log_console(stream=sys.stdout).print(table)  # a terminal's width, or unwrapped in a file
    print(json.dumps({"play": args.play, "tokens": int(ids.shape[1]), "results": rows}))


if __name__ == "__main__":
    sys.exit(main())
