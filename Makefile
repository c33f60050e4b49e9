# Two commands set everything up on a fresh machine: `make bench` and `make test`.
# Both create or reuse .venv, install what is missing, and build the extension in place
# (ninja, --no-build-isolation, so it compiles against the torch that imports it).
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
BUILT := .stamp-built
CSRC := $(shell find csrc -type f 2>/dev/null) setup.py pyproject.toml
CU := $(wildcard csrc/cuda/*.cu)
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_CHECK_DIR := build/cuda-check
PYTEST_ARGS ?=

# /usr/local/bin/nvcc may be a wrapper script: prefer the toolkit's usual home.
CUDA_HOME ?= $(or $(wildcard /usr/local/cuda),$(patsubst %/bin/nvcc,%,$(NVCC)))
CXX ?= g++
LINT_CXX := $(shell git ls-files 'csrc/*.h' 'csrc/*.cpp' 'csrc/*.cu' 'csrc/*.cuh' 'tests/*.cu' 2>/dev/null)

.PHONY: setup build test lint bench demo info cuda-check cross-check gpu-check sanitize clean

setup: $(DEPS)

# torch: reuse one the base Python can import (a GPU machine's CUDA build), else the
# pinned CPU wheel. Never a bare `torch`: that pulls several GB of CUDA packages.
$(DEPS): Makefile
	@if [ ! -x $(VPY) ]; then \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; fi
	@$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q torch==2.13.0
	@$(VPY) -c "import pybind11, ninja, pytest, pytest_benchmark, packaging, tqdm, matplotlib, setuptools, wheel" 2>/dev/null || \
	  $(VPY) -m pip install -q pybind11 ninja pytest pytest-benchmark packaging tqdm matplotlib setuptools wheel
	@[ -x $(VENV)/bin/ruff ] && [ -x $(VENV)/bin/clang-format ] || \
	  $(VPY) -m pip install -q ruff==0.17.5 clang-format==23.1.3
	@touch $@

build: $(BUILT)

# One extension module per CPU level (setup.py: fused_rnn._C_default / _C_avx2 / _C_avx512),
# one after the other (torch writes one build.ninja per temp folder). Built into build/lib,
# then renamed into the package: a running process (a test run while the extension is
# rebuilt) keeps the module it loaded, where an in-place copy would overwrite the file under it.
# The stamp takes the time the build started, so a source edited during a build is rebuilt;
# a build of some levels only (FUSED_RNN_CPU_LEVELS=avx512 make build) leaves no stamp, so the
# next plain `make build` rebuilds the others.
$(BUILT): $(DEPS) $(CSRC)
	@touch $@.started
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VPY) setup.py -q build_ext --build-lib build/lib
	@rm -f fused_rnn/_C.*.so  # the single-level module of older builds
	@for f in build/lib/fused_rnn/_C*.so; do \
	  cp "$$f" "fused_rnn/.$$(basename $$f).new" && mv -f "fused_rnn/.$$(basename $$f).new" "fused_rnn/$$(basename $$f)"; done
	@if [ -n "$$FUSED_RNN_CPU_LEVELS" ]; then rm -f $@.started $@; else mv $@.started $@; fi

# Every CUDA source must compile for sm_80 and sm_90 with plain nvcc (no torch, no cuBLAS), and
# the C++ that drives the kernels (ops_cuda.cpp) must compile against torch's and CUDA's
# headers, in the C++ standard torch's extensions build with (syntax only: the CPU wheel has no CUDA libraries to link, and lacks the one header
# a CUDA build of torch generates, cuda_cmake_macros.h, written here as the CUDA wheels have it
# and searched after torch's own). Without nvcc this is
# skipped with a message, except under CI=true, where it fails: CI promises the check.
cuda-check: $(DEPS)
	@if [ -z "$(NVCC)" ]; then \
	  if [ "$(CI)" = "true" ]; then echo "cuda-check: nvcc not found, and CI=true requires it"; exit 1; fi; \
	  echo "cuda-check: nvcc not found, skipped"; exit 0; fi; \
	mkdir -p $(CUDA_CHECK_DIR); \
	for f in $(CU); do \
	  echo "nvcc $$f (sm_80, sm_90)"; \
	  $(NVCC) -std=c++17 -O2 -Icsrc -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90 \
	    -c $$f -o $(CUDA_CHECK_DIR)/$$(basename $$f).o || exit 1; \
	done; \
	echo "nvcc -ptx csrc/cuda/pointwise.cu (sm_90): the vector kernels' global stores are 16 bytes"; \
	$(NVCC) -std=c++17 -O2 -Icsrc -arch=sm_90 -ptx csrc/cuda/pointwise.cu -o $(CUDA_CHECK_DIR)/pointwise.ptx && \
	  $(VPY) tests/ptx_vector_stores.py $(CUDA_CHECK_DIR)/pointwise.ptx || exit 1; \
	echo "$(CXX) -fsyntax-only csrc/ops_cuda.cpp (torch and CUDA headers)"; \
	mkdir -p $(CUDA_CHECK_DIR)/include/c10/cuda/impl; \
	echo "#define C10_CUDA_BUILD_SHARED_LIBS" > $(CUDA_CHECK_DIR)/include/c10/cuda/impl/cuda_cmake_macros.h; \
	$(CXX) -std=c++20 -fsyntax-only -DFUSED_RNN_WITH_CUDA -Icsrc -I$(CUDA_HOME)/include \
	  $$($(VPY) -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I' + p for p in include_paths()))") \
	  -idirafter $(CUDA_CHECK_DIR)/include csrc/ops_cuda.cpp || exit 1; \
	echo "nvcc tests/cuda_host_check.cu (runs on the host, no GPU)"; \
	$(NVCC) -std=c++17 -O2 -Icsrc -gencode=arch=compute_80,code=sm_80 tests/cuda_host_check.cu \
	  -o $(CUDA_CHECK_DIR)/cuda_host_check && $(CUDA_CHECK_DIR)/cuda_host_check

# The op tests and the adversarial suite against an extension built with AddressSanitizer and
# UndefinedBehaviorSanitizer (CPU), in build/sanitize (the package's Python files beside the
# sanitized _C; the normal build is untouched). The ASan runtime is preloaded because python
# is not built with it; leaks are not checked (the interpreter's own would drown ours).
SAN_DIR := build/sanitize
SAN_TESTS ?= tests/test_ops_numerics.py tests/test_ops_autograd.py tests/test_ops_errors.py \
  tests/test_ops_cpu_paths.py tests/test_cells.py tests/test_adversarial.py
sanitize: $(DEPS)
	FUSED_RNN_SANITIZE=1 FUSED_RNN_CPU_ONLY=1 FUSED_RNN_CPU_LEVELS=avx2 PATH="$(CURDIR)/$(VENV)/bin:$$PATH" \
	  $(VPY) setup.py -q build_ext --build-lib $(SAN_DIR)/lib --build-temp $(SAN_DIR)/temp
	@find fused_rnn -name '*.py' | while read f; do mkdir -p $(SAN_DIR)/lib/$$(dirname $$f); cp $$f $(SAN_DIR)/lib/$$f; done
	cd $(SAN_DIR)/lib && \
	  LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so) $$($(CXX) -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(CURDIR)/$(VPY) -m pytest -q -p no:cacheprovider $(addprefix $(CURDIR)/,$(SAN_TESTS))

# ruff (configured in pyproject.toml) and clang-format (.clang-format), in check mode.
lint: $(DEPS)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/clang-format --dry-run --Werror $(LINT_CXX)

# The C++ sources must build for aarch64 (Graviton, Ampere, Apple silicon under Linux): every
# .cpp syntax-checked by Debian's aarch64 cross compiler against torch's headers (the same for
# every architecture; ATen's Vectorized then takes its NEON path). The compiler is installed
# with apt-get where missing and we are root (CI is); otherwise skipped with a message, except
# under CI=true, where it fails.
AARCH64_CXX ?= aarch64-linux-gnu-g++
TORCH_INC = $(shell $(VPY) -c "import torch.utils.cpp_extension as c; print(' '.join(c.include_paths()))" 2>/dev/null)
PY_INC = $(shell $(VPY) -c "import sysconfig; print(sysconfig.get_paths()['include'])" 2>/dev/null)
cross-check: $(DEPS)
	@if ! command -v $(AARCH64_CXX) >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu) >/dev/null 2>&1; fi; \
	if ! command -v $(AARCH64_CXX) >/dev/null; then \
	  if [ "$(CI)" = "true" ]; then echo "cross-check: $(AARCH64_CXX) not found, and CI=true requires it"; exit 1; fi; \
	  echo "cross-check: $(AARCH64_CXX) not found, skipped"; exit 0; fi; \
	for f in csrc/ops.cpp csrc/recurrence.cpp; do \
	  $(AARCH64_CXX) -std=c++20 -fsyntax-only -fopenmp -Wall -Wno-psabi -DTORCH_EXTENSION_NAME=_C_default \
	    $(addprefix -isystem ,$(TORCH_INC)) -isystem $(PY_INC) $$f || exit 1; \
	done; echo "cross-check: csrc builds for aarch64 ($$($(AARCH64_CXX) -dumpversion))"

test: $(BUILT)
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory cuda-check
	@$(MAKE) --no-print-directory cross-check
	@for plan in quick rest; do mkdir -p build; PYTHON=$(VPY) bash bench/gpu_check.sh --dry-run $$plan > build/gpu-dry-run.log 2>&1 || \
	  { cat build/gpu-dry-run.log; exit 1; }; done; echo "gpu_check --dry-run: both plans hold together"
	$(VPY) -m pytest tests -q $(PYTEST_ARGS)

bench: $(BUILT)
	$(VPY) -m fused_rnn bench $(BENCH_ARGS)

demo: $(BUILT)
	$(VPY) -m fused_rnn demo $(DEMO_ARGS)

info: $(BUILT)
	$(VPY) -m fused_rnn info

# On a lent GPU machine: build with CUDA, CUDA tests, sanitizers, benchmark vs cuDNN.
gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf build $(BUILT) fused_rnn/_C*.so
