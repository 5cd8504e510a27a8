"""Evaluate RoPE context-extension methods: perplexity (truncate / sliding), NLL by position, passkey.

    python eval.py                                    # the default evaluation (configs/eval/default.yaml)
    python eval.py --config configs/eval/default.yaml --lengths 2048 4096 --methods none yarn --scales 2 4
    python eval.py --model path/to/hf_dir --data docs.jsonl --protocol sliding --stride 256
    python eval.py --passkey-lengths 4096 8192 --protocol none

Every field of the config is a flag (see --help). Results go to --out (default runs/eval): cells.jsonl
(written per finished cell; a re-run resumes), summary.json, perplexity.csv, passkey.csv and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax

from yarn_jax.errors import command
from yarn_jax.evaluation.config import add_config_flags, load_config, overrides_from_args
from yarn_jax.evaluation.runner import run

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "eval" / "default.yaml"


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (flags override it)")
    add_config_flags(parser)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, overrides_from_args(args))
    summary = run(cfg)
    if jax.process_index() == 0:
        print(json.dumps({"out": cfg.out, "perplexity": summary["perplexity"], "passkey": summary["passkey"],
                          "plots": summary.get("plots", [])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
