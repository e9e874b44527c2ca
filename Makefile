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
# The CPU build targets AVX2 rather than -march=native: llama.cpp's AMX kernels, which a native
# build picks on recent Xeons, crash in decode on some virtual machines (SIGSEGV in
# ggml_backend_amx_mul_mat, seen on our CI machines). Override LLAMA_CPU_ARGS to tune for yours.
ifeq ($(UNAME_M),x86_64)
LLAMA_CPU_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
else
LLAMA_CPU_ARGS ?= -DGGML_NATIVE=ON
endif
CMAKE_ARGS_cpu := $(LLAMA_CPU_ARGS) -DGGML_METAL=OFF -DGGML_CUDA=OFF
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

LLAMA_CPP_SPEC ?= llama-cpp-python==0.3.36

STAMP := $(VENV)/.installed-$(LLAMA_BACKEND)

.PHONY: run test bench screenshot install system-deps bundle bundle-launch-time clean-venv

# Debian packages some tests use: strace (the offline proof), dpkg-dev and desktop-file-utils (the
# .deb), librsvg2-bin (icons), xvfb/xauth/xdotool and Qt's xcb libraries (a real window). Installed
# when we are root with apt-get; elsewhere the tests that need them skip and say which is missing.
SYSTEM_PACKAGES := strace dpkg-dev desktop-file-utils librsvg2-bin xvfb xauth xdotool \
	libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
	libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0

install: $(STAMP)

# pip's wheel cache does not know about CMAKE_ARGS: a cached wheel may have been built for
# another backend or CPU, so llama-cpp-python is always compiled here with this backend's flags.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH_INDEX) "$(TORCH_SPEC)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --no-cache-dir --force-reinstall --no-deps "$(LLAMA_CPP_SPEC)"
	$(PIP) install -e ".[convert,desktop,dev,bundle]"
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(BIN)/medgemma-desktop

system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "note: not installed (the tests that need them will skip):" $$missing; \
	fi

test: $(STAMP) system-deps
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python tests/bench/run_all.py

# The Linux installers in dist/: a one-folder bundle, a .tar.gz and a .deb (packaging/README.md).
bundle: $(STAMP) system-deps
	bash packaging/build_linux.sh

# Seconds from launching the bundle to its window being shown, under a virtual display.
bundle-launch-time: bundle
	bash packaging/launch_time.sh dist/medgemma-desktop/medgemma-desktop 3

screenshot: $(STAMP) system-deps
	PYTHONPATH=. xvfb-run -a -s "-screen 0 1920x1080x24" $(BIN)/python packaging/screenshot.py

clean-venv:
	rm -rf $(VENV)
