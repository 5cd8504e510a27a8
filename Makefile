# Fresh-machine entry points. Each target sets up what it needs (idempotent): a venv with yarn_jax installed
# (editable) from pyproject.toml, resolved to the exact versions CI uses (requirements.txt as constraints).
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALL := $(PY) -m pip install -q -c requirements.txt

.PHONY: setup assets eval train demo test aot fresh-check

# runtime only: evaluate, fine-tune, convert (no torch, no pytest)
$(VENV)/.installed: pyproject.toml requirements.txt
	python3 -m venv $(VENV)
	$(INSTALL) -e .
	touch $@

# the test suite: transformers' PyTorch reference (torch, CPU build), libtpu for the ahead-of-time TPU
# compiles (no TPU needed), TFDS's array_record reader
$(VENV)/.test-installed: $(VENV)/.installed
	$(INSTALL) -e ".[test,tpu,tfds]"
	touch $@

$(VENV)/.tpu-installed: $(VENV)/.installed
	$(INSTALL) -e ".[tpu]"
	touch $@

setup: $(VENV)/.installed

assets: setup
	$(VENV)/bin/yarn-jax assets

eval: assets
	$(VENV)/bin/yarn-jax eval

train: assets
	$(VENV)/bin/yarn-jax train --config configs/train/smollm2_yarn.yaml

demo: assets
	$(VENV)/bin/yarn-jax demo

# the paper's s=16 fine-tune compiled for a v5p-32 slice (no TPU needed)
aot: $(VENV)/.tpu-installed
	$(VENV)/bin/yarn-jax aot --config configs/train/llama2_7b_yarn_s16.yaml --topology v5p-32

# the suite on both cores (pytest-xdist); a single test file runs as usual with `$(PY) -m pytest FILE`
test: $(VENV)/.test-installed assets
	$(PY) -m pytest -q -n 2

# the README's first command as a new user meets it: a runtime-only venv (no torch), an empty asset cache,
# `yarn-jax assets` and the default evaluation at 2048 checked against the README's table (CI runs it)
fresh-check:
	bash .ci/fresh_machine.sh
