# bnbook: every target installs what it needs into .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

VENV  := .venv
BIN   := $(CURDIR)/$(VENV)/bin
PY    := $(BIN)/python
STAMP := $(VENV)/.installed-stamp
BOOK  := _build/html/index.html

# Deterministic, offline, quiet runs: the venv's tools first, no network lookups by Playwright,
# a non-interactive matplotlib backend, and thread counts the 2-core CI machine can honour.
export PATH := $(BIN):$(PATH)
export MPLBACKEND := Agg
export OMP_NUM_THREADS ?= 2
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1

# Test files (each notebook is one) run this many at a time, one thread each.
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: help install book book-strict test lint pytest lab grade bench clean

help:
	@echo "make book   build the HTML book into _build/html (executes chapters, cached)"
	@echo "make test   ruff + strict book build + pytest (unit, conformance, nbval, browser)"
	@echo "make lab    open JupyterLab on the chapters, widgets working"
	@echo "make grade  grade every exercise notebook (never writes to them)"
	@echo "make bench  run the CPU benchmarks and record benchmarks/results/"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

install: $(STAMP)

# bookexec runs the notebooks that changed, one per core, into the cache the build then reads.
# A notebook that fails still leaves the other pages built, but make then fails too.
book: $(STAMP)
	@failed=0; $(PY) -m bnbook.bookexec . || failed=1; \
	$(BIN)/jupyter-book build . --keep-going; \
	echo; \
	if [ $$failed = 1 ]; then \
		echo "The book is built, but not whole: the notebooks named above failed to execute,"; \
		echo "and their pages stop at the error. Fix them and run make book again."; \
		exit 1; \
	fi; \
	echo "The book is built. Open it in a browser (no network needed):"; \
	echo "    file://$(CURDIR)/$(BOOK)"

# The strict build fails on any Sphinx warning or broken reference.
book-strict: $(STAMP)
	$(PY) -m bnbook.bookexec .
	$(BIN)/jupyter-book build . -W -n --keep-going

lint: $(STAMP)
	$(BIN)/ruff check .

pytest: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/pytest tests chapters exercises --nbval-lax --nbval-current-env -p no:cacheprovider \
		-n $(JOBS) --dist loadfile

test: lint book-strict pytest

lab: $(STAMP)
	$(BIN)/jupyter lab chapters

grade: $(STAMP)
	$(PY) -m bnbook.grading exercises

bench: $(STAMP)
	$(PY) benchmarks/cpu_batchnorm.py

clean:
	rm -rf _build .pytest_cache .ruff_cache .hypothesis
