from __future__ import annotations

from yarn_jax.cli_config import config_command
from yarn_jax.errors import command
from yarn_jax.evaluation.config import EvalConfig
from yarn_jax.evaluation.runner import run

main = command(config_command(
    EvalConfig, run, lambda cfg, summary: {"out": cfg.out, "perplexity": summary["perplexity"],
                                           "passkey": summary["passkey"], "plots": summary.get("plots", [])},
    prog="yarn-jax eval", description=__doc__, where="eval config"))
