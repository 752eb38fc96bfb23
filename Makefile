# Two commands do everything on a fresh clone: `make run` and `make test`.
# Both create .venv when it is missing and install the pinned stack into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= auto
DATASET ?=
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))

.PHONY: run test lint unit install clean check-profile data routes

run: check-profile $(STAMP)
	$(BIN)/python -m helpers.runner --profile $(PROFILE) $(if $(DATASET),--dataset "$(DATASET)")

# Two pytest workers: run serially, the fast tests kept 1.15 of the 2 cores busy (graph tracing,
# kernel start-ups and file writes are single-threaded), so a second worker uses the rest.
# --dist loadfile runs a file's tests in order on one worker: tests that share outputs (a
# course pass, the own-dataset chain) live in one file. --no-loadscope-reorder keeps the
# collection order, slowest files first (tests/conftest.py), instead of most tests first.
XDIST := -n 2 --dist loadfile --no-loadscope-reorder

test: $(STAMP) lint
	$(BIN)/python -m pytest $(XDIST)

lint: $(STAMP)
	$(BIN)/ruff check helpers tests benchmarks
	$(BIN)/nbqa ruff notebooks
	$(BIN)/nbstripout --verify $(NOTEBOOKS)

unit: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "not notebooks"

install: $(STAMP)

# Not part of `make test` (network, and about an hour on 2 cores): Binder's environment built as
# repo2docker builds it from binder/ (Python 3.11) and Colab's emulated from colab/preinstalled.txt
# plus the notebooks' setup cell (Python 3.12), each in .routes/, then notebooks 00-07 at the quick
# profile in each; Binder's in a 2e9-byte memory cgroup (needs root or systemd-run), their peaks in
# .routes/binder/peaks.tsv. `make routes ROUTE=binder ROUTE_NOTEBOOKS=00_setup` runs one of each.
ROUTE ?= all
ROUTE_NOTEBOOKS ?=
routes:
	bash scripts/routes.sh $(ROUTE) $(ROUTE_NOTEBOOKS)

# One Medical Segmentation Decathlon task into data/<TASK> (helpers/fetch.py): resumable, checked
# against its published MD5, unpacked safely. `make data TASK=Task09_Spleen`.
TASK ?= Task09_Spleen
data: $(STAMP)
	$(BIN)/python -m helpers.fetch $(TASK) data

# Validates PROFILE with the system Python before spending minutes on an install.
check-profile:
	@$(PYTHON) -m helpers.config --check $(PROFILE)

# pip byte-compiles what it installs on one core (81 s of CPU for this stack); compileall -j 0
# does it on all of them, skipping the packages' own test suites and TensorFlow's C headers,
# which nothing imports: 41 s on 2 cores instead of 65 s for everything (2026-12-02; a module
# skipped here is compiled when first imported). compileall exits non-zero if any file fails
# to compile, which pip ignores; so does this (on the pinned stack and Python 3.11, none fails).
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml scripts/install-nodeps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -r requirements.txt
	$(BIN)/python -m compileall -q -j 0 -x '/(tests?|testing|include)/' $(VENV)/lib > /dev/null || true
	bash scripts/install-nodeps.sh $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

clean:
	rm -rf outputs .pytest_cache .ruff_cache
