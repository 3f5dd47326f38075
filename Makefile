# The README's two commands are `make run` and `make test`. Both create the virtual
# environment .venv on first use (and again whenever pyproject.toml or the repair script
# changes), so a fresh clone needs nothing done by hand. Set EXTRA=gpu on a CUDA machine.
PYTHON ?= python3
VENV ?= .venv
EXTRA ?= cpu
PY := $(VENV)/bin/python
STAMP := $(VENV)/.refine-iqa-$(EXTRA)-installed
ARGS ?=

.PHONY: setup run test lint bench clean
setup: $(STAMP)

$(STAMP): pyproject.toml scripts/repair_cpu_env.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRA),dev]'
	@# CPU only: repair the CUDA-linked torch add-ons pip pulls beside the CPU torch
	@# (what and why: the docstring of scripts/repair_cpu_env.py).
	@if [ "$(EXTRA)" = "cpu" ]; then $(PY) scripts/repair_cpu_env.py; fi
	@touch $@

run: $(STAMP)
	$(PY) launch.py conf=tiny $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

# Every benchmark script, one after the other (each prints a table and writes JSON under
# outputs/bench/).
bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .cache outputs
