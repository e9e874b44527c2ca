# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

# Which llama.cpp backend llama-cpp-python is compiled with: cpu, cuda or metal.
UNAME_S := $(shell uname -s)
UNAME_M := $(shell uname -m)
ifeq ($(UNAME_S)-$(UNAME_M),Darwin-arm64)
LLAMA_BACKEND ?= metal
else
LLAMA_BACKEND ?= cpu
endif
CMAKE_ARGS_cpu := -DGGML_METAL=OFF -DGGML_CUDA=OFF
CMAKE_ARGS_cuda := -DGGML_CUDA=ON
CMAKE_ARGS_metal := -DGGML_METAL=ON
LLAMA_CMAKE_ARGS := $(CMAKE_ARGS_$(LLAMA_BACKEND))
ifeq ($(LLAMA_CMAKE_ARGS),)
$(error LLAMA_BACKEND must be cpu, cuda or metal, not '$(LLAMA_BACKEND)')
endif

# The CPU build of torch: an unpinned torch pulls a multi-GB CUDA build just to merge adapters.
TORCH_SPEC ?= torch==2.13.0
# Optional: a PyTorch wheel index serving CPU-only builds, for Linux machines whose default index has none.
TORCH_INDEX_URL ?=
TORCH_INDEX := $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL),)

STAMP := $(VENV)/.installed-$(LLAMA_BACKEND)

.PHONY: run test bench screenshot install clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH_INDEX) "$(TORCH_SPEC)"
ifneq ($(LLAMA_BACKEND),cpu)
	# pip's wheel cache does not know about CMAKE_ARGS: build this backend afresh.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --no-cache-dir --force-reinstall --no-deps llama-cpp-python
endif
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -e ".[convert,desktop,dev]"
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(BIN)/medgemma-desktop

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python tests/bench/run_all.py

screenshot: $(STAMP)
	xvfb-run -a -s "-screen 0 1400x900x24" $(BIN)/python packaging/screenshot.py docs/screenshot.png

clean-venv:
	rm -rf $(VENV)
