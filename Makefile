# The two commands of the README: `make demo` (main job) and `make test` (`make test-fast` leaves
# out the tests marked slow); `make bench` regenerates benchmarks/RESULTS.md (~35 min on 2 cores;
# BENCH_ARGS="--quick" for a tiny smoke run).
# Both create the project virtualenv on first use; nothing has to be installed by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU-only machines: pin torch first so pip takes the CPU wheel instead of GBs of CUDA
# packages. On a GPU machine, e.g. `make TORCH_SPEC="torch==2.13.0" ...` with CUDA's index.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
BENCH_STAMP := $(VENV)/.bench-$(shell cksum pyproject.toml | cut -d' ' -f1)
DEMO_DIR ?= runs/demo
BENCH_ARGS ?=

.PHONY: setup demo test test-fast docs bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $@

# synthetic 128x512x512 EM volume -> predict (shipped checkpoint) -> segment -> evaluate;
# a rerun skips the stages already complete
demo: $(STAMP)
	$(VENV)/bin/blockseg demo --run-dir $(DEMO_DIR)

# the full suite (what CI runs), with its 20 slowest tests listed at the end
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --durations=20

# the development lane (<= 3 min on 2 cores): the suite less the tests marked slow
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" --durations=20

# the documentation site (mkdocs, material theme, mkdocstrings) -> site/; --strict: a warning fails it
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d site

# the peers (bench extra: stardist, monai, dask-image) on top of the normal setup
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test,bench]"
	rm -f $(VENV)/.bench-* && touch $@

# every benchmark -> benchmarks/RESULTS.md (its hand-measured part below the marker is kept),
# benchmarks/plots/*.png, benchmarks/results/bench.json
bench: $(BENCH_STAMP)
	PYTHONPATH=.:benchmarks $(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) out runs site *.egg-info
