"""Fine-tune a LLaMA-family model for a longer context: `python train.py --help` (= `yarn-jax train`)."""

import sys

from yarn_jax.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
