# llm-authz — everything starts from `make install`, which builds .venv from pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# The OPA engine bindings declare Python>=3.14 but their wheel runs on 3.11: install it apart.
OPA_BINDINGS := opa-golib-python-bindings==0.4.4

.PHONY: install system-packages run test test-unit policy-test bench schema fuzz clean mutate

# Programs the tests start for real, each with the Debian package that provides it:
# Redis (shared quotas), Chromium (the replay HTML report), kubectl (kustomize render),
# promtool (alert rules).
SYSTEM_PACKAGES := redis-server:redis-server chromium:chromium kubectl:kubectl promtool:prometheus

install: system-packages $(VENV)/.installed

# Installs, through apt-get, the Debian packages whose programs are missing (sudo when not root).
system-packages:
	@missing=""; \
	for pair in $(SYSTEM_PACKAGES); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
	  echo "installing system packages:$$missing"; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps --ignore-requires-python $(OPA_BINDINGS)
	touch $@

run: install
	$(BIN)/python -m llm_authz.demo.stack

test: install
	$(BIN)/llm-authz policy test policies/rego
	$(BIN)/python -m pytest -q

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

policy-test: install
	$(BIN)/llm-authz policy test policies/rego

# Mutation testing of the security-critical modules and the default policy (slow; see docs/testing.md).
mutate: install
	$(BIN)/pip install -q -e '.[test,mutate]'
	$(BIN)/python tests/mutation/run.py

# The whole-check properties (tests/unit/test_check_properties.py) over many more hostile requests
# than `make test` runs, with fresh random seeds: FUZZ_EXAMPLES=20000 is about 6 CPU-minutes.
FUZZ_EXAMPLES ?= 20000
fuzz: install
	LLM_AUTHZ_FUZZ=1 LLM_AUTHZ_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -p no:cacheprovider \
	  tests/unit/test_check_properties.py --hypothesis-show-statistics --timeout=0

bench: install
	$(BIN)/python bench/run.py

schema: install
	$(BIN)/llm-authz schema > docs/input-v1.schema.json

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info service/*.egg-info
