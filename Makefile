# `make demo` and `make test` do all their own set-up on a fresh clone:
# virtual env, install, services (the configured ones, or throwaway instances), migrations.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit integration install clean firefox

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/notifier demo

# ruff and mypy --strict on the domain and the runtime (settings in pyproject.toml), then every test.
lint: $(STAMP)
	$(BIN)/ruff check notifier workers beat_schedule.py
	$(BIN)/mypy

# tests/integration/test_browser.py drives a real Firefox: Debian's firefox-esr, installed when missing
firefox:
	@command -v firefox-esr >/dev/null || command -v firefox >/dev/null || \
	  apt-get install -y -q firefox-esr >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null && apt-get install -y -q firefox-esr >/dev/null) || \
	  (echo "tests/integration/test_browser.py needs firefox-esr: apt-get install firefox-esr" >&2; false)

test: lint firefox
	$(BIN)/python -m pytest --durations=15

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

clean:
	rm -rf $(VENV) *.egg-info
