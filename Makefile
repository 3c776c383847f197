# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv and install the
# pinned requirements and the package (editable) on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data
DEMO_DIR := $(DATA)/demo

.PHONY: install test demo clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

install: $(STAMP)

test: $(STAMP)
	FEDMRG_DATA_DIR=$(abspath $(DATA)) $(BIN)/python -m pytest

demo: $(STAMP)
	FEDMRG_DATA_DIR=$(abspath $(DATA)) $(BIN)/fedmrg prepare-data --config demo --out $(DEMO_DIR)/bench --reuse
	FEDMRG_DATA_DIR=$(abspath $(DATA)) $(BIN)/fedmrg show-data $(DEMO_DIR)/bench --out $(DEMO_DIR)/preview.png

clean-demo:
	rm -rf $(DEMO_DIR)
