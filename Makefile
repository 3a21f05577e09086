# spend-exporter: `make run` (the demo) and `make test` (everything CI runs) do their own set-up.
#
# Python packages come from uv.lock (`uv sync --locked`): a fresh machine gets exactly the versions CI
# last passed with. `make lock` moves the lock to the newest releases; `make test-latest` tries them first,
# in a venv of its own, without touching the lock. See docs/development.md.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := examples/data

# uv itself, pinned, in a venv of its own (the project's venv is synced exactly to the lock, which holds no uv)
UV_VERSION := 0.13.9
TOOLS  := .tools
UV     := $(TOOLS)/bin/uv
# the machine's Python, never one uv would download
export UV_PYTHON_DOWNLOADS := never

LATEST := .venv-latest
# pytest workers: the suite is I/O-bound in places, and every port it opens is chosen by the system
JOBS   ?= 2
PYTEST := -q -n $(JOBS) -p no:cacheprovider
# `make test-dates`: the unit suite under libfaketime at moments where calendars break
SHIFTED_DATES := 2027-03-01T00:30:00 2028-02-29T12:00:00 2026-12-31T23:59:00
FAKETIME_LIB = $(firstword $(wildcard /usr/lib/*/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1))

.DEFAULT_GOAL := help
.PHONY: help run demo-data screenshot test test-latest test-dates lock lint typecheck unit test-deps promtool-deps bench clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION)

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --quiet --locked --all-extras --python $(PYTHON)
	touch $(STAMP)

lock: $(UV) ## refresh uv.lock to the newest releases that pyproject.toml allows
	$(UV) lock --upgrade --python $(PYTHON)

demo-data: $(STAMP) ## write the synthetic FOCUS demo files (newest day: yesterday)
	$(PY) examples/generate_demo.py --out $(DEMO)

run: demo-data ## the demo: serve /metrics on :9877 over the synthetic FOCUS data
	$(VENV)/bin/spend-exporter run --config.file examples/demo-config.yml

SCREENSHOT ?= docs/landing-page.png
screenshot: demo-data test-deps ## the demo's landing page / in headless Chromium, as a PNG (SCREENSHOT=docs/landing-page.png)
	$(PY) -m tests.screenshot --config.file examples/demo-config.yml --out $(SCREENSHOT)

# chromium-headless-shell: the landing page's screenshot test (tests/test_landing.py); about 96 MB to download
# with chromium-common, 290 MB installed.
test-deps: ## install prometheus, promtool, alertmanager, amtool, libfaketime and headless Chromium (Debian) when missing
	@if ! command -v promtool >/dev/null || ! command -v amtool >/dev/null || \
	    ! { command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null; } || \
	    [ -z "$(FAKETIME_LIB)" ] || ! command -v chromium-headless-shell >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      prometheus prometheus-alertmanager faketime chromium-headless-shell >/dev/null; \
	  else echo "missing and not root: install the Debian packages prometheus, prometheus-alertmanager," \
	    "faketime and chromium-headless-shell"; fi; \
	fi

promtool-deps: test-deps

lint: $(STAMP) ## ruff, mypy and the import contracts (layers, no circles: [tool.importlinter] in pyproject.toml)
	$(VENV)/bin/ruff check exporter tests bench examples
	$(VENV)/bin/ruff format --check exporter tests bench examples
	$(VENV)/bin/mypy exporter
	$(VENV)/bin/lint-imports --no-cache

unit: $(STAMP) test-deps ## the pytest suite, in parallel
	$(VENV)/bin/pytest $(PYTEST)

test: lint unit ## everything CI runs: lint, types, unit, promtool, end to end

test-dates: $(STAMP) test-deps ## the suite (less e2e and real_timers) on the 1st at 00:30, 29 Feb, 31 Dec 23:59
	@for d in $(SHIFTED_DATES); do \
	  echo "== faketime $$d UTC"; \
	  TZ=UTC LD_PRELOAD=$(FAKETIME_LIB) FAKETIME="@$$(echo $$d | tr T ' ')" \
	    $(VENV)/bin/pytest $(PYTEST) -m "not e2e and not real_timers" || exit 1; \
	done

test-latest: $(UV) test-deps ## the suite against the newest releases, in .venv-latest (the lock is left alone)
	rm -rf $(LATEST)
	$(UV) venv --quiet --python $(PYTHON) $(LATEST)
	$(UV) pip install --quiet --python $(LATEST)/bin/python --upgrade -e '.[test]'
	$(UV) pip list --python $(LATEST)/bin/python --format freeze > $(LATEST)/versions.txt
	$(LATEST)/bin/pytest $(PYTEST)

bench: $(STAMP) ## benchmarks; figures printed and written to bench/results/
	$(PY) -m bench.run

clean: ## remove the venvs, demo data and caches
	rm -rf $(VENV) $(LATEST) $(TOOLS) $(DEMO) data .pytest_cache .mypy_cache .ruff_cache
