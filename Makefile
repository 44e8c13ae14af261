# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-slow test-all test-e2e lint demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[eval,serve,dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Tests over ~10 s each (real torchrun processes and the like); CI runs them as a step of their own.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not e2e'

# The page in headless Chromium (Debian's package; installed here when missing and we may).
test-e2e: $(STAMP)
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| { echo "test-e2e needs Chromium: apt-get install -y chromium"; exit 1; }
	$(BIN)/python -m pytest -q -m e2e tests/serve/e2e

lint: $(STAMP)
	$(BIN)/ruff check wavslm tests bench

demo: $(STAMP)
	$(BIN)/wavslm demo

clean:
	rm -rf $(VENV) build *.egg-info
