# phigate: `make run` runs the gateway on its embedded defaults, `make test` runs every test.
# Both set up what they need (Debian packages, a virtualenv with the project installed).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEBS   := postfix swaks libnet-ssleay-perl nsd postgresql opendkim redis-server gnupg openssl \
          chromium chromium-driver

.PHONY: run test lint typecheck check deps venv bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests use as real peers (Postfix's smtp-sink and smtp-source, swaks).
deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

run: $(STAMP)
	$(VENV)/bin/phigate run --config conf/gateway.yaml

test: deps $(STAMP) lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway portal tests $(wildcard bench)

typecheck: $(STAMP)
	$(VENV)/bin/mypy gateway portal

bench: deps $(STAMP)
	$(PY) bench/relay.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
