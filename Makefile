# Quick start: `make train` (set up, build the dataset, train, evaluate, print results) and
# `make test`. Both create .venv from setup.py's pinned dependencies on first use.
PYTHON ?= python3
VENV := .venv
WORKDIR ?= workdirs/shapes_caption

.PHONY: setup train test
setup: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

train: setup
	mkdir -p $(dir $(WORKDIR))
	$(VENV)/bin/python -m gpt4v_jax.main --config=configs/shapes_caption.py --workdir=$(WORKDIR)

test: setup
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --durations=30 tests
