# lmpipe: `make demo` and `make test` each set up .venv when missing, then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lmpipe-installed
# Every transitive dependency pinned (pip constraints); `make lock` regenerates it.
LOCK := constraints.txt

# The environment tests and CI run with (see DESIGN.md).
TEST_ENV := DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false \
	PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 TRITON_INTERPRET=1

.PHONY: setup lock demo lint format test chaos clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q -c $(LOCK) torch==2.13.0
	$(PY) -m pip install -q -c $(LOCK) -e '.[test]'
	# The venv must be exactly the lock: fails naming any package that differs.
	$(PY) requirements/check_lock.py
	touch $(STAMP)

# Re-resolve every dependency in a fresh venv (what pyproject.toml allows, newest first) and
# write it as the lock. Review the diff, run `make clean test`, commit both files.
lock:
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv" && \
	"$$tmp/venv/bin/pip" install -q torch==2.13.0 && \
	"$$tmp/venv/bin/pip" install -q -e '.[test]' && \
	"$$tmp/venv/bin/pip" check && \
	{ sed -n '1,/^[^#]/{/^#/p}' $(LOCK); \
	  "$$tmp/venv/bin/pip" freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+.*/torch==\1/'; } > "$$tmp/lock.txt" && \
	mv "$$tmp/lock.txt" $(LOCK)
	@echo "wrote $(LOCK); make clean setup installs it"

demo: $(STAMP)
	# Optional demo data: 127 HTML pages in each of 26 languages (the demo works without it).
	-@[ -d /usr/share/doc/debian-handbook/html ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  export DEBIAN_FRONTEND=noninteractive && { apt-get install -y -q debian-handbook || \
	  { apt-get update -q && apt-get install -y -q debian-handbook; }; } >/dev/null 2>&1; } || \
	  echo "debian-handbook not installed: the demo runs on the pywb and Common Crawl samples only"
	DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false \
	PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 $(VENV)/bin/lmpipe demo

# Lint and format check (ruff, configured in pyproject.toml); `make format` rewrites the tree.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Lint first: a lint error fails before the (long) suite starts. The suite runs on
# TEST_WORKERS processes (pytest-xdist; a test file stays on one worker, each worker has its
# own Prefect home); TEST_WORKERS=0 runs it in this process. The 15 slowest tests are listed.
TEST_WORKERS ?= 2
test: $(STAMP) lint
	# Headless Chromium + ChromeDriver (Debian packages) for the real-browser UI test.
	bash tests/e2e/install_browser.sh
	home=$$(mktemp -d); trap 'rm -rf "$$home"' EXIT; \
	$(TEST_ENV) PREFECT_HOME=$$home $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 \
	  -m "not gpu and not soak and not hf" tests

# The fault-injection soak: more trials per fault, the `soak`-marked runs and long fuzzing
# (hypothesis at 20x the examples, atheris 120 s per target); prints the
# reliability table (fault, stage, trials, survived, records lost, records duplicated).
CHAOS_TRIALS ?= 5
chaos: $(STAMP)
	rm -f outputs/chaos.jsonl
	home=$$(mktemp -d); trap 'rm -rf "$$home"' EXIT; \
	$(TEST_ENV) PREFECT_HOME=$$home LMPIPE_CHAOS_TRIALS=$(CHAOS_TRIALS) LMPIPE_CHAOS_REPORT=outputs/chaos.jsonl \
	$(PY) -m pytest -q -m "not gpu" tests/reliability tests/fuzz; rc=$$?; \
	$(PY) tests/chaos_report.py outputs/chaos.jsonl && exit $$rc

clean:
	rm -rf $(VENV) outputs .pytest_cache
