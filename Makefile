# Two commands do all set-up on a fresh machine: `make demo` (the main job) and `make test` (the tests).
# Both create or reuse the virtualenv in .venv (see scripts/setup_venv.sh).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test lint bench clean-runs

venv:
	@bash scripts/setup_venv.sh

demo: venv
	$(VENV)/bin/npdraw run configs/demo.yaml

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check npdraw_core plugins serving tune baselines experiments tests benchmarks

bench: venv
	$(PY) benchmarks/bench_parse_and_bank.py
	$(PY) benchmarks/bench_sampling.py
