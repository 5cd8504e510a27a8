"""Export a training checkpoint to an HF directory (config.json carrying the rope configuration trained
with, safetensors, tokenizer files) that transformers loads directly.

    python -m yarn_jax.training.export runs/smollm2_yarn/checkpoints hf_out [--step N] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from yarn_jax.checkpoint import load_orbax_checkpoint, save_hf_checkpoint
from yarn_jax.checkpoint.orbax_ckpt import is_orbax_root, is_orbax_step
from yarn_jax.errors import CheckpointError, YarnJaxError


def export_hf(checkpoint: str | Path, out: str | Path, *, step: int | None = None, dtype: str = "float32") -> Path:
    """ROOT (its latest complete step, or `step`) or ROOT/<step> -> an HF directory at `out`."""
    p = Path(checkpoint)
    if is_orbax_step(p):
        root, step = p.parent, int(p.name)
    elif is_orbax_root(p):
        root = p
    else:
        raise CheckpointError(f"{p}: not a yarn_jax checkpoint directory (train.py's RUN/checkpoints or one of "
                              "its numbered steps)")
    cfg, params = load_orbax_checkpoint(root, step)
    return save_hf_checkpoint(out, cfg, params, dtype=dtype, tokenizer_dir=str(root))


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
