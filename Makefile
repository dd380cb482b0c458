# tlmic: `make demo`, `make test` and `make docs` work from a fresh clone (they create .venv/ when missing).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test docs install install-test install-docs clean-cache

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt --upgrade pip

# Stamp files re-install only when pyproject.toml or constraints.txt changes. -c constraints.txt: the
# tested version of every package, whatever newer the registry offers. --no-compile: byte-compiling
# every file of torch costs more at install (about 35 s here) than compiling the modules actually
# imported, once.
PIP_INSTALL := -m pip install --quiet --no-compile -c constraints.txt

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python $(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python $(PIP_INSTALL) -e '.[test]'
	touch $(VENV)/.installed $@

$(VENV)/.installed-docs: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python $(PIP_INSTALL) -e '.[docs]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
install-docs: $(VENV)/.installed-docs

demo: $(VENV)/.installed
	$(BIN)/tlmic demo

# OPENBLAS_NUM_THREADS at OpenBLAS's own default (the core count), set before Python starts: with
# OpenBLAS 0.3.30/0.3.31 (numpy 2.4's and scipy 1.17's wheels) a thread count lowered in one thread
# and raised back from another stays lowered unless it came from the environment, which the
# overlapping-cells limit test then reports (the library issue itself is noted for planning).
test: $(VENV)/.installed-test
	OPENBLAS_NUM_THREADS=$${OPENBLAS_NUM_THREADS:-$$(nproc)} $(BIN)/python -m pytest -q

# The site into site/ (git-ignored); --strict turns every warning (a broken link, a docstring griffe
# cannot parse, a CLI command mkdocs-click cannot render) into a failure. mkdocstrings 1.x: 0.30 fails
# on pymdown-extensions 13 (Highlight.__init__ wants md).
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean-cache:
	find cache -mindepth 1 -not -name README.md -not -name .gitignore -delete
