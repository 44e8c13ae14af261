# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-slow test-all test-e2e test-install lint demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[eval,instruments,serve,onnx,dev]'
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

# The package as a user installs it: a fresh virtualenv, `pip install .` (not editable), then `wavslm demo`
# from another folder, offline (the network cut off where `unshare` may, the Hub told to stay offline).
INSTALL_CHECK := $(or $(TMPDIR),/tmp)/wavslm-install-check
test-install:
	rm -rf $(INSTALL_CHECK) && mkdir -p $(INSTALL_CHECK)/elsewhere
	$(PYTHON) -m venv $(INSTALL_CHECK)/venv
	$(INSTALL_CHECK)/venv/bin/pip install --quiet .
	cd $(INSTALL_CHECK)/elsewhere && HF_HUB_OFFLINE=1 $$(unshare -n true 2>/dev/null && echo unshare -n) \
		$(INSTALL_CHECK)/venv/bin/wavslm demo -o demo --seconds 2
	test -s $(INSTALL_CHECK)/elsewhere/demo/real/continuation.wav && test -s $(INSTALL_CHECK)/elsewhere/demo/report.md
	rm -rf $(INSTALL_CHECK)

lint: $(STAMP)
	$(BIN)/ruff check wavslm tests bench

demo: $(STAMP)
	$(BIN)/wavslm demo

clean:
	rm -rf $(VENV) build *.egg-info
