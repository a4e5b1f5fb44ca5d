#!/usr/bin/env bash
# Build, test and benchmark everything GPU-related in one call, then print a short table.
#
#   bench/gpu_check.sh            (from anywhere in the repo; uses the python3 on PATH)
#
# Writes to $OUT (default .benchmarks/gpu_check-<time>, ignored by git): gpu_check.log (all
# output), bench-sweep.json and bench-perf.json (pytest-benchmark), tune.json (tile shapes
# timed), capacity.json, and the report <date>-<HHMM>-cuda-<gpu>.md/.png/.json, which is what
# goes to bench/results/ (8 files: as many as the device tool brings back).
# Finishes in about GPU_CHECK_SECONDS (default 500; at worst about 100 s more): the build and
# the tests have hard time limits, the benchmarks get what they leave and skip the cases they
# have no time for (listed as skipped in the log).
#
# Last, bench/capacity.py runs the largest problem, (65536, 100000, 256) bf16 forward +
# backward, with each fused backend (GPU_CHECK_CAPACITY_SECONDS, default 90; 0 skips it).
#
# Environment: PYTHON (python3), OUT, GPU_CHECK_SECONDS (500), GPU_CHECK_TUNE_SECONDS (60: the
# tile-shape timing, within the total; 0 skips it), TORCH_CUDA_ARCH_LIST (9.0),
# GPU_CHECK_TESTS (pytest -k filter for tests/; "" runs them all), GPU_CHECK_BENCH_ARGS (more
# pytest arguments for the benchmarks, e.g. "-k bfloat16"), GPU_CHECK_TEST_WORKERS (8: pytest-xdist
# workers for the tests, when pytest-xdist is installed),
# GPU_CHECK_SKIP_BUILD=1 (use the extension as built; without it, one that
# bench/device_rehearsal.sh built and the call carried in build/device/ is used when its stamp
# matches), GPU_CHECK_ALLOW_CPU=1 (no GPU: a dry run of this script in bench fast mode, for
# checking the script itself).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT=${OUT:-.benchmarks/gpu_check-$(date -u +%Y%m%dT%H%M%S)}
TOTAL_S=${GPU_CHECK_SECONDS:-500}
TEST_FILTER=${GPU_CHECK_TESTS-(triton or cuda or cpp or build or backend) and not (resources or emulated)}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # a step killed at its time limit still leaves its output in the log
START=$(date +%s)
STATUS=()

elapsed() { echo $(( $(date +%s) - START )); }

# run_step NAME CMD...: run, log, and record the exit status and duration.
run_step() {
  local name=$1 t0 rc
  shift
  t0=$(date +%s)
  echo
  echo "=== [$(elapsed)s] $name: $*"
  "$@"
  rc=$?
  STATUS+=("$(printf '%-8s %-4s %4ss' "$name" "$([ $rc -eq 0 ] && echo ok || echo "rc=$rc")" $(( $(date +%s) - t0 )))")
  return $rc
}

# The extension bench/device_rehearsal.sh built for this torch from these sources, if it was
# carried here (build/device/) and loads with its CUDA kernels; else the build step runs.
use_prebuilt() {
  local stamp
  [ -f build/device/_C.abi3.so ] && [ -f build/device/_C.stamp ] || return 1
  stamp=$(TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" "$PY" bench/extension_stamp.py)
  if [ "$stamp" != "$(cat build/device/_C.stamp)" ]; then
    echo "gpu_check: build/device/_C.abi3.so was built from other sources or another torch"
    return 1
  fi
  rm -f memae_fused/_C*.so
  cp build/device/_C.abi3.so memae_fused/_C.abi3.so
  if "$PY" -c "import torch, memae_fused._C; assert torch._C._dispatch_has_kernel_for_dispatch_key(
      'memae_fused::memory_read_fwd', 'CUDA')"; then
    echo "gpu_check: using the prebuilt extension (build/device/, stamp $stamp)"
    STATUS+=("build    prebuilt")
    return 0
  fi
  echo "gpu_check: the prebuilt extension does not load here; building"
  rm -f memae_fused/_C.abi3.so
  return 1
}

