"""Export a training checkpoint to an HF directory (config.json carrying the rope configuration trained
with, safetensors, tokenizer files) that transformers loads directly. (`python -m yarn_jax.convert` does
the same with a logit check.)

    python -m yarn_jax.training.export runs/smollm2_yarn/checkpoints hf_out [--step N] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from yarn_jax.checkpoint import checkpoint_format
from yarn_jax.checkpoint.layout import SAFETENSORS_DTYPES
from yarn_jax.convert import convert
from yarn_jax.errors import CheckpointError, command


def export_hf(checkpoint: str | Path, out: str | Path, *, step: int | None = None, dtype: str = "float32",
              overwrite: bool = False) -> Path:
    """ROOT (its latest complete step, or `step`) or ROOT/<step> -> a new HF directory at `out`, streamed one
    parameter at a time (`yarn_jax.convert` without the logit check). An existing `out` is refused unless
    `overwrite` and it is a checkpoint directory (or empty); `out` may not contain the checkpoint."""
    p = Path(checkpoint)
    if checkpoint_format(p) != "orbax":
        raise CheckpointError(f"{p}: not a yarn_jax checkpoint directory (train.py's RUN/checkpoints or one of "
                              "its numbered steps)")
    convert(p, out, to="hf", step=step, dtype=dtype, verify_logits=False, overwrite=overwrite, progress=False)
    return Path(out)


@command
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--step", type=int, default=None)
    ap.add_argument("--dtype", choices=list(SAFETENSORS_DTYPES), default="float32")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing HF directory at OUT")
    args = ap.parse_args(argv)
    path = export_hf(args.checkpoint, args.out, step=args.step, dtype=args.dtype, overwrite=args.overwrite)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
