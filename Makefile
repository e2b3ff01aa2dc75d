# Two entry points: `make pipeline` and `make test`. Both create .venv once and reuse it.
SHELL := /bin/bash
# The first supported interpreter on the PATH (requires-python: 3.11 to 3.14); `make PYTHON=python3.13` picks one.
PYTHON ?= $(firstword $(foreach v,3.11 3.12 3.13 3.14,$(shell command -v python$(v) 2>/dev/null)) python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Analytics and update checks off for every tool this project drives.
export DVC_NO_ANALYTICS := 1
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: pipeline test venv bench clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

pipeline: $(STAMP)
	$(BIN)/sipl doctor --init-repo
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

test: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q tests

bench: $(STAMP)
	for b in benchmarks/*.py; do PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
