# Two commands on a fresh machine (see README):
#   make demo   - set up .venv and run the whole pipeline on the built-in model (offline)
#   make test   - set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0

.PHONY: venv browser test demo lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulls several GB of CUDA wheels
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

venv: $(BIN)/.installed

# the browser tests need Chromium: as root with apt-get this installs Debian's `chromium` package;
# elsewhere it prints how and the browser tests skip (never fails the test run)
browser:
	-sh scripts/install_browser.sh

test: venv browser
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/python -m pytest -q --timeout=900 tests --doctest-modules src/headatlas

demo: venv
	$(BIN)/headatlas demo --out runs/demo

lint: venv
	$(BIN)/ruff check src tests benchmarks experiments

clean:
	rm -rf $(VENV) runs
