#!/usr/bin/env bash
# The GPU checks for a lent machine (docs/DESIGN.md §7), as ONE command that fits its slot:
#
#   bash bench/gpu_check.sh            # plan "quick": at most 8 minutes, the checks of most value
#   bash bench/gpu_check.sh rest       # plan "rest": the other CUDA tests and the full sweep (<= 9.5 min)
#   bash bench/gpu_check.sh --dry-run [quick|rest]   # on any machine: print the plan, check its parts
#
# Plan quick, stages in order of value, each stopped at its budget (seconds):
#   preflight  20  nvcc, driver and torch CUDA versions; fails fast when nvcc's major version
#                  differs from torch's (cpp_extension would refuse it only mid-build)
#   build     150  the extension in place, for this GPU's arch only and the one CPU level ATen
#                  runs at here (every level would compile the CUDA sources again)
#   smoke     110  the `gpu_smoke` CUDA tests (tests/conftest.py): every op and dtype, both IO
#                  paths, graph capture, a second stream, the modules
#   sanitize   80  compute-sanitizer memcheck and initcheck over tests/sanitize_cuda.py (both
#                  IO paths, no caching allocator)
#   bench     110  the standard case and B sweep against cuDNN: fp32 (TF32 off and on) and bf16
# Plan rest: preflight, build (nothing to do when the quick plan built it), the remaining CUDA
# tests (200), the full sweep (180).
#
# Runs as-is from a plain checkout: the system python3 (torch with CUDA, nvcc, ninja, pybind11,
# pytest; no venv, no network); PYTHON overrides it. Writes at most 5 files to $OUT (the
# device tool brings $OUT back), else to build/gpu-check/: gpu_check-<plan>.log (everything),
# summary-<plan>.txt (one line per stage: ok, FAILED or TIMEOUT, seconds), junit-<plan>.xml,
# bench-<plan>.tgz (the benchmark's JSON, table and plot, also left in bench/results/).
# Exit status 1 when a stage failed or ran out of time; a failed preflight or build stops it.
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
PLAN=${1:-quick}
OUTDIR=${OUT:-build/gpu-check}

declare -A BUDGET=([preflight]=20 [build]=150 [smoke]=110 [sanitize]=80 [bench]=110 [tests]=200 [sweep]=180)
declare -A PLAN_LIMIT=([quick]=480 [rest]=560)  # one device command may run 600 s
case $PLAN in
  quick) STAGES=(preflight build smoke sanitize bench) ;;
  rest) STAGES=(preflight build tests sweep) ;;
  *) echo "unknown plan '$PLAN' (quick, rest)"; exit 2 ;;
esac
SMOKE=(-m pytest -q -rs -p no:cacheprovider -m "cuda and gpu_smoke" tests)
TESTS=(-m pytest -q -rs -p no:cacheprovider -m "cuda and not gpu_smoke" tests)
BENCH_QUICK=(--sweep short --tf32 both --dtype fp32,bf16)
BENCH_REST=(--sweep full --tf32 off)

# within CMD...: CMD, stopped when the current stage's budget runs out (exit status 124).
within() {
  local left=$((DEADLINE - SECONDS))
  [ $left -gt 0 ] || return 124
  timeout --kill-after=10 "$left" "$@"
}

sanitizer() {
  command -v compute-sanitizer 2>/dev/null || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true
}

stage_preflight() {
  within nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || return 1
  within $PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" || return 1
  within nvcc --version | tail -n 2 || return 1
  within $PY - <<'EOF'
import re, subprocess, sys, torch
if not torch.cuda.is_available():
    sys.exit("preflight: torch sees no CUDA GPU")
if torch.version.cuda is None:
    sys.exit("preflight: this torch has no CUDA (a CPU wheel): the extension cannot build its CUDA kernels")
nvcc = re.search(r"release (\d+)\.(\d+)", subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout)
if nvcc is None or nvcc.group(1) != torch.version.cuda.split(".")[0]:
    sys.exit(f"preflight: nvcc {nvcc and nvcc.group(0)} and torch's CUDA {torch.version.cuda} differ in major "
             "version: torch.utils.cpp_extension refuses to build (set PATH to a matching nvcc)")
print("preflight: ok,", torch.cuda.get_device_name())
EOF
}

stage_build() {
  local arch level
  arch=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  level=$($PY -c "import torch; c = torch.backends.cpu.get_cpu_capability().lower(); print(c if c in ('avx2', 'avx512') else 'default')")
  export FUSED_RNN_CUDA_ARCHS=${FUSED_RNN_CUDA_ARCHS:-$arch} FUSED_RNN_CPU_LEVELS=${FUSED_RNN_CPU_LEVELS:-$level}
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  echo "archs $FUSED_RNN_CUDA_ARCHS, CPU level $FUSED_RNN_CPU_LEVELS, $MAX_JOBS jobs"
  within $PY setup.py -q build_ext --inplace &&
    within $PY -m fused_rnn info &&
    within $PY -c "import sys, fused_rnn; sys.exit(0 if fused_rnn._ops._C.has_cuda else 'built without CUDA')"
}