main() {
  local bench_args=() has_gpu
  echo "gpu_check: $(date -u +%FT%TZ) in $PWD, output in $OUT"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  fi
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
  "$PY" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
try:
    import triton; print("triton", triton.__version__)
except ImportError:
    print("triton: not installed")
try:
    import pytest_benchmark; print("pytest-benchmark", pytest_benchmark.__version__)
except ImportError:
    print("pytest-benchmark: NOT INSTALLED (benchmarks will fail)")
EOF
  has_gpu=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
  if [ "$has_gpu" != 1 ]; then
    if [ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]; then
      echo "gpu_check: torch sees no GPU; set GPU_CHECK_ALLOW_CPU=1 for a CPU dry run" >&2
      return 2
    fi
    echo "gpu_check: no GPU: dry run on the CPU, benchmarks in fast mode"
    bench_args+=(--bench-fast)
  fi

  if [ "${GPU_CHECK_SKIP_BUILD:-0}" != 1 ] && ! use_prebuilt; then
    run_step build env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
      MEMAE_FUSED_CUDA="${MEMAE_FUSED_CUDA:-$has_gpu}" MAX_JOBS="${MAX_JOBS:-16}" \
      timeout 300 "$PY" setup.py build_ext --inplace
  fi
  run_step backends "$PY" -c "
import torch, memae_fused
from memae_fused import backends
dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
print('available on', dev, ':', memae_fused.available_backends(dev))
for name in backends.BACKENDS:
    reason = backends.unavailable_reason(name, dev)
    if reason: print(' ', name, 'unavailable:', reason)
"

  local test_k=()
  [ -n "$TEST_FILTER" ] && test_k=(-k "$TEST_FILTER")
  # Each new tile shape, dtype and flag set is a Triton compile (a second or more each, a few
  # hundred in all): pytest-xdist, where installed, spreads them over the CPUs.
  if "$PY" -c "import xdist" 2>/dev/null; then
    test_k+=(-n "${GPU_CHECK_TEST_WORKERS:-8}")
  fi
  # No -x: one call must show every failure there is (the time limit bounds a broken run).
  run_step tests timeout 200 "$PY" -m pytest tests -q --maxfail=25 -p no:cacheprovider \
    --continue-on-collection-errors "${test_k[@]}"

  # Tile shapes: the committed picks against the other spill-free candidates, bf16 at the
  # first performance shape, each kernel on its own (bench/tune_triton_tiles.py).
  local tune_s=${GPU_CHECK_TUNE_SECONDS:-60}
  if [ "$has_gpu" = 1 ] && [ "$tune_s" -gt 0 ]; then
    run_step tune timeout -s INT $(( tune_s + 60 )) "$PY" bench/tune_triton_tiles.py --quick \
      --shapes 16384,2000,256 --budget "$tune_s" --out "$OUT/tune.json"
  fi

  # Benchmarks: the sweep (for the plot) gets a third of the time left, the shapes the rest.
  # A case started within its budget may overrun it (a compile takes ~20 s): hence the reserve.
  local left sweep_s perf_s
  local extra=()
  read -r -a extra <<< "${GPU_CHECK_BENCH_ARGS:-}"
  bench_args+=("${extra[@]}")
  # The capacity check runs last, in the time set aside for it here.
  local capacity_s=${GPU_CHECK_CAPACITY_SECONDS:-90}
  left=$(( TOTAL_S - $(elapsed) - 60 - capacity_s ))
  [ $left -lt 60 ] && left=60
  sweep_s=$(( left / 3 ))
  run_step sweep timeout -s INT $(( sweep_s + 45 )) "$PY" -m pytest bench/test_memory_read.py::test_sweep \
    -q -p no:cacheprovider "${bench_args[@]}" --bench-budget "$sweep_s" \
    --benchmark-json "$OUT/bench-sweep.json" --benchmark-columns=median,iqr,rounds
  left=$(( TOTAL_S - $(elapsed) - 45 - capacity_s ))
  perf_s=$(( left < 40 ? 40 : left ))
  run_step perf timeout -s INT $(( perf_s + 45 )) "$PY" -m pytest bench/test_memory_read.py::test_perf \
    -q -p no:cacheprovider "${bench_args[@]}" --bench-budget "$perf_s" \
    --benchmark-json "$OUT/bench-perf.json" --benchmark-columns=median,iqr,rounds

  local capacity_args=()
  [ "$has_gpu" != 1 ] && capacity_args+=(--allow-cpu)
  [ "$capacity_s" -gt 0 ] && run_step capacity timeout -s INT "$capacity_s" "$PY" bench/capacity.py \
    "${capacity_args[@]}" --json "$OUT/capacity.json"

  echo
  run_step report "$PY" bench/report.py "$OUT/bench-sweep.json" "$OUT/bench-perf.json" \
    --out-dir "$OUT" --summary
  echo
  echo "=== gpu_check steps (total $(elapsed)s):"
  printf '  %s\n' "${STATUS[@]}"
  echo "files in $OUT:"
  ls -1 "$OUT" | sed 's/^/  /'
  for s in "${STATUS[@]}"; do
    case "$s" in *rc=*) return 1 ;; esac
  done
  return 0
}

main 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
