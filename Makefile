# Quick start: `make demo` (index data/ and ask a question), `make test` (run the tests).
# Both set up .venv first; the venv is reused when pyproject.toml has not changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
QUERY ?= symptoms of vitamin D deficiency

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint,eval,train,scale]'
	touch $@

demo: setup
	$(PY) scripts/build_index.py data/
	$(PY) scripts/ask.py "$(QUERY)"

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf indexes/ .pytest_cache
