# The README's two commands are `make run` and `make test`; `make bench`, `make reproduce`
# (the README's "Does it learn?") and `make lint` are the others. Each creates the virtual
# environment .venv on first use (and again whenever pyproject.toml or one of the two
# setup scripts changes), so a fresh clone needs nothing done by hand. Set EXTRA=gpu on a
# CUDA machine; there setup also builds DeepSpeed's CPU Adam (ZeRO offload) once, instead
# of on every learner node at its first step (scripts/build_cpu_adam.py; needs g++, ninja,
# Python.h).
PYTHON ?= python3
VENV ?= .venv
EXTRA ?= cpu
PY := $(VENV)/bin/python
STAMP := $(VENV)/.refine-iqa-$(EXTRA)-installed
ARGS ?=

.PHONY: setup run test lint bench reproduce clean browser gpu-smoke gpu-extra
setup: $(STAMP) browser

$(STAMP): pyproject.toml scripts/repair_cpu_env.py scripts/build_cpu_adam.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRA),dev]'
	@# CPU only: repair the CUDA-linked torch add-ons pip pulls beside the CPU torch
	@# (what and why: the docstring of scripts/repair_cpu_env.py).
	@if [ "$(EXTRA)" = "cpu" ]; then $(PY) scripts/repair_cpu_env.py; fi
	@# GPU only: compile DeepSpeed's CPU Adam now rather than at the first training step
	@# (why: the docstring of scripts/build_cpu_adam.py); a missing toolchain stops here.
	@if [ "$(EXTRA)" = "gpu" ]; then $(PY) scripts/build_cpu_adam.py; fi
	@touch $@

run: $(STAMP)
	$(PY) launch.py conf=tiny $(ARGS)

# The review page's test (tests/test_review_page.py) drives the OS Chromium through the OS
# chromedriver (Playwright's and Selenium's own browser downloads need the open internet):
# installed here when missing, on Debian as root; elsewhere one line, and that test skips.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium + chromium-driver (apt-get) for the review page's browser test"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver; } >/dev/null \
	  || echo "could not install chromium: the browser test will be skipped"; \
	else echo "no chromium/chromedriver and no root apt-get: the browser test will be skipped"; fi

test: $(STAMP) browser
	$(PY) -m pytest $(ARGS)

# Every benchmark script, one after the other (each prints a table and writes JSON under
# outputs/bench/).
bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The paper's experiments in miniature on the embedded model (README "Does it learn?"):
# the probes (teacher, start model, FR oracle), base / Stage-2 / Stage-2 on the learnability
# subset / Stage-1 -> Stage-2 / Stage-2 without PD / the score fine-tune, two seeds; about
# 44 minutes on 2 cores with --stage2-steps 60 --stage1-steps 30 (34 before the fine-tune
# row's ~10; plus the model's first build, ~15 minutes); the
# configs' 100 / 60 steps take longer (not measured with the eye); prints the table, writes
# outputs/bench/reproduce.json and plots.
# `make reproduce ARGS="--seeds 1 --stage2-steps 10"` passes options (--help lists them).
reproduce: $(STAMP)
	$(PY) benchmarks/reproduce.py $(ARGS)

# The GPU path end to end on the tiny model, a PASS/FAIL table and outputs/gpu_smoke/
# gpu_smoke.json (scripts/gpu_smoke.py says what each row runs); on a CUDA machine, with
# `make gpu-smoke EXTRA=gpu`. gpu-extra comes first: the CPU build is never installed for it.
gpu-smoke: gpu-extra $(STAMP)
	$(PY) scripts/gpu_smoke.py $(ARGS)

gpu-extra:
	@if [ "$(EXTRA)" != gpu ]; then echo "make gpu-smoke needs the GPU build: make gpu-smoke EXTRA=gpu (scripts/gpu_smoke.py --cpu checks the harness on CPU)"; exit 2; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .cache outputs
