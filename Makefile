# Two commands on a fresh machine: `make demo` (the offline default run) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: demo test test-fast lint dry-run report-html rehearsal clean

$(VENV)/.installed: envs/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r envs/requirements.txt
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml --show-failed-logs

lint: $(VENV)/.installed
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/ruff check workflow tests

test: lint
	$(BIN)/python -m pytest -q tests

# The unit tests only (no end-to-end workflow runs): a minute or two.
test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "not slow" tests

# The self-contained HTML report of the last `make demo` (every figure and table with captions).
report-html: $(VENV)/.installed
	$(BIN)/snakemake --cores 1 --configfile $(or $(CONFIG),config/demo.yaml) --report results/report/report.html
	@echo "Open results/report/report.html in a browser."

# The full study at full size on synthetic data (a benchmark, not a test): results/bench/full_study.json
rehearsal: $(VENV)/.installed
	$(BIN)/python workflow/bench/full_study.py $(ARGS)

dry-run: $(VENV)/.installed
	$(BIN)/snakemake -n

clean:
	rm -rf results/shards results/embeddings results/probes results/report logs benchmarks .snakemake
