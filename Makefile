# The two commands of the README: `make demo` (the main job) and `make test` (the test suite).
# Each runs the idempotent set-up first (scripts/setup.sh).
PY := .venv/bin/python

.PHONY: setup setup-vllm demo test test-fast lint check-floors

setup:
	@bash scripts/setup.sh

# the vLLM rollout engine's own environment, in the cache (engine.kind: vllm; about 5 minutes once per machine)
setup-vllm: setup
	@bash scripts/setup_vllm.sh

# the evaluations and the Step-GRPO rollouts sample on a vLLM server (docs/demo.md measures it so); `python -m
# more_lightning demo` alone samples in-process (engine hf) and needs no vLLM environment
demo: setup setup-vllm
	$(PY) -m more_lightning demo --engine vllm

# two workers (pytest-xdist) share the cores; `--dist loadgroup` keeps an xdist_group (the vLLM tests) on one worker
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# the vLLM tests run after the others, alone: a vLLM server beside two workers that have loaded models filled this
# 24 GiB machine and stalled the run (two servers at once: the whole memory, no progress for over 10 minutes)
test: setup setup-vllm
	$(PYTEST) -m "not vllm"
	$(PY) -m pytest -q -m vllm

# the unit and integration tiers (tests/README.md): no subprocess runs, no distributed fits, sweeps, demo or vLLM
test-fast: setup
	$(PYTEST) -m "not e2e"

lint: setup
	$(PY) -m ruff check more_lightning tests bench

# Not part of `test`: installs every dependency at its pyproject.toml floor into .venv-floors and runs the tiny fit there.
check-floors:
	bash scripts/check_floors.sh
