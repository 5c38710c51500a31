# MuFleet's single entry point. Every target bootstraps what it needs on a fresh machine:
# the virtual environment, the pinned packages and the generated gRPC stubs.
PYTHON ?= python3
VENV := .venv
# checkov (the Kubernetes manifests' security scan) lives in an environment of its own: its many
# pinned dependencies would clash with the runtime's (requirements-scan.txt).
SCAN_VENV := .venv-scan
PY := $(VENV)/bin/python
GAME ?= cartpole
RUN_DIR ?= runs/$(GAME)
PROTO_SRC := $(wildcard protos/*.proto)
PROTO_OUT := $(PROTO_SRC:.proto=_pb2.py)

.PHONY: system-packages venv test-deps protos test test-fast bench bench-learn run up compose clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# Test-only packages (google-deepmind/mctx and JAX, for the search cross-check): never in the
# runtime requirements, installed by the test targets only.
test-deps: $(VENV)/.crosscheck $(SCAN_VENV)/.installed

$(VENV)/.crosscheck: requirements-crosscheck.txt $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-crosscheck.txt
	touch $@

$(SCAN_VENV)/.installed: requirements-scan.txt
	$(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SCAN_VENV)/bin/python -m pip install --quiet -r requirements-scan.txt
	touch $@

protos: $(PROTO_OUT)

protos/%_pb2.py: protos/%.proto $(VENV)/.installed
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $<

# Debian packages the browser and deploy tests use: headless Chromium, Prometheus (with
# promtool) and docker-compose (which checks docker-compose.yml without a Docker engine).
system-packages:
	@if ! command -v chromium >/dev/null || ! command -v prometheus >/dev/null \
	    || ! command -v docker-compose >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium prometheus docker-compose >/dev/null; fi

test: system-packages venv test-deps protos
	$(PY) -m pytest -q tests

test-fast: venv test-deps protos
	$(PY) -m pytest -q -m "not integration and not e2e" tests

bench: venv protos
	$(PY) -m benchmarks

# Learning benchmark: 20 minutes of wall clock per seed (see docs/learning.md).
SEEDS ?= 0
BUDGET_MIN ?= 20
# The sample-efficient regime: make bench-learn PRESET=sample-efficient ENV_STEPS=50000 BUDGET_MIN=30
ENV_STEPS ?= 0
bench-learn: venv protos
	$(PY) -m benchmarks.learn --game $(GAME) --seeds $(SEEDS) --budget-min $(BUDGET_MIN) \
	  --preset "$(PRESET)" --env-steps-budget $(ENV_STEPS)

# Ports of `make run`: the fixed defaults (gRPC 50000-50002, metrics 9100-9106, dashboard 5000),
# PORT_BASE=P for the block P..P+20 (gRPC P..P+2, metrics P+10..P+16, dashboard P+20), or
# PORTS=free for free ports. The launcher names a taken port before it starts anything.
PORT_BASE ?=
PORTS ?= fixed
# Reanalyse workers of `make run` (docs/reanalyse.md): REANALYSERS=1 starts one.
REANALYSERS ?= 0
# A regime's settings (services/launcher/presets.py): PRESET=sample-efficient is EfficientZero's,
# PRESET=stochastic Stochastic MuZero's chance codes (2048).
PRESET ?=
LAUNCHER_PORTS = $(if $(filter-out fixed free,$(PORTS)),$(error PORTS must be fixed or free, got "$(PORTS)"))$(if \
  $(filter free,$(PORTS)),--free-ports)$(if $(PORT_BASE), --port-base $(PORT_BASE))

run: venv protos
	$(PY) -m services.launcher --game $(GAME) --run-dir $(RUN_DIR) --reanalysers $(REANALYSERS) --preset "$(PRESET)" $(LAUNCHER_PORTS)

# docker-compose.yml, docker-compose.gpu.yml and docker/prometheus.yml are generated from the fleet's program
# (services/launcher/topology.py); tests/deploy/test_compose_rendering.py fails when they drift.
compose: venv
	$(PY) -m services.launcher.compose --write

# The same fleet in containers (needs a Docker engine); see docs/docker.md.
up:
	GAME=$(GAME) docker-compose up --build

clean:
	rm -f protos/*_pb2.py protos/*_pb2.pyi protos/*_pb2_grpc.py
