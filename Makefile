# The two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# An old 0.x SDK in its own venv: it sends x-api-key and anthropic-version 2023-06-01.
LEGACY_SDK := anthropic==0.69.0
LEGACY_VENV := .venv-sdk0
LEGACY_STAMP := $(LEGACY_VENV)/.installed-stamp
# checkov pins a python-hcl2 that clashes with ours: it gets a venv of its own.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-stamp
CLAUDE_CODE := tests/e2e/claude_code
CLAUDE_CODE_STAMP := $(CLAUDE_CODE)/node_modules/.installed-stamp

.PHONY: run test lint bench install clean system-deps

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

$(LEGACY_STAMP): Makefile
	$(PYTHON) -m venv $(LEGACY_VENV)
	$(LEGACY_VENV)/bin/python -m pip install -q '$(LEGACY_SDK)'
	touch $@

$(CHECKOV_STAMP): Makefile
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q 'checkov>=3.2'
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

test: $(STAMP) $(LEGACY_STAMP) $(CLAUDE_CODE_STAMP) $(CHECKOV_STAMP) system-deps lint
	CLAUDE_PROXY_LEGACY_PYTHON=$(LEGACY_VENV)/bin/python \
	CLAUDE_PROXY_CHECKOV=$(CHECKOV_VENV)/bin/checkov $(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(LEGACY_VENV) $(CHECKOV_VENV) $(CLAUDE_CODE)/node_modules
