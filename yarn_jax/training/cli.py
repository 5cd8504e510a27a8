from __future__ import annotations

from yarn_jax.cli_config import config_command
from yarn_jax.errors import command
from yarn_jax.training.config import TrainConfig
from yarn_jax.training.loop import train

main = command(config_command(TrainConfig, train, lambda cfg, last: {"out": cfg.out, "last": last},
                              prog="yarn-jax train", description=__doc__, where="train config"))
