# capos-sched: two entry points (see README Quick start).
#   make demo   set up .venv and run the demo on the embedded default manifest
#   make test   set up .venv, lint, and run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (Python 3.11+ required)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# The real CUE evaluator for the differential test (skipped without Node/npm).
CUE_STAMP := tests/manifest/cue/node_modules/.installed
$(CUE_STAMP): tests/manifest/cue/package-lock.json
	bash .ci/install-cue
	@if [ -d tests/manifest/cue/node_modules ]; then touch $(CUE_STAMP); fi

# The main job: run the embedded default manifest on real time (worker
# processes, live view on a terminal, final table).
demo: $(STAMP)
	$(BIN)/capos-sched run

lint: $(STAMP)
	$(BIN)/ruff check capos_sched tests bench services
	$(BIN)/ruff format --check capos_sched tests bench services

# The whole suite, slow tests included (CI runs this).
test: lint $(CUE_STAMP)
	$(BIN)/python -m pytest -q

# Everything but the slow benchmark-style tests.
test-fast: lint $(CUE_STAMP)
	$(BIN)/python -m pytest -q -m 'not slow'

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
