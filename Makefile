# Quick start: `make demo` (set up + SGD vs SAM demo + report), `make test` (set up + tests).
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED_DATA ?= ../shared/data
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo miniature cifar test setup gpu-wheels

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# CIFAR-10 in data/ (or $SAM_DATA): downloaded there once when online (dataset.download
# is on by default); on the offline machines rebuilt from ../shared/data, whose re-encoded
# files need dataset.verify=false. Offline with neither, the demo says so loudly and falls
# back to synthetic data, labelled "synthetic (fallback for cifar10)" in results.json and
# in the report; the miniature needs the real data and stops with one line instead.
VERIFY = $$( [ -f data/.repacked ] && echo dataset.verify=false )

cifar: setup
	@if [ -z "$$SAM_DATA" ] && [ ! -d data/cifar-10-batches-py ] && [ -x $(SHARED_DATA)/materialize ]; then \
		PYTHON=$(PY) $(SHARED_DATA)/materialize data && touch data/.repacked; fi

# The demo (configs/experiment/demo.yaml): SGD vs SAM under 40% label noise, ~3 min; its
# closing lines (sam/report/demo.py) say what the two runs showed and what they do not.
demo: cifar
	D=outputs/demo/$$(date +%Y-%m-%d_%H-%M-%S) && \
	$(VENV)/bin/sam-train -m experiment=demo hydra.sweep.dir=$$D $(VERIFY) $(ARGS) && \
	$(VENV)/bin/sam-report $$D && \
	$(PY) -m sam.report.demo $$D

# The paper in miniature (configs/experiment/miniature.yaml): 10 runs on real CIFAR-10,
# under an hour on 2 CPU cores; recorded in benchmarks/miniature_<date>.md.
miniature: cifar
	D=outputs/miniature/$$(date +%Y-%m-%d_%H-%M-%S) && \
	$(VENV)/bin/sam-train -m experiment=miniature hydra.sweep.dir=$$D $(VERIFY) $(ARGS) && \
	$(VENV)/bin/sam-train -m experiment=miniature dataset.label_noise=0.0 seed=0,1 \
		hydra.sweep.dir=$$D $(VERIFY) $(ARGS) && \
	$(VENV)/bin/sam-report $$D

test: setup
	$(PY) -m pytest $(ARGS)

# Pure-Python wheels the lent GPU machine lacks (it has torch, tensorboard, tqdm); carry
# .whl with the run and start it with `bash scripts/gpu_check.sh`.
gpu-wheels: setup
	$(PY) -m pip wheel -q --no-deps -w .whl hydra-core==1.3.2 omegaconf==2.3.0 \
		antlr4-python3-runtime==4.9.3
