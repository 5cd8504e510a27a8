# Fresh-machine entry points. Each target sets up what it needs (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup assets eval train demo test

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

test: assets
	$(PY) -m pytest -q
