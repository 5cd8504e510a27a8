"""Fine-tune a LLaMA-family model for a longer context (YaRN and the other rope methods).

    python train.py --config configs/train/smollm2_yarn.yaml            # the SmolLM2 recipe (runs on a CPU)
    python train.py --config configs/train/smollm2_yarn.yaml --steps 4 --out runs/try
    python train.py --config configs/train/llama2_7b_yarn_s16.yaml --mesh fsdp_sequence   # the paper, on a pod

Every field of the config is a flag (see --help). The run directory (--out) holds checkpoints/ (orbax;
re-running the same command resumes from the latest complete one), metrics.jsonl, tb/ (TensorBoard) and
train_config.json. Export a checkpoint to an HF directory with
`python -m yarn_jax.training.export RUN/checkpoints OUT_DIR`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax

from yarn_jax import cli_config
from yarn_jax.errors import command
from yarn_jax.training.config import TrainConfig
from yarn_jax.training.loop import train

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "train" / "smollm2_yarn.yaml"


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (flags override it)")
    cli_config.add_config_flags(parser, TrainConfig)
    args = parser.parse_args(argv)
    cfg = cli_config.load_config(TrainConfig, args.config, cli_config.overrides_from_args(args, TrainConfig),
                                 where="train config")
    record = train(cfg)
    if jax.process_index() == 0:
        print(json.dumps({"out": cfg.out, "last": record}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
