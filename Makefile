# Two commands set everything up: `make run` (a short search on the embedded synthetic task) and `make test`.
# Each creates or updates .venv on first use (or when pyproject.toml changes) and skips the install after.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin

.PHONY: run test test-slow lint setup

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade "pip>=23.2" >/dev/null
	$(BIN)/python -m pip install -e ".[dev,ray,dashboard]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/evonas evolve $(ARGS)

# The fast suite (under 10 minutes on 2 cores); `make test-slow` adds the long reliability checks
# (crash-resume loop, 10,000-example fuzzing). CI runs both.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=15 -m "not slow" $(ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=5 -m slow $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
