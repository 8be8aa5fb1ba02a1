# Two entry points for a fresh machine: `make pretrain` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/tiny
# Config overrides for `make pretrain`, e.g. ARGS="--config.total_steps=1000".
ARGS ?=

.PHONY: test lint pretrain install install-test clean

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

# The lint rules and the format are pyproject.toml's [tool.ruff]; ruff is pinned in the test extra.
lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Pretrain, draw the curves, and say what comes next (export, then fine-tune from the run).
pretrain: $(VENV)/.installed
	$(PY) pretrain.py --config=configs/pretrain.py:tiny --workdir=$(WORKDIR) $(ARGS)
	$(PY) -m albert_jax.plot $(WORKDIR) --out $(WORKDIR)/curves.png
	@echo "next: export it as a Hugging Face directory:"
	@echo "  $(PY) -m albert_jax.export $(WORKDIR) $(WORKDIR)-hf"
	@echo "or fine-tune from it (RTE; data_dir holds GLUE's RTE/ TSVs, or leave it out to use the Hub):"
	@echo "  $(PY) train.py --config=configs/glue.py:task=rte --workdir=$(WORKDIR)-rte --config.init_from=$(WORKDIR) --config.data_dir=GLUE_DIR"

clean:
	rm -rf $(VENV) runs
