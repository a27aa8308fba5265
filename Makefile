# Two entry points (see README): `make report` and `make test`.
# Both create the virtual environment at .venv/ when it is missing.
# torch==2.13.0 is installed FIRST (the CPU build on this machine's disk), so the
# project's torch range is already satisfied and pip never pulls a CUDA build.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.grokscope-installed

.PHONY: setup report test lint clean-venv

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

report: $(STAMP)
	$(VENV)/bin/grokscope report checkpoints/composition-small --out reports/composition-small

test: $(STAMP)
	OMP_NUM_THREADS=1 TQDM_DISABLE=1 $(VENV)/bin/python -m pytest -q -rs -n 2 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
