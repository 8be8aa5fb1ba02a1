# Two entry points for a fresh machine: `make pretrain` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/tiny
# Config overrides for `make pretrain`, e.g. ARGS="--config.total_steps=1000".
ARGS ?=

.PHONY: test pretrain install install-test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# torch is pinned in the `test` extra; pip takes that exact CPU build from the local disk.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

test: $(VENV)/.installed-test
	$(PY) -m pytest -q

pretrain: $(VENV)/.installed
	$(PY) pretrain.py --config=configs/pretrain.py:tiny --workdir=$(WORKDIR) $(ARGS)

clean:
	rm -rf $(VENV) runs
