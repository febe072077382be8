# The two commands of the README: `make train` and `make test`. Both set up first;
# set-up is skipped when setup.cfg, pyproject.toml and constraints.txt are unchanged.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ember-installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data train test test-long realdata lint bench ignite-suite ignite-suite-full clean

setup: $(STAMP) data

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]' -c constraints.txt
	@touch $@

data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "Installing Debian's dataset-fashion-mnist (FashionMNIST) ..."; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
		|| echo "warning: could not install dataset-fashion-mnist; pass --data-root or set EMBER_DATA to train on FashionMNIST"; \
	else \
		echo "note: apt-get is not usable here; install dataset-fashion-mnist, or pass --data-root / set EMBER_DATA"; \
	fi

train: setup
	$(BIN)/ember train fashion-mnist-mlp $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check ember tests benchmarks tools

test: setup lint
	$(BIN)/python -m pytest -q $(ARGS)

# The long multi-process cases (FSDP2, sharded checkpoints under kills, elastic restarts, two nodes): a few minutes.
test-long: setup
	$(BIN)/python -m pytest -q -m multiprocess_long $(ARGS)

# The outputs the docs quote from real FashionMNIST runs, run again (tests/test_docs.py; a few minutes on a CPU).
realdata: setup
	$(BIN)/python -m pytest -q -m realdata tests/test_docs.py $(ARGS)

bench: setup
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]' -c constraints.txt
	$(BIN)/python -m benchmarks.overhead
	$(BIN)/python -m benchmarks.throughput --device cpu --recipe fashion-mnist-mlp

# Ignite's own engine and handlers tests, on Ignite and on ember (tools/ignite_suite.py; sdist cached in .cache/).
ignite-suite: setup
	$(BIN)/python -m pip install --quiet -e '.[dev,compat]' -c constraints.txt
	$(BIN)/python tools/ignite_suite.py --json .cache/ignite-suite/report.json $(ARGS)

# The same with Ignite's metrics and contrib tests too (longer; not part of `make test` or `make ignite-suite`).
ignite-suite-full: setup
	$(BIN)/python -m pip install --quiet -e '.[dev,compat]' -c constraints.txt
	$(BIN)/python tools/ignite_suite.py --full --json .cache/ignite-suite/report-full.json $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
