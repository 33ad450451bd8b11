# icefloe: `make demo` installs everything and runs the demo; `make test` runs the test suite.
# Both use one virtual environment, .venv/, made by uv from uv.lock with a Python >= 3.12 found here.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
export UV_COMPILE_BYTECODE := 1
export UV_LINK_MODE := copy
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export ICECHUNK_LOG := error

# Candidates are *run*, not trusted by name: pyenv shims for missing versions exist but fail.
define find_python
for c in "$${PYTHON:-}" python3.14 python3.13 python3.12 \
         $$(ls -d $$(pyenv root 2>/dev/null || echo "$$HOME/.pyenv")/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV) \
         /usr/bin/python3.1[2-9] /usr/local/bin/python3.1[2-9] python3; do \
  [ -n "$$c" ] || continue; \
  if p=$$("$$c" -c 'import sys; assert sys.version_info >= (3, 12); print(sys.executable)' 2>/dev/null); then \
    echo "$$p"; exit 0; fi; \
done; exit 1
endef

UV = $(shell command -v uv 2>/dev/null || echo "python3 -m uv")

.PHONY: help install demo test test-fast lint clean

help:
	@echo "make demo        install (first time) and run the demo: build a cube from a small archive"
	@echo "make test        install (first time) and run the whole test suite (two workers)"
	@echo "make test-fast   only the fast tests (no servers, no slow ones)"
	@echo "make lint        ruff and mypy"

$(VENV)/.installed: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@py=$$($(find_python)) || { echo "icefloe needs Python >= 3.12; none found (set PYTHON=/path/to/python3.12)"; exit 1; }; \
	echo "using $$py"; \
	UV_PYTHON="$$py" $(UV) sync --frozen --all-groups
	@touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/icefloe demo

test: install
	$(VENV)/bin/pytest -n 2 --dist loadfile

test-fast: install
	$(VENV)/bin/pytest -m "not integration and not slow"

lint: install
	$(VENV)/bin/ruff check lib tasks flows tests benchmarks
	$(VENV)/bin/ruff format --check lib tasks flows tests benchmarks
	$(VENV)/bin/mypy lib tasks flows benchmarks

clean:
	rm -rf $(VENV) icefloe-demo .pytest_cache
