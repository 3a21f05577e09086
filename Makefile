# spend-exporter: `make run` (the demo) and `make test` (everything CI runs) do their own set-up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := examples/data

.DEFAULT_GOAL := help
.PHONY: help run demo-data test lint typecheck unit promtool-deps bench clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo-data: $(STAMP) ## write the synthetic FOCUS demo files (newest day: yesterday)
	$(PY) examples/generate_demo.py --out $(DEMO)

run: demo-data ## the demo: serve /metrics on :9877 over the synthetic FOCUS data
	$(VENV)/bin/spend-exporter run --config.file examples/demo-config.yml

promtool-deps: ## install prometheus, promtool, alertmanager and amtool (Debian) when missing
	@if ! command -v promtool >/dev/null || ! command -v amtool >/dev/null || \
	    ! { command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null; }; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-alertmanager >/dev/null; \
	  else echo "prometheus/alertmanager missing and not root: install the Debian packages prometheus and prometheus-alertmanager"; fi; \
	fi

lint: $(STAMP) ## ruff and mypy
	$(VENV)/bin/ruff check exporter tests bench examples
	$(VENV)/bin/ruff format --check exporter tests bench examples
	$(VENV)/bin/mypy exporter

unit: $(STAMP) promtool-deps ## the pytest suite
	$(VENV)/bin/pytest -q

test: lint unit ## everything CI runs: lint, types, unit, promtool, end to end

bench: $(STAMP) ## benchmarks; figures printed and written to bench/results/
	$(PY) -m bench.run

clean: ## remove the venv, demo data and caches
	rm -rf $(VENV) $(DEMO) data .pytest_cache .mypy_cache .ruff_cache
