"""Export a training checkpoint to an HF directory (config.json carrying the rope configuration trained
with, safetensors, tokenizer files) that transformers loads directly. (`python -m yarn_jax.convert` does
the same with a logit check.)

    python -m yarn_jax.training.export runs/smollm2_yarn/checkpoints hf_out [--step N] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from yarn_jax.checkpoint.orbax_ckpt import is_orbax_root, is_orbax_step
from yarn_jax.errors import CheckpointError, YarnJaxError


def export_hf(checkpoint: str | Path, out: str | Path, *, step: int | None = None, dtype: str = "float32") -> Path:
    """ROOT (its latest complete step, or `step`) or ROOT/<step> -> an HF directory at `out` (replaced if it
    exists), streamed one parameter at a time (`yarn_jax.convert` without the logit check)."""
    from yarn_jax.convert import convert

    p = Path(checkpoint)
    if not (is_orbax_step(p) or is_orbax_root(p)):
        raise CheckpointError(f"{p}: not a yarn_jax checkpoint directory (train.py's RUN/checkpoints or one of "
                              "its numbered steps)")
    convert(p, out, to="hf", step=step, dtype=dtype, verify_logits=False, overwrite=True, progress=False)
    return Path(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--step", type=int, default=None)
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    args = ap.parse_args(argv)
    try:
        path = export_hf(args.checkpoint, args.out, step=args.step, dtype=args.dtype)
    except YarnJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
