# capos-sched: two entry points (see README Quick start).
#   make demo   set up .venv and run the demo on the embedded default manifest
#   make test   set up .venv, lint, and run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-pure lint bench clean

# setup.py builds the optional C accelerator (capos_sched/core/_accel.c) when a
# compiler is there; without one the install still succeeds and the core runs
# its pure-Python reference.
$(STAMP): pyproject.toml setup.py capos_sched/core/_accel.c
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
	$(BIN)/ruff check capos_sched tests bench services setup.py
	$(BIN)/ruff format --check capos_sched tests bench services setup.py

# The whole suite, slow tests included (CI runs this); then the core's tests
# once more on the pure-Python reference (the first run uses the C accelerator
# where it was built; bench dispatch and tests/core/test_accel.py say which).
test: lint $(CUE_STAMP)
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory test-pure

# Everything but the slow benchmark-style tests.
test-fast: lint $(CUE_STAMP)
	$(BIN)/python -m pytest -q -m 'not slow'
	$(MAKE) --no-print-directory test-pure

# The core's tests (not slow) with the accelerator switched off.
test-pure: $(STAMP)
	CAPOS_SCHED_PURE=1 $(BIN)/python -m pytest -q -m 'not slow' tests/core

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info capos_sched/core/_accel*.so
