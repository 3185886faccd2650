# The two commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch is pinned to 2.13.0 in the dev extra: an unpinned torch pulls gigabytes of CUDA.
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) scripts/demo.py

test: install
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=20

bench: install
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .demo build *.egg-info
