#!/usr/bin/env bash
# The one command for a lent GPU machine (docs/DESIGN.md §7): build the extension with CUDA in place,
# print the build facts, run the CUDA tests, run compute-sanitizer (memcheck, racecheck,
# initcheck) over tests/sanitize_cuda.py, and benchmark against torch.nn (cuDNN).
#
#   bash bench/gpu_check.sh                  # every stage: build info test sanitize bench
#   bash bench/gpu_check.sh build test       # some stages, in the order given
#
# Stages: build, info, test, sanitize, bench (= bench-full, then bench-tf32on). One device
# command may run for at most 10 minutes, so on the lent machine run it in steps (the build
# stays between calls while the machine is warm), e.g. `build info test`, then `sanitize`,
# then `bench-full`, then `bench-tf32on`.
#
# Uses the system python3 (torch with CUDA, nvcc, ninja, pybind11, pytest; no network, no
# venv); PYTHON overrides it. Logs (one per stage), the JUnit XML of the tests and a copy of
# the benchmark results go to $OUT when set (the device tool brings $OUT back), else to
# build/gpu-check/. The benchmark JSON (with the sha256 of csrc/ it was measured on) is
# written to bench/results/<date>-<gpu>-{full,tf32on}.json, with its .md table and .png
# plot; all three also travel as $OUT/{full,tf32on}-results.tgz.
# A failing build stops the script; any other failing stage is reported at the end and
# makes the exit status 1.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=${OUT:-build/gpu-check}
mkdir -p "$LOG"
STAGES=("$@")
if [ ${#STAGES[@]} -eq 0 ]; then STAGES=(build info test sanitize bench); fi
FAILED=()

# run_stage NAME CMD...: runs CMD with its output on the terminal and in $LOG/NAME.log.
run_stage() {
  local name=$1
  shift
  echo "=== $name: $*"
  local start=$SECONDS
  if "$@" 2>&1 | tee "$LOG/$name.log"; then
    echo "=== $name: ok ($((SECONDS - start)) s)"
  else
    echo "=== $name: FAILED ($((SECONDS - start)) s), log in $LOG/$name.log"
    FAILED+=("$name")
  fi
}

sanitizer() {
  command -v compute-sanitizer 2>/dev/null || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true
}

stage_build() {
  # Compile for this GPU's architecture only (halves the nvcc time); override with
  # FUSED_RNN_CUDA_ARCHS="8.0;9.0".
  local arch
  arch=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export FUSED_RNN_CUDA_ARCHS=${FUSED_RNN_CUDA_ARCHS:-$arch}
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  # One CPU level, the one ATen runs at here: every level's module would compile the CUDA
  # sources again (setup.py builds each level as a whole module).
  local level
  level=$($PY -c "import torch; c = torch.backends.cpu.get_cpu_capability().lower(); print(c if c in ('avx2', 'avx512') else 'default')")
  export FUSED_RNN_CPU_LEVELS=${FUSED_RNN_CPU_LEVELS:-$level}
  echo "torch $($PY -c 'import torch; print(torch.__version__, torch.version.cuda)'), archs $FUSED_RNN_CUDA_ARCHS, CPU level $FUSED_RNN_CPU_LEVELS"
  # (set -e does not apply inside a function run as an `if` condition: chain with &&)
  $PY setup.py build_ext --inplace &&
    $PY -c "import sys, fused_rnn; sys.exit(0 if fused_rnn._ops._C.has_cuda else 'fused_rnn._C was built without CUDA')"
}

stage_info() {
  $PY -m fused_rnn info
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  nvcc --version | tail -n 2 || true
  local san
  san=$(sanitizer)
  if [ -n "$san" ]; then "$san" --version | head -n 2; else echo "compute-sanitizer not found"; fi
}

stage_test() {
  # On a machine without a usable GPU every test would skip and the stage "pass": refuse.
  $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA GPU')" &&
    $PY -m pytest -q -rs -p no:cacheprovider -m cuda tests --junitxml "$LOG/junit-cuda.xml"
}

stage_sanitize() {
  local san
  san=$(sanitizer)
  if [ -z "$san" ]; then
    echo "=== sanitize: FAILED, compute-sanitizer not found"
    FAILED+=(sanitize)
    return 0
  fi
  # No caching allocator for memcheck/initcheck: every tensor its own allocation, so an access
  # past a tensor's end, or a read of memory nothing wrote, is seen.
  run_stage sanitize-memcheck env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    "$san" --tool memcheck --error-exitcode 1 --leak-check no $PY tests/sanitize_cuda.py
  run_stage sanitize-racecheck "$san" --tool racecheck --error-exitcode 1 $PY tests/sanitize_cuda.py
  run_stage sanitize-initcheck env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    "$san" --tool initcheck --error-exitcode 1 $PY tests/sanitize_cuda.py
}

# bench_run NAME ARGS...: one benchmark run against torch.nn (cuDNN), written to
# bench/results/<date>-<gpu>-NAME.{json,md,png}, and packed into $LOG/NAME-results.tgz: the
# device tool brings back at most 8 files a call, so a run's files travel as one.
bench_run() {
  local name=$1 gpu date
  shift
  gpu=$($PY -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
  date=$(date -u +%F)
  mkdir -p bench/results
  run_stage "bench-$name" $PY -m fused_rnn bench --device cuda --no-progress "$@" \
    --out "bench/results/$date-$gpu-$name.json"
  tar czf "$LOG/$name-results.tgz" -C bench/results $(cd bench/results && ls "$date-$gpu-$name".* 2>/dev/null) ||
    true
}

# docs/DESIGN.md §5's sweep (standard case; B, H, T, layers, bidirectional, packed; fp32 and, on
# CUDA, bf16 and fp16) with TF32 off on both sides: the fair full-precision comparison.
stage_bench_full() { bench_run full --sweep full --tf32 off; }
# The B sweep again with TF32 on on both sides (cuDNN's default).
stage_bench_tf32on() { bench_run tf32on --sweep short --tf32 on; }

for stage in "${STAGES[@]}"; do
  case $stage in
    build)
      run_stage build stage_build
      if [ ${#FAILED[@]} -gt 0 ]; then echo "build failed: stopping"; exit 1; fi
      ;;
    info) run_stage info stage_info ;;
    test) run_stage test stage_test ;;
    sanitize) stage_sanitize ;;
    bench) stage_bench_full; stage_bench_tf32on ;;
    bench-full) stage_bench_full ;;
    bench-tf32on) stage_bench_tf32on ;;
    *) echo "unknown stage '$stage' (build, info, test, sanitize, bench, bench-full, bench-tf32on)"; exit 2 ;;
  esac
done

if [ ${#FAILED[@]} -gt 0 ]; then
  echo "gpu_check: FAILED stages: ${FAILED[*]} (logs in $LOG)"
  exit 1
fi
echo "gpu_check: all stages passed (${STAGES[*]}; logs in $LOG)"
