"""Evaluate RoPE context-extension methods: `python eval.py --help` (= `yarn-jax eval`)."""

import sys

from yarn_jax.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
