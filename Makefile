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
# make poc: a local FLARE POC federation (server + SITES hospitals with the provisioning/ policies).
SITES ?= 3
ROUNDS ?=
CONFIG ?= demo
TEST_LIMIT ?= 100
POLICIES ?= provisioning
POC_WS ?= $(DATA)/poc
POC_DATA = $(DATA)/$(CONFIG)
# the demo config encodes with a frozen pretrained encoder (`fedmrg make-base-encoder`) and rehearses the
# benchmark's public studies at every site; tiny trains its ViT on the sites' studies only
POC_ENCODER = $(if $(filter demo,$(CONFIG)),$(POC_DATA)/base-encoder)
POC_PUBLIC = $(if $(filter demo,$(CONFIG)),$(POC_DATA)/bench/public)

# make consortium: the tiny job across hosts on this machine (network namespaces, provisioned kits, mTLS);
# LINK=hospital-a=10mbit,20ms shapes a hospital's link. Needs root.
CONSORTIUM_WS ?= $(DATA)/consortium
LINK ?=

# make bench: the FL-MRG benchmark (PRESET=cpu, the decisive run on 2 cores; quick for a smoke test; full on a GPU;
# PARTITION=label|iid; CONFIG as above).
PRESET ?= cpu
PARTITION ?= style

LINTED := custom tests bench jobs

.PHONY: install test lint format demo clean-demo poc-job poc poc-up poc-down consortium bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

install: $(STAMP)

test: lint
	FEDMRG_DATA_DIR=$(abspath $(DATA)) $(BIN)/python -m pytest

# ruff: the code is formatted and linted as pyproject.toml says (`make format` fixes what it can).
lint: $(STAMP)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/ruff check $(LINTED)

format: $(STAMP)
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

demo: $(STAMP)
	$(FEDMRG) prepare-data --config demo --out $(DEMO_DIR)/bench --reuse
	$(FEDMRG) show-data $(DEMO_DIR)/bench --out $(DEMO_DIR)/preview.png
	test -f $(DEMO_DIR)/base-llm/config.json || $(FEDMRG) make-base-llm --corpus $(DEMO_DIR)/bench/public --out $(DEMO_DIR)/base-llm --quiet
	test -f $(DEMO_DIR)/base-encoder/model.safetensors || $(FEDMRG) make-base-encoder --config demo --data $(DEMO_DIR)/bench \
		--out $(DEMO_DIR)/base-encoder --quiet
	@echo "federated run in the FLARE simulator (3 sites); full log: $(DEMO_DIR)/fedmrg.log"
	OMP_NUM_THREADS=1 $(BIN)/python jobs/fedmrg/job.py --data $(DEMO_DIR)/bench --sites 3 --config demo \
		--base-llm $(DEMO_DIR)/base-llm --base-encoder $(DEMO_DIR)/base-encoder --public-data $(DEMO_DIR)/bench/public \
		--workspace $(FL_WS) --test-limit 100 \
		2>&1 | tee $(DEMO_DIR)/fedmrg.log \
		| grep --line-buffered -E "initial global|round [0-9]+/|refused:|results in|rror"
	@echo "the global model on the whole test-global split (held out from every site)"
	$(FEDMRG) evaluate --model $(FL_WS)/global_model --data $(DEMO_DIR)/bench/test-global --adapters generic \
		--out $(RESULTS)/test-global.json --quiet > /dev/null
	$(FEDMRG) review-page --pred $(RESULTS)/test-global.predictions.json --data $(DEMO_DIR)/bench/test-global \
		--out $(RESULTS)/test-global.review.html
	$(FEDMRG) fl-report $(FL_WS) --out $(RESULTS)/summary.md \
		--held-out $(RESULTS)/test-global.json --held-out-data $(DEMO_DIR)/bench/test-global

clean-demo:
	rm -rf $(DEMO_DIR)

# Benchmark and base LLM of CONFIG (shared with `make demo` for demo), the job exported to POC_WS/jobs.
poc-job: $(STAMP)
	$(FEDMRG) prepare-data --config $(CONFIG) --out $(POC_DATA)/bench --reuse
	test -f $(POC_DATA)/base-llm/config.json || $(FEDMRG) make-base-llm --corpus $(POC_DATA)/bench/public --out $(POC_DATA)/base-llm --quiet
	$(if $(POC_ENCODER),test -f $(POC_ENCODER)/model.safetensors || $(FEDMRG) make-base-encoder --config $(CONFIG) \
		--data $(POC_DATA)/bench --out $(POC_ENCODER) --quiet)
	$(BIN)/python jobs/fedmrg/job.py --config $(CONFIG) --sites $(SITES) $(if $(ROUNDS),--rounds $(ROUNDS)) \
		--test-limit $(TEST_LIMIT) $(if $(POC_ENCODER),--base-encoder $(POC_ENCODER)) \
		$(if $(POC_PUBLIC),--public-data $(POC_PUBLIC)) --export --export-dir $(POC_WS)/jobs

POC_FEDERATION = --data $(POC_DATA)/bench --base-llm $(POC_DATA)/base-llm --sites $(SITES) --workspace $(POC_WS) \
	$(if $(filter-out none,$(POLICIES)),--policies $(POLICIES))

# `fedmrg poc`: prepare, wire the sites, start, submit through the FLARE API, follow, download, summary, stop (always).
poc: poc-job
	OMP_NUM_THREADS=1 $(FEDMRG) poc --job $(POC_WS)/jobs/fedmrg $(POC_FEDERATION)

# A POC federation that stays up for the admin console (it prints the console command); poc-down stops it.
poc-up: poc-job
	OMP_NUM_THREADS=1 $(FEDMRG) poc-up --job $(POC_WS)/jobs/fedmrg $(POC_FEDERATION)

poc-down: $(STAMP)
	$(FEDMRG) poc-down --workspace $(POC_WS)

# The tiny job across network namespaces from provisioned kits; the job's final status is the last line.
consortium: $(STAMP)
	$(MAKE) --no-print-directory poc-job CONFIG=tiny SITES=2 ROUNDS=$(or $(ROUNDS),2) TEST_LIMIT=4 POC_WS=$(CONSORTIUM_WS)
	OMP_NUM_THREADS=1 $(FEDMRG) consortium --job $(CONSORTIUM_WS)/jobs/fedmrg --data $(DATA)/tiny/bench \
		--base-llm $(DATA)/tiny/base-llm --sites 2 --workspace $(CONSORTIUM_WS) --policies provisioning \
		$(if $(LINK),--link $(LINK))

# Every method x seed on the benchmark (built or reused like `make demo`'s); results in bench/results/,
# the results section of docs/benchmark.md rewritten. Finished runs are reused: run it again to resume.
bench: $(STAMP)
	$(FEDMRG) bench --$(PRESET) --config $(CONFIG) --partition $(PARTITION)
