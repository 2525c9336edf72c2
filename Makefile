# Quick start: `make demo` (set up + SGD vs SAM demo + report), `make test` (set up + tests).
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED_DATA ?= ../shared/data
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test setup gpu-wheels

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# CIFAR-10 in data/ (or $SAM_DATA); on the offline machines rebuilt from ../shared/data,
# whose re-encoded files need dataset.verify=false. Without CIFAR the demo says so and
# falls back to synthetic data.
demo: setup
	@if [ -z "$$SAM_DATA" ] && [ ! -d data/cifar-10-batches-py ] && [ -x $(SHARED_DATA)/materialize ]; then \
		PYTHON=$(PY) $(SHARED_DATA)/materialize data && touch data/.repacked; fi
	$(VENV)/bin/sam-train -m experiment=demo optim=sgd,sam \
		$$( [ -f data/.repacked ] && echo dataset.verify=false ) $(ARGS)
	$(VENV)/bin/sam-report "$$(ls -d outputs/demo/*/ | tail -n 1)"

test: setup
	$(PY) -m pytest $(ARGS)

# Pure-Python wheels the lent GPU machine lacks (it has torch, tensorboard, tqdm); carry
# .whl with the run and start it with `bash scripts/gpu_check.sh`.
gpu-wheels: setup
	$(PY) -m pip wheel -q --no-deps -w .whl hydra-core==1.3.2 omegaconf==2.3.0 \
		antlr4-python3-runtime==4.9.3
