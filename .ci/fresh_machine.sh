#!/usr/bin/env bash
# The README's first command as a new user meets it (CI runs this before the test suite): a runtime-only
# venv (`pip install -c requirements.txt -e .`, as `make eval` builds it: no torch anywhere), an empty asset
# cache, `yarn-jax assets`, then the default evaluation at its first length, whose perplexities must be the
# README's table's. Everything lives in a fresh temporary directory, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/yarn_jax-fresh.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$SECONDS
python3 -m venv "$work/venv"
# (pip's exit status stands; only the index-location warnings of this machine's pip config are dropped)
"$work/venv/bin/python" -m pip install -q -c requirements.txt -e . 2> >(grep -v "^WARNING: Location" >&2)
"$work/venv/bin/python" -c "import yarn_jax"
if "$work/venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "fresh machine check: torch is importable in the runtime venv; it must not be" >&2
    exit 1
fi
export YARN_JAX_CACHE="$work/cache"
"$work/venv/bin/yarn-jax" assets
"$work/venv/bin/yarn-jax" eval --lengths 2048 --out "$work/eval" > "$work/eval.json"
"$work/venv/bin/python" .ci/readme_table.py "$work/eval/summary.json" README.md
echo "fresh machine check: passed in $((SECONDS - start)) s (runtime venv without torch, empty cache, assets, eval at 2048)"
