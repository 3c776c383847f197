# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv and install the
# pinned requirements and the package (editable) on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data
DEMO_DIR := $(DATA)/demo
SITE := $(DEMO_DIR)/bench/site-1
RUN := $(DEMO_DIR)/centralized-site-1
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
	$(FEDMRG) train --config demo --data $(SITE) --base-llm $(DEMO_DIR)/base-llm --out $(RUN) --quiet
	$(FEDMRG) evaluate --model $(RUN) --data $(SITE) --out $(RESULTS)/generated.json --quiet
	$(FEDMRG) retrieve-baseline --model $(RUN) --data $(SITE) --out $(RESULTS)/retrieved.json --quiet
	$(FEDMRG) retrieve-baseline --normal --config demo --data $(SITE) --out $(RESULTS)/retrieved-normal.json --quiet
	$(FEDMRG) retrieve-baseline --oracle --config demo --data $(SITE) --out $(RESULTS)/retrieved-oracle.json --quiet
	$(FEDMRG) report $(RESULTS)/generated.json $(RESULTS)/retrieved.json $(RESULTS)/retrieved-normal.json \
		$(RESULTS)/retrieved-oracle.json --out $(RESULTS)/table.md
	cat $(RESULTS)/table.md

clean-demo:
	rm -rf $(DEMO_DIR)
