# The two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Every venv installs from a lock in requirements/: exact versions with their hashes, so a
# fresh install today gets what CI tested. `make lock` regenerates them (see README).
REQ := requirements
PIP_LOCKED := -m pip install -q --require-hashes
# An old 0.x SDK in its own venv (requirements/sdk0.in): it sends x-api-key and
# anthropic-version 2023-06-01.
LEGACY_VENV := .venv-sdk0
LEGACY_STAMP := $(LEGACY_VENV)/.installed-stamp
# checkov pins a python-hcl2 that clashes with ours: it gets a venv of its own.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-stamp
CLAUDE_CODE := tests/e2e/claude_code
CLAUDE_CODE_STAMP := $(CLAUDE_CODE)/node_modules/.installed-stamp
# `make test-latest`: a copy of the tree with its own venv and node_modules.
LATEST_DIR := build/latest-clients

.PHONY: run test test-latest lint lock bench install clean system-deps

install: $(STAMP)

# The installer and build backend first (bootstrap.txt), then the dependencies, then this
# package alone, built by those pinned tools rather than by whatever is newest.
$(STAMP): pyproject.toml $(REQ)/bootstrap.txt $(REQ)/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python $(PIP_LOCKED) -r $(REQ)/bootstrap.txt
	$(BIN)/python $(PIP_LOCKED) -r $(REQ)/dev.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(LEGACY_STAMP): $(REQ)/sdk0.txt
	$(PYTHON) -m venv $(LEGACY_VENV)
	$(LEGACY_VENV)/bin/python $(PIP_LOCKED) -r $(REQ)/sdk0.txt
	touch $@

$(CHECKOV_STAMP): $(REQ)/checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python $(PIP_LOCKED) -r $(REQ)/checkov.txt
	touch $@

$(CLAUDE_CODE_STAMP): $(CLAUDE_CODE)/package.json $(CLAUDE_CODE)/package-lock.json
	npm ci --prefix $(CLAUDE_CODE) --no-audit --no-fund --loglevel=error
	touch $@

# The database tests use a real pgbouncer (Debian's package) in front of PostgreSQL; the
# rolling-deploy rehearsal (tests/e2e/test_rolling_deploy.py) a real haproxy as load balancer.
system-deps:
	@command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || \
		{ echo "installing pgbouncer"; apt-get update -qq && apt-get install -y -qq pgbouncer >/dev/null; }
	@command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || \
		{ echo "installing haproxy"; apt-get update -qq && apt-get install -y -qq haproxy >/dev/null; }

run: $(STAMP)
	$(BIN)/claude-proxy serve

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src
	$(BIN)/lint-imports

test: $(STAMP) $(LEGACY_STAMP) $(CLAUDE_CODE_STAMP) $(CHECKOV_STAMP) system-deps lint
	CLAUDE_PROXY_LEGACY_PYTHON=$(LEGACY_VENV)/bin/python \
	CLAUDE_PROXY_CHECKOV=$(CHECKOV_VENV)/bin/checkov $(BIN)/pytest

# The suite against the newest anthropic SDK (and openai, once the lock has it) with their
# newest dependencies, and the newest Claude Code, in a copy of the tree under $(LATEST_DIR):
# the locked venvs and tests/e2e/claude_code are not touched. PYTEST_ARGS narrows the run.
test-latest: $(LEGACY_STAMP) $(CHECKOV_STAMP) system-deps
	CLAUDE_PROXY_LEGACY_PYTHON=$(CURDIR)/$(LEGACY_VENV)/bin/python \
	CLAUDE_PROXY_CHECKOV=$(CURDIR)/$(CHECKOV_VENV)/bin/checkov \
	PYTHON=$(PYTHON) .ci/test-latest $(LATEST_DIR) $(PYTEST_ARGS)

# Regenerate the locks from pyproject.toml and requirements/*.in. Versions already locked
# stay unless LOCK_ARGS says otherwise: LOCK_ARGS=--upgrade (everything to the newest) or
# LOCK_ARGS="--upgrade-package anthropic". The image's lock is resolved within the dev
# lock, so the image ships the versions the tests ran with.
UV_COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command "make lock" $(LOCK_ARGS)
lock: $(STAMP)
	$(UV_COMPILE) pyproject.toml --extra dev -o $(REQ)/dev.txt
	$(UV_COMPILE) pyproject.toml --extra tracing -c $(REQ)/dev.txt -o $(REQ)/runtime.txt
	$(UV_COMPILE) $(REQ)/bootstrap.in -o $(REQ)/bootstrap.txt
	$(UV_COMPILE) $(REQ)/sdk0.in -o $(REQ)/sdk0.txt
	$(UV_COMPILE) $(REQ)/checkov.in -o $(REQ)/checkov.txt

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(LEGACY_VENV) $(CHECKOV_VENV) $(CLAUDE_CODE)/node_modules $(LATEST_DIR)
