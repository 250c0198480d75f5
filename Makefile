# Every target bootstraps .venv itself, so these work on a fresh machine with only
# Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run test bench bench-quick lint fmt clean docker-engine screenshot

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	@touch $@

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	@touch $@

## run: start the platform on this machine with its embedded defaults
run: $(STAMP)
	$(BIN)/hivebus up --virtual-nodes 2 --demo

## test: the whole suite (unit, integration with real nats-servers, e2e), on TEST_WORKERS
## processes (pytest-xdist, a test module per worker at a time; TEST_WORKERS=0: one process)
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

## bench: every benchmark, side by side with its baselines (~10 min on 2 cores); rewrites
## bench/RESULTS.md and bench/projection_batch.png
bench: $(BENCH_STAMP)
	$(BIN)/python bench/run.py

## bench-quick: the same at smaller sizes (~1-2 min); also rewrites both files
bench-quick: $(BENCH_STAMP)
	$(BIN)/python bench/run.py --quick

## screenshot: the browser test of the nodes page, saving docs/img/dashboard.png (the README's)
screenshot: $(STAMP)
	HIVEBUS_UPDATE_SCREENSHOT=1 $(BIN)/python -m pytest -q tests/browser/test_dashboard.py -k nodes_shown_equal

## docker-engine: a private dockerd with the plugin base image (Ctrl-C tears it down)
docker-engine: $(STAMP)
	$(BIN)/python tests/docker_engine.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

fmt: $(STAMP)
	$(BIN)/ruff format src tests bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache
