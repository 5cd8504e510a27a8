"""Evaluate RoPE context-extension methods: perplexity (truncate / sliding), NLL by position, passkey.

    yarn-jax eval                                   # the default evaluation (= configs/eval/default.yaml)
    yarn-jax eval --lengths 2048 4096 --methods none yarn --scales 2 4
    yarn-jax eval --model path/to/hf_dir --data docs.jsonl --protocol sliding --stride 256
    yarn-jax eval --config configs/eval/llama2_7b_yarn_long.yaml --mesh fsdp_sequence
    yarn-jax eval --passkey-lengths 4096 8192 --protocol none

Every setting is a flag and a YAML field (--config FILE; flags override it). Results go to --out:
cells.jsonl (written per finished cell; a re-run resumes), summary.json, perplexity.csv, passkey.csv and
PNG plots. `python eval.py` and `python -m yarn_jax eval` are the same command.
"""

from __future__ import annotations

import json

import jax

from yarn_jax import cli_config
from yarn_jax.errors import command
from yarn_jax.evaluation.config import EvalConfig
from yarn_jax.evaluation.runner import run


@command
def main(argv=None) -> int:
    cfg, note = cli_config.parse_command(EvalConfig, argv, prog="yarn-jax eval", description=__doc__,
                                         where="eval config")
    summary = run(cfg, note=note)
    if jax.process_index() == 0:
        print(json.dumps({"out": cfg.out, "perplexity": summary["perplexity"], "passkey": summary["passkey"],
                          "plots": summary.get("plots", [])}))
    return 0
