"""yarn-jax convert SRC DST: convert a checkpoint, verified by a logit check (the result must give the
source's logits on a real prompt before it is moved into place).

    yarn-jax convert path/to/hf_dir runs/base/checkpoints              # HF -> yarn_jax (orbax)
    yarn-jax convert runs/smollm2_yarn/checkpoints hf_out               # a fine-tuned run -> transformers
    yarn-jax convert runs/smollm2_yarn/checkpoints model.gguf --dtype bfloat16    # -> llama.cpp
    yarn-jax convert hf_dir hf_yarn --rope yarn:factor=4,original_max_position_embeddings=8192   # new rope

  SRC: an HF directory (safetensors, single or sharded), a .gguf file, a yarn_jax checkpoint (train's
       RUN/checkpoints root — its latest complete step, or --step N — or a ROOT/<step> directory), or
       `smollm2`, the bundled model (as eval and train take it; fetched on first use).
  DST: the new HF directory (--to hf), yarn_jax checkpoint root (--to orbax) or llama.cpp file (--to gguf,
       a name ending .gguf; LLaMA, Qwen2, Qwen3, SmolLM3; llama.cpp's rope keys for default/linear/ntk/yarn);
       local or any etils/orbax path (gs://...). Default --to: gguf for a DST named *.gguf, hf for yarn_jax
       sources, orbax otherwise. An existing DST is refused unless --overwrite (and then only a checkpoint or
       an empty directory is replaced).
"""

from __future__ import annotations

import json
import sys

from yarn_jax.assets import resolve_model
from yarn_jax.checkpoint.gguf import GGUF_DTYPES
from yarn_jax.convert import convert
from yarn_jax.errors import CommandHelp, CommandParser, command
from yarn_jax.rope import parse_rope_spec


def parse_rope(text: str | None):
    """--rope: None keeps the source's rope; `default`/`none` removes any scaling."""
    if text is None:
        return None
    return parse_rope_spec(text) or {"rope_type": "default"}


@command
def main(argv=None) -> int:
    ap = CommandParser(prog="yarn-jax convert", description=__doc__,
                       formatter_class=CommandHelp)
    ap.add_argument("src", help="HF directory, .gguf file, yarn_jax checkpoint or `smollm2` to read")
    ap.add_argument("dst", help="the new checkpoint (a path that does not exist yet, unless --overwrite)")
    ap.add_argument("--to", choices=["hf", "orbax", "gguf"], default=None,
                    help="output format (default: gguf for a DST named *.gguf, hf for a yarn_jax SRC, else orbax)")
    ap.add_argument("--step", type=int, default=None,
                    help="step of a yarn_jax source (default: the latest complete one)")
    ap.add_argument("--rope", default=None,
                    help="rope configuration written into the result: an HF rope_scaling dict as JSON/YAML, "
                         "e.g. '{rope_type: yarn, factor: 16, original_max_position_embeddings: 4096}', or "
                         "the short form yarn:factor=16,original_max_position_embeddings=4096 (default: the "
                         "source's own)")
    ap.add_argument("--dtype", choices=list(GGUF_DTYPES), default="float32",
                    help="storage dtype of the written weights: float32, float16, bfloat16; for --to gguf also "
                         "the block-quantized q8_0, q5_1, q5_0, q4_1, q4_0 (norms stay float32, as llama.cpp "
                         "writes them; docs/conversion.md)")
    ap.add_argument("--no-verify", dest="verify", action="store_false", help="skip the logit check")
    ap.add_argument("--verify-tokens", type=int, default=1024, help="prompt length of the logit check")
    ap.add_argument("--reference", choices=["yarn_jax", "transformers"], default="yarn_jax",
                    help="run the source in yarn_jax, or in transformers (HF sources, needs torch)")
    ap.add_argument("--max-abs-logit", type=float, default=None, help="threshold in |logit| (default: 1e-3)")
    ap.add_argument("--max-kl", type=float, default=None, help="threshold in nats/token (default: 1e-6)")
    ap.add_argument("--max-shard-gb", type=float, default=5.0, help="HF output: safetensors shard size")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an existing DST (only a checkpoint directory or an empty one)")
    args = ap.parse_args(argv)
    report = convert(resolve_model(args.src), args.dst, to=args.to, step=args.step, rope=parse_rope(args.rope),
                     dtype=args.dtype, verify_logits=args.verify, verify_tokens=args.verify_tokens,
                     reference=args.reference, max_abs=args.max_abs_logit, max_kl=args.max_kl,
                     overwrite=args.overwrite, max_shard_bytes=args.max_shard_gb * 2**30)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
