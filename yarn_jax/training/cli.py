"""Fine-tune a LLaMA-family model for a longer context (YaRN and the other rope methods).

    yarn-jax train --model path/to/hf_dir --rope yarn:factor=4,original_max_position_embeddings=4096
    yarn-jax train --config configs/train/smollm2_yarn.yaml            # the SmolLM2 recipe (runs on a CPU)
    yarn-jax train --config configs/train/smollm2_yarn.yaml --steps 4 --out runs/try
    yarn-jax train --config configs/train/llama2_7b_yarn_s16.yaml --mesh fsdp_sequence   # the paper, on a pod

Without --config nothing is applied silently: the model keeps its own rope unless --rope gives one, and
the optimizer is the paper's (AdamW, lr 2e-5, 20 warmup steps, 400 steps). Every setting is a flag and a
YAML field (flags override the file; --help shows the values that will run). The run directory (--out)
holds checkpoints/ (orbax; re-running the same command resumes from the latest complete one),
metrics.jsonl, tb/ (TensorBoard) and train_config.json. Export a checkpoint with
`yarn-jax convert RUN/checkpoints OUT_DIR`. `python train.py` and `python -m yarn_jax train` are the same.
"""

from __future__ import annotations

import json

import jax

from yarn_jax import cli_config
from yarn_jax.errors import command
from yarn_jax.training.config import TrainConfig
from yarn_jax.training.loop import train


@command
def main(argv=None) -> int:
    cfg, note = cli_config.parse_command(TrainConfig, argv, prog="yarn-jax train", description=__doc__,
                                         where="train config")
    record = train(cfg, note=note)
    if jax.process_index() == 0:
        print(json.dumps({"out": cfg.out, "last": record}))
    return 0
