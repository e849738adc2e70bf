# The two commands: `make run` and `make test`. Everything else they need is set up here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-quick test-netguard-py3 lint format bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11 or newer is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/dispatcher run --web --first-run-token

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict dispatcher

test: lint
	$(BIN)/pytest

# The inner loop: no lint, no browser, and nothing marked slow (tests that start processes or
# wait on real time). `make test` runs everything.
test-quick: $(STAMP)
	$(BIN)/pytest -m "not slow and not browser"

# The SSRF guard's verdicts must not depend on the Python release (CPython's ipaddress flags
# changed in patch releases), so its tests also run under a second interpreter: the newest
# Python 3.12+ .ci/second-python finds, or SECOND_PYTHON=/path/to/python. Delete .venv-second
# after switching interpreters.
SECOND_VENV  := .venv-second
SECOND_STAMP := $(SECOND_VENV)/.installed

$(SECOND_STAMP): pyproject.toml
	@python='$(SECOND_PYTHON)' && python="$${python:-$$(PYTHON='$(PYTHON)' .ci/second-python)}" && \
		echo "$(SECOND_VENV): $$("$$python" --version) ($$python)" && \
		"$$python" -m venv --clear $(SECOND_VENV)
	$(SECOND_VENV)/bin/python -m pip install --quiet -e '.[test-runner]'
	@touch $(SECOND_STAMP)

test-netguard-py3: $(SECOND_STAMP)
	$(SECOND_VENV)/bin/python -m pytest -q tests/test_netguard.py tests/test_ssrf.py

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.throughput

clean:
	rm -rf $(VENV) $(SECOND_VENV) .pytest_cache .mypy_cache .ruff_cache
