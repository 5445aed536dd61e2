# Two commands do all the set-up: `make demo` and `make test`. Both create .venv if it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo tabular test lint format clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) setup.py
	$(PY) -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# The embedded default main job: SFT -> preference/reward models -> every policy method ->
# evaluation against the exact Nash equilibrium, into runs/demo (results.json, PNGs).
demo: $(STAMP)
	$(PY) -m nlhf_jax.train --workdir runs/demo

# The exact tabular lab (seconds): every algorithm on small games, into runs/tabular.
tabular: $(STAMP)
	$(PY) -m nlhf_jax.tabular --out runs/tabular

test: $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q tests

lint: $(TEST_STAMP)
	$(PY) -m ruff check .

format: $(TEST_STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache
