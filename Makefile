# The two commands of the README: `make demo` (main job) and `make test`.
# Both create the project virtualenv on first use; nothing has to be installed by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU-only machines: pin torch first so pip takes the CPU wheel instead of GBs of CUDA
# packages. On a GPU machine, e.g. `make TORCH_SPEC="torch==2.13.0" ...` with CUDA's index.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
DEMO_DIR ?= runs/demo

.PHONY: setup demo test clean

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

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) out runs *.egg-info
