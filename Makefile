# amadeus: `make repro` sets everything up and runs the pipeline; `make test` runs the tests.
# Both are idempotent: the venv is rebuilt only when pyproject.toml or constraints.txt change,
# and `dvc repro` reruns only the stages whose inputs changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PATH := $(abspath $(BIN)):$(PATH)
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup browser repro test bench lint clean-outputs

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt tools/setup-system.sh
	@bash tools/setup-system.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=23.2"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -c "import amadeus.native as n; n.main()"   # builds the batch-1 kernels once
	@touch $(STAMP)

browser:  # Debian's chromium, for the studio's browser tests and benchmark
	@bash tools/setup-system.sh --browser

repro: setup
	@test -d .git || git init -q
	$(BIN)/dvc repro
	@$(BIN)/python -m amadeus.report   # all figures: dvc metrics show; curves: dvc plots show --json

test: setup browser
	$(BIN)/ruff check lib stages tests bench tools
	$(BIN)/python -m pytest

bench: setup browser
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/corpus.py
	$(BIN)/python bench/train.py --bf16
	$(BIN)/python bench/quantize.py
	$(BIN)/python bench/native_kernels.py
	$(BIN)/python bench/perceiver_ar_long.py   # add --pio-python for perceiver-io beside it
	$(BIN)/python bench/perceiver_ar_blocks.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/perceiver_ar.py
	$(BIN)/python bench/live.py
	$(BIN)/python bench/studio.py
	$(BIN)/python bench/quantize_table.py   # needs the pipeline's checkpoints (make repro)

lint: setup
	$(BIN)/ruff check lib stages tests bench tools
