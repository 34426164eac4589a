# Every target sets itself up: a .venv is created and filled on first use.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: run test docs bench lock clean-venv

# The versions the bit-exact tests rely on are pinned in constraints.txt (written by
# `make lock`); widening it is a deliberate change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip uv
	$(VENV)/bin/uv pip install -q --python $(VPY) -c constraints.txt -e ".[dev,studies,docs]"
	touch $(STAMP)

## Re-resolve the pinned versions (a deliberate change: review the diff, run make test).
lock:
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra studies --extra docs \
	    --python-version 3.11 -o constraints.txt

## The main job: train on an offline dataset (no download), print test metrics.
run: $(STAMP)
	$(VPY) -m mixjax.main --config=experiments/mnist1d.py --workdir=runs/mnist1d

## The whole test suite (4 forced CPU devices; see tests/conftest.py).
test: $(STAMP)
	$(VPY) -m pytest -q -n 2 tests

## The documentation site (docs/, the docstrings; pages keep their repository paths) in
## site/; --strict: a broken link, anchor or API reference fails (not with --quiet, which
## hides the warnings that --strict counts).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VPY) -m mkdocs build --strict

## Speed: mixup / ERM / approximate-risk steps side by side (and PyTorch if installed),
## then images/s of the CIFAR-10 recipe step (PreAct-ResNet-18), ERM vs mixup.
bench: $(STAMP)
	$(VPY) -m pip install -q "torch==2.13.*" || echo "PyTorch not installed: the PyTorch column is skipped"
	$(VPY) -m benchmarks.bench_steps
	$(VPY) -m benchmarks.bench_train --steps=3 --repeats=2

clean-venv:
	rm -rf $(VENV)
