# Fresh-machine entry points. Each target sets up what it needs (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup assets eval train demo test aot

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

setup: $(VENV)/.installed

assets: setup
	$(PY) -m yarn_jax.assets

eval: assets
	$(PY) eval.py

train: assets
	$(PY) train.py

demo: assets
	$(PY) -m yarn_jax.demo

$(VENV)/.aot-installed: requirements-aot.txt $(VENV)/.installed
	$(PY) -m pip install -q -r requirements-aot.txt
	touch $@

# the paper's s=16 fine-tune compiled for a v5p-32 slice (no TPU needed)
aot: $(VENV)/.aot-installed
	$(PY) -m yarn_jax.aot --config configs/train/llama2_7b_yarn_s16.yaml --topology v5p-32

test: assets $(VENV)/.aot-installed
	$(PY) -m pytest -q