stage_smoke() { within $PY "${SMOKE[@]}" --junitxml "$OUTDIR/junit-$PLAN.xml"; }
stage_tests() { within $PY "${TESTS[@]}" --junitxml "$OUTDIR/junit-$PLAN.xml"; }

stage_sanitize() {
  local san
  san=$(sanitizer)
  [ -n "$san" ] || { echo "compute-sanitizer not found"; return 1; }
  # No caching allocator: every tensor its own allocation, so an access past a tensor's end, or
  # a read of memory nothing wrote, is seen. (racecheck is not run: the kernels use no shared memory.)
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 within "$san" --tool memcheck --error-exitcode 1 --leak-check no \
    $PY tests/sanitize_cuda.py &&
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 within "$san" --tool initcheck --error-exitcode 1 $PY tests/sanitize_cuda.py
}

# bench_run ARGS...: the benchmark against torch.nn (cuDNN), to bench/results/<date>-<gpu>-<plan>.*,
# packed into $OUTDIR/bench-<plan>.tgz.
bench_run() {
  local gpu stem
  gpu=$($PY -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
  stem="$(date -u +%F)-$gpu-$PLAN"
  mkdir -p bench/results
  within $PY -m fused_rnn bench --device cuda --no-progress "$@" --out "bench/results/$stem.json"
  local rc=$?
  tar czf "$OUTDIR/bench-$PLAN.tgz" -C bench/results $(cd bench/results && ls "$stem".* 2>/dev/null) || true
  return $rc
}
stage_bench() { bench_run "${BENCH_QUICK[@]}"; }
stage_sweep() { bench_run "${BENCH_REST[@]}"; }

# The dry run: the plan, and every command and path it needs, checked on this machine.
dry_run() {
  local total=0 stage problems=0
  echo "plan $PLAN (python: $PY):"
  for stage in "${STAGES[@]}"; do
    echo "  $stage: at most ${BUDGET[$stage]} s"
    total=$((total + BUDGET[$stage]))
  done
  echo "  total budget: $total s"
  [ "$total" -le "${PLAN_LIMIT[$PLAN]}" ] || { echo "plan $PLAN exceeds ${PLAN_LIMIT[$PLAN]} s"; problems=1; }
  for path in setup.py tests/sanitize_cuda.py tests/conftest.py fused_rnn/bench/cli.py; do
    [ -e "$path" ] || { echo "missing: $path"; problems=1; }
  done
  local selected
  selected=$($PY "${SMOKE[@]}" --collect-only 2>/dev/null | tail -n 1)
  echo "  smoke selects: $selected"
  [[ $selected =~ ^([1-9][0-9]*)/ ]] || { echo "the gpu_smoke selection is empty"; problems=1; }
  $PY tests/sanitize_cuda.py --help >/dev/null || { echo "tests/sanitize_cuda.py does not start"; problems=1; }
  for args in "${BENCH_QUICK[*]}" "${BENCH_REST[*]}"; do
    # the arguments as the benchmark parses them (--list prints the cases; --device cpu here)
    $PY -m fused_rnn bench --device cpu --list $args >/dev/null 2>&1 || { echo "bench rejects: $args"; problems=1; }
  done
  [ $problems -eq 0 ] && echo "gpu_check --dry-run: the plan holds together" || echo "gpu_check --dry-run: FAILED"
  return $problems
}

if [ $DRY -eq 1 ]; then dry_run; exit $?; fi

mkdir -p "$OUTDIR"
exec > >(tee "$OUTDIR/gpu_check-$PLAN.log") 2>&1
SUMMARY="$OUTDIR/summary-$PLAN.txt"
: > "$SUMMARY"
FAILED=0
for stage in "${STAGES[@]}"; do
  echo "=== $stage (budget ${BUDGET[$stage]} s)"
  start=$SECONDS
  DEADLINE=$((SECONDS + BUDGET[$stage]))
  "stage_$stage"
  rc=$?
  status=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status=TIMEOUT; elif [ $rc -ne 0 ]; then status=FAILED; fi
  echo "$stage: $status ($((SECONDS - start)) s)" | tee -a "$SUMMARY"
  [ $status = ok ] || FAILED=1
  if [ $status != ok ] && { [ "$stage" = preflight ] || [ "$stage" = build ]; }; then
    echo "gpu_check: $stage did not pass: stopping"
    exit 1
  fi
done
echo "gpu_check $PLAN: $([ $FAILED -eq 0 ] && echo 'all stages passed' || echo 'some stages FAILED or ran out of time') (files in $OUTDIR)"
exit $FAILED
