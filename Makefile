# The two commands a newcomer needs (README): `make run` and `make test`.
# Both create or reuse .venv from requirements.lock (scripts/setup.sh); a second run skips the install.
SHELL := /bin/bash
PY := .venv/bin/python
export DIFFUSERS_VERBOSITY := error
export TRANSFORMERS_VERBOSITY := error
export TOKENIZERS_PARALLELISM := false
export HF_HUB_DISABLE_TELEMETRY := 1
# OpenMP threads sleep instead of spinning while they wait: 10-100x faster on a busy shared CPU (benchmarks/README.md)
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup run test lint sync-notebooks check-notebooks wheelhouse site

setup:
	@bash scripts/setup.sh

## Main job: execute every notebook headless on the offline model; executed notebooks and images -> outputs/
run: setup
	@$(PY) scripts/run_notebooks.py

## Tests: unit tests, the real-architecture check, nbval over every notebook, notebook hygiene, ruff
test: setup
	@bash scripts/setup_browser.sh
	@$(PY) -m ruff check .
	@$(PY) scripts/run_tests.py $(PYTEST_ARGS)  # two pytest sessions side by side: tests, notebooks

lint: setup
	@$(PY) -m ruff check . && $(PY) -m ruff format --check helpers tests scripts benchmarks login.py

## Regenerate each .ipynb from its py:percent twin (edit the .py, then run this)
sync-notebooks: setup
	@$(PY) scripts/sync_notebooks.py

## Classroom: every wheel `make setup` needs, for this platform and Python, in wheelhouse/ (copy it to a USB stick;
## with wheelhouse/ next to a clone, `make setup` installs from it without network). TEACHING.md says more.
wheelhouse: setup
	@$(PY) scripts/build_wheelhouse.py

## Classroom: execute the notebooks and build a static HTML site (lessons, figures, math, folded solutions) -> outputs/site/
site: setup
	@$(PY) scripts/build_site.py
