# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv and install the
# pinned requirements and the package (editable) on first use.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data
DEMO_DIR := $(DATA)/demo
FL_WS := $(DEMO_DIR)/fedmrg
RESULTS := $(DEMO_DIR)/results
FEDMRG = FEDMRG_DATA_DIR=$(abspath $(DATA)) $(BIN)/fedmrg

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
	$(FEDMRG) prepare-data --config demo --out $(DEMO_DIR)/bench --reuse
	$(FEDMRG) show-data $(DEMO_DIR)/bench --out $(DEMO_DIR)/preview.png
	test -f $(DEMO_DIR)/base-llm/config.json || $(FEDMRG) make-base-llm --corpus $(DEMO_DIR)/bench/public --out $(DEMO_DIR)/base-llm --quiet
	@echo "federated run in the FLARE simulator (3 sites); full log: $(DEMO_DIR)/fedmrg.log"
	OMP_NUM_THREADS=1 $(BIN)/python jobs/fedmrg/job.py --data $(DEMO_DIR)/bench --sites 3 --config demo \
		--base-llm $(DEMO_DIR)/base-llm --workspace $(FL_WS) --test-limit 100 2>&1 | tee $(DEMO_DIR)/fedmrg.log \
		| grep --line-buffered -E "initial global|round [0-9]+/|refused:|results in|rror"
	$(FEDMRG) fl-report $(FL_WS) --out $(RESULTS)/summary.md

clean-demo:
	rm -rf $(DEMO_DIR)
