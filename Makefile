# smtprs: install, run, test.
#
#   make run     install smtprs (pip install .) and run `smtprs serve` with the
#                embedded defaults (127.0.0.1:2525, local domain localhost,
#                data under ./smtprs-data); CONFIG=file.toml to use a file
#   make test    install everything the tests need on a fresh Debian 12 (Debian
#                packages such as swaks, the Rust build, the Python test
#                packages) and run the whole suite: cargo test, then pytest
#   make bench   the pytest-benchmark benchmarks of the Rust core (benches/)
#   make load-bench  the side-by-side load benchmark with Postfix and aiosmtpd
#                (python -m benches.load; LOAD_ARGS=--quick for a short run)
#   make fuzz    the cargo-fuzz targets, FUZZ_SECONDS each (default 60);
#                make bench-rust for the criterion ones (rust/benches/)
#   make e2e     only the end-to-end tests (no reinstall)
#   make lint    ruff (format --check and lint), clippy -D warnings, rustfmt
#                --check, mypy and mypy.stubtest (CI runs it after make test)
#
# The Python used is scripts/find-python.sh's choice: the active interpreter,
# or a virtualenv in build/venv when that is Debian's externally managed one.
# Set PYTHON=... to choose.  PYTEST_ARGS=... is passed to pytest.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
export PATH := $(HOME)/.cargo/bin:$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

PYTHON := $(shell scripts/find-python.sh)
PIP = $(PYTHON) -m pip
PYTEST_ARGS ?=
VENV := $(CURDIR)/build/venv
# libpython for `cargo test` (pyo3 links it when extension-module is off)
PY_LIBDIR = $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')

.PHONY: run test bench bench-rust load-bench fuzz e2e unit core lint deps deps-build python-env install-test cargo-test pytest clean

run: deps-build python-env
	$(PIP) install .
	$(PYTHON) -m smtprs serve $(if $(CONFIG),--config $(CONFIG))

test: deps python-env
	$(PIP) install -e '.[test]'
	$(MAKE) --no-print-directory cargo-test
	$(MAKE) --no-print-directory pytest

deps:
	PYTHON=python3 scripts/install-deps.sh all

deps-build:
	PYTHON=python3 scripts/install-deps.sh build

python-env:
	@if [ "$(PYTHON)" = "$(VENV)/bin/python" ] && [ ! -x "$(VENV)/bin/python" ]; then \
		echo "python3 is externally managed: making a virtualenv in $(VENV)"; \
		python3 -m venv "$(VENV)"; \
		"$(VENV)/bin/python" -m pip install -q --upgrade pip; \
	fi

install-test: python-env
	$(PIP) install -e '.[test]'

cargo-test:
	PYO3_PYTHON="$(PYTHON)" LD_LIBRARY_PATH="$(PY_LIBDIR)$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}" cargo test --workspace

pytest:
	$(PYTHON) -m pytest $(PYTEST_ARGS)

e2e:
	$(PYTHON) -m pytest tests/e2e $(PYTEST_ARGS)

unit:
	$(PYTHON) -m pytest tests/unit tests/core $(PYTEST_ARGS)

bench: deps-build install-test
	$(PYTHON) -m pytest benches --benchmark-only $(PYTEST_ARGS)

bench-rust:
	PYO3_PYTHON="$(PYTHON)" LD_LIBRARY_PATH="$(PY_LIBDIR)$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}" cargo bench --workspace

lint:
	$(PYTHON) -m ruff format --check python tests benches
	$(PYTHON) -m ruff check python tests benches
	cargo clippy --workspace --all-targets -- -D warnings
	cargo fmt --all --check
	$(PYTHON) -m mypy
	$(PYTHON) -m mypy.stubtest smtprs._core

fuzz:
	scripts/fuzz.sh $(or $(FUZZ_SECONDS),60)

load-bench: deps python-env
	$(PIP) install -e '.[test,bench]'
	$(PYTHON) -m benches.load $(LOAD_ARGS)

clean:
	rm -rf build dist .pytest_cache .benchmarks .hypothesis .mypy_cache rust/fuzz/target rust/fuzz/corpus rust/fuzz/artifacts
	find python -name '*.so' -delete
	cargo clean
