#!/usr/bin/env bash
# Build, test and benchmark everything GPU-related, then print a short table.
#
#   bench/gpu/gpu_check.sh [all|1|2]      (from anywhere in the repo; uses the python3 on PATH)
#
# The device tool lends 15 minutes a session, the machine's start (about 2 minutes) included,
# and one command runs 10 minutes at most. The work comes in two parts of about 250 s each,
# so that both and a rerun of either fit: 120 + 250 + 250 + 250 = 870 s.
#   1: per-kernel timings (bench/gpu/kernel_timings.py, first, so that even a broken build of
#      the rest returns numbers), compute-sanitizer memcheck, the GPU tests, the capacity check;
#   2: compute-sanitizer racecheck, the performance shapes (bfloat16, then float32), the
#      Triton tile timing, the sweep over N.
# Sent right after part 1 (within the 30 s the machine stays warm), part 2 needs no second
# start; it gets GPU_CHECK_SECONDS from what the lease has left (bench/gpu/device_rehearsal.sh
# says how). Where part 1 shows a failure, fix it first and have part 2 run the failing tests
# again (GPU_CHECK_STEPS="tests perf sweep"). "all" runs every step in one go, for a machine
# of your own. The report merges the parts: bench/report.py P2/bench-perf.json
# P2/bench-sweep.json --capacity P1/capacity.json --tune P2/tune.json.
#
# Writes to $OUT (default .benchmarks/gpu_check-<time>, ignored by git): gpu_check.log (all
# output, the sanitizer's included), kernels.json, bench-perf.json and bench-sweep.json
# (pytest-benchmark), tune.json, capacity.json, and the report
# <date>-<HHMM>-cuda-<gpu>.md/.png/.json, which is what goes to bench/results/ (a part writes
# at most 7 files; the device tool brings back 8). kernels.json and capacity.json are
# rewritten after every case, so a step cut short still returns what it measured.
#
# Budgets: the kernel timings and the capacity check take the time their scripts' --predict
# gives from the cost model (bench/costs.py: roofline time at 20 % efficiency, plus Triton's
# compiles), times GPU_CHECK_MARGIN (2); the tests, the sanitizer and the tile timing have
# fixed limits (compiles and start-up dominate them, which the cost model does not count);
# the benchmarks share what is left and skip the cases they have no time for (listed as
# skipped in the log). Every limit is a hard one: timeout -k sends SIGKILL 10 s after the
# SIGINT, which a CUDA synchronize can ignore.
#
# Steps, in this order: build (or the prebuilt extension), backends, kernels, memcheck,
# racecheck, tests, probe (each fused backend alone, bench/gpu/probe_backend.py: one that
# faults is left out of the benchmarks, which it would otherwise take down), perf, capacity
# (bench/gpu/capacity.py: (65536, 100000, 256) bf16, forward at full size, forward + backward
# extrapolated, with each fused backend), tune (bench/gpu/tune_triton_tiles.py: the two plans
# of the query-major backward against each other, then the Triton tile picks against the
# other candidates), sweep (for the plot), report.
#
# Environment: PYTHON (python3), OUT, GPU_CHECK_SECONDS (part 1: 250, part 2: 250, all: 600),
# GPU_CHECK_STEPS (the steps to run, e.g. "tests perf"; default: the part's),
# GPU_CHECK_PERF_DTYPES (bfloat16 float32), GPU_CHECK_TEST_SECONDS (110),
# GPU_CHECK_SANITIZE_SECONDS (40 per tool), GPU_CHECK_TUNE_SECONDS (45), GPU_CHECK_MARGIN (2),
# TORCH_CUDA_ARCH_LIST (9.0), GPU_CHECK_TESTS (pytest -k filter for tests/; "" runs them
# all), GPU_CHECK_BENCH_ARGS (more pytest arguments for the benchmarks),
# GPU_CHECK_TEST_WORKERS (8: pytest-xdist workers for the Triton tests, half as many for the
# others, where installed), GPU_CHECK_SKIP_BUILD=1 (use the extension as built; without it,
# one that bench/gpu/device_rehearsal.sh built and the call carried in build/device/ is used
# when its stamp matches), GPU_CHECK_ALLOW_CPU=1 (no GPU: a dry run of this script in bench
# fast mode, for checking the script itself).
set -uo pipefail
cd "$(dirname "$0")/../.."

PART=${1:-all}
case "$PART" in
  1) DEFAULT_STEPS="kernels memcheck tests capacity" DEFAULT_TOTAL=250 ;;
  2) DEFAULT_STEPS="racecheck perf tune sweep" DEFAULT_TOTAL=250 ;;
  all) DEFAULT_STEPS="kernels memcheck racecheck tests perf capacity tune sweep"
       DEFAULT_TOTAL=600 ;;
  *) echo "usage: bench/gpu/gpu_check.sh [all|1|2]" >&2; exit 2 ;;
esac
STEPS=" ${GPU_CHECK_STEPS:-$DEFAULT_STEPS} "
TOTAL_S=${GPU_CHECK_SECONDS:-$DEFAULT_TOTAL}
PERF_DTYPES=${GPU_CHECK_PERF_DTYPES-bfloat16 float32}
MARGIN=${GPU_CHECK_MARGIN:-2}
SANITIZE_S=${GPU_CHECK_SANITIZE_SECONDS:-40}
TUNE_S=${GPU_CHECK_TUNE_SECONDS:-45}
REPORT_RESERVE_S=15
PY=${PYTHON:-python3}
OUT=${OUT:-.benchmarks/gpu_check-$(date -u +%Y%m%dT%H%M%S)}
TEST_FILTER=${GPU_CHECK_TESTS-(triton or cuda or cpp or build or backend) and not (resources or emulated)}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # a step killed at its time limit still leaves its output in the log
START=$(date +%s)
STATUS=()

elapsed() { echo $(( $(date +%s) - START )); }
wants() { [[ "$STEPS" == *" $1 "* ]]; }

# run_step NAME CMD...: run, log, and record the exit status and duration.
run_step() {
  local name=$1 t0 rc
  shift
  t0=$(date +%s)
  echo
  echo "=== [$(elapsed)s] $name: $*"
  "$@"
  rc=$?
  STATUS+=("$(printf '%-12s %-4s %4ss' "$name" "$([ $rc -eq 0 ] && echo ok || echo "rc=$rc")" $(( $(date +%s) - t0 )))")
  return $rc
}

# Seconds for the benchmark step NAME: the part's time less what has gone, the report's
# reserve and the fixed times of the steps still to come; perf takes two thirds of what
# remains when the sweep follows. Never less than MIN.
bench_share() {
  local name=$1 min=$2 left
  left=$(( TOTAL_S - $(elapsed) - REPORT_RESERVE_S ))
  if [ "$name" = perf ]; then
    wants capacity && left=$(( left - capacity_s ))
    wants tune && left=$(( left - TUNE_S - 20 ))
    wants sweep && left=$(( left * 2 / 3 ))
  fi
  echo $(( left < min ? min : left ))
}

# The extension bench/gpu/device_rehearsal.sh built for this torch from these sources, if it was
# carried here (build/device/) and loads with its CUDA kernels; else the build step runs.
use_prebuilt() {
  local stamp
  [ -f build/device/_C.abi3.so ] && [ -f build/device/_C.stamp ] || return 1
  stamp=$(TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" "$PY" bench/gpu/extension_stamp.py)
  if [ "$stamp" != "$(cat build/device/_C.stamp)" ]; then
    echo "gpu_check: build/device/_C.abi3.so was built from other sources or another torch"
    return 1
  fi
  rm -f memae_fused/_C*.so
  cp build/device/_C.abi3.so memae_fused/_C.abi3.so
  if "$PY" -c "import torch, memae_fused._C; assert torch._C._dispatch_has_kernel_for_dispatch_key(
      'memae_fused::memory_read_fwd', 'CUDA')"; then
    echo "gpu_check: using the prebuilt extension (build/device/, stamp $stamp)"
    STATUS+=("build        prebuilt")
    return 0
  fi
  echo "gpu_check: the prebuilt extension does not load here; building"
  rm -f memae_fused/_C.abi3.so
  return 1
}

# The op's tests (tests/op, tests/gpu; the application's do not touch the GPU kernels and need
# packages the GPU machine may lack) in two pytest runs at once, the Triton tests and the rest
# (the C++/CUDA op, the build, the API), each with its own processes: a fault in a CUDA kernel poisons the CUDA
# context of the process it happens in and would fail every test after it there. Each new
# Triton tile shape, dtype and flag set is a compile (about 250 in all, half a second each):
# pytest-xdist, where installed, spreads them over the CPUs. No -x: one call must show every
# failure there is (the time limit bounds a broken run).
run_tests() {
  local limit=${GPU_CHECK_TEST_SECONDS:-110} logs pids=() names=(triton cuda-cpp)
  local selections=("triton" "not triton") workers=("" "") n=${GPU_CHECK_TEST_WORKERS:-8} i k rc t0
  if "$PY" -c "import xdist" 2>/dev/null; then
    workers=("-n $n" "-n $(( n / 2 > 0 ? n / 2 : 1 ))")  # the Triton run compiles
  fi
  logs=$(mktemp -d)
  t0=$(date +%s)
  for i in 0 1; do
    k=${selections[$i]}
    [ -n "$TEST_FILTER" ] && k="($TEST_FILTER) and ($k)"
    echo
    echo "=== [$(elapsed)s] tests-${names[$i]}: pytest tests/op tests/gpu -k \"$k\" ${workers[$i]}"
    # shellcheck disable=SC2086  # "-n N" or nothing
    timeout -k 10 "$limit" "$PY" -m pytest tests/op tests/gpu -q -p no:cacheprovider --continue-on-collection-errors \
      -k "$k" ${workers[$i]} >"$logs/$i.log" 2>&1 &
    pids+=($!)
  done
  for i in 0 1; do
    wait "${pids[$i]}"
    rc=$?
    [ $rc -eq 5 ] && rc=0  # no test selected
    echo
    echo "=== tests-${names[$i]} (rc=$rc):"
    cat "$logs/$i.log"
    STATUS+=("$(printf '%-12s %-4s %4ss' "tests-${names[$i]}" \
      "$([ $rc -eq 0 ] && echo ok || echo "rc=$rc")" $(( $(date +%s) - t0 )))")
  done
  rm -rf "$logs"
}

main() {
  local bench_args=() has_gpu
  echo "gpu_check: part $PART, steps:$STEPS, ${TOTAL_S} s; $(date -u +%FT%TZ) in $PWD, output in $OUT"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  fi
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
  "$PY" - <<'PYEOF'
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
PYEOF
  has_gpu=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
  if [ "$has_gpu" != 1 ]; then
    if [ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]; then
      echo "gpu_check: torch sees no GPU; set GPU_CHECK_ALLOW_CPU=1 for a CPU dry run" >&2
      return 2
    fi
    # Fast mode has float32 shapes only on the CPU.
    echo "gpu_check: no GPU: dry run on the CPU, benchmarks in fast mode"
    bench_args+=(--bench-fast)
    PERF_DTYPES=""
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

  # Per-kernel timings first: numbers come back even if what follows breaks.
  if wants kernels; then
    local kernels_s kernel_args=()
    if [ "$has_gpu" = 1 ]; then
      kernels_s=$(( $("$PY" bench/gpu/kernel_timings.py --predict) * MARGIN + 15 ))
    else
      kernels_s=120 kernel_args=(--allow-cpu)
    fi
    run_step kernels timeout -k 10 -s INT "$kernels_s" "$PY" bench/gpu/kernel_timings.py \
      "${kernel_args[@]}" --budget $(( kernels_s - 15 )) --out "$OUT/kernels.json"
  fi
  # compute-sanitizer over the CUDA kernels at small shapes (bench/gpu/sanitize_cases.py):
  # memcheck in every dtype, racecheck (slower) in two. Its output goes to the log.
  local tool
  for tool in memcheck racecheck; do
    wants "$tool" || continue
    if [ "$has_gpu" != 1 ] || ! command -v compute-sanitizer >/dev/null; then
      echo "gpu_check: $tool skipped (no GPU or no compute-sanitizer)"
      continue
    fi
    run_step "$tool" timeout -k 10 "$SANITIZE_S" compute-sanitizer --tool "$tool" \
      --error-exitcode 3 "$PY" bench/gpu/sanitize_cases.py $([ "$tool" = racecheck ] && echo --quick)
  done

  if wants tests; then
    run_tests
  fi

  # The capacity check's budget, from the cost model (+20 s: Python's start, eager at small Q).
  local capacity_s=0
  if wants capacity; then
    capacity_s=$(( $("$PY" bench/gpu/capacity.py --predict) * MARGIN + 20 ))
  fi

  local extra=() share backend probed=() failed=() not_failed=""
  read -r -a extra <<< "${GPU_CHECK_BENCH_ARGS:-}"
  bench_args+=("${extra[@]}")
  # Each fused backend once in a process of its own (bench/gpu/probe_backend.py): one that faults
  # stays out of the benchmark runs, where its fault would fail every later case.
  if wants perf || wants capacity || wants sweep; then
    # In the dtypes the part's benchmarks run (the capacity check and the sweep: bf16).
    local probe_args=() device=cuda available probe_dtypes=$PERF_DTYPES
    { wants capacity || wants sweep; } && [[ " $probe_dtypes " != *" bfloat16 "* ]] &&
      probe_dtypes+=" bfloat16"
    probe_dtypes=$(echo $probe_dtypes | tr ' ' ',')
    probe_args=(--dtypes "${probe_dtypes:-bfloat16}")
    [ "$has_gpu" != 1 ] && device=cpu probe_args=(--device cpu --dtypes float32 --q 256 --n 512)
    available=" $("$PY" -c "import torch, memae_fused
print(*memae_fused.available_backends(torch.device('$device')))") "
    for backend in triton cuda cpp; do
      [[ "$available" == *" $backend "* ]] || continue
      [ "$device" = cuda ] && [ "$backend" = cpp ] && continue
      if run_step "probe-$backend" timeout 120 "$PY" bench/gpu/probe_backend.py "$backend" \
          "${probe_args[@]}"; then
        probed+=("$backend")
      else
        failed+=("$backend")
        not_failed+="${not_failed:+ or }$backend"
      fi
    done
    [ ${#failed[@]} -gt 0 ] && echo "gpu_check: left out of the benchmarks: ${failed[*]}"
  fi
  # A benchmark step's cases start within its budget; the one in flight at the end (a
  # torch.compile takes 20 s or more) has the last 45 s, then SIGINT stops pytest, which
  # still writes its JSON.
  if wants perf; then
    local perf_k=() dtype_expr="" expr=""
    for d in $PERF_DTYPES; do dtype_expr+="${dtype_expr:+ or }$d-"; done
    [ -n "$dtype_expr" ] && expr="($dtype_expr)"
    [ -n "$not_failed" ] && expr+="${expr:+ and }not ($not_failed)"
    [ -n "$expr" ] && perf_k=(-k "$expr")
    share=$(bench_share perf 90)
    run_step perf timeout -k 10 -s INT "$share" "$PY" -m pytest bench/test_memory_read.py::test_perf \
      -q -p no:cacheprovider "${bench_args[@]}" "${perf_k[@]}" --bench-budget $(( share - 45 )) \
      --benchmark-json "$OUT/bench-perf.json" --benchmark-columns=median,iqr,rounds
  fi

  if wants capacity; then
    local capacity_args=()
    [ "$has_gpu" != 1 ] && capacity_args+=(--allow-cpu)
    [ "$has_gpu" = 1 ] && capacity_args+=(--backends "$(IFS=,; echo "${probed[*]}")")
    run_step capacity timeout -k 10 -s INT "$capacity_s" "$PY" bench/gpu/capacity.py \
      "${capacity_args[@]}" --json "$OUT/capacity.json"
  fi

  # The query-major backward's two plans against each other, then tile shapes: the committed
  # picks against the other spill-free candidates (and, where no wgmma tile is spill-free,
  # the least spilling one), bf16 at (16384, 2000, 256), each kernel on its own
  # (bench/gpu/tune_triton_tiles.py). Before the sweep: what it finds decides the next
  # kernel work, the sweep only draws the plot.
  if wants tune && [ "$has_gpu" = 1 ] && [ "$TUNE_S" -gt 0 ]; then
    share=$(( TOTAL_S - $(elapsed) - REPORT_RESERVE_S - $(wants sweep && echo 75 || echo 0) ))
    share=$(( share - 20 < TUNE_S ? share - 20 : TUNE_S ))
    if [ "$share" -lt 20 ]; then
      echo "gpu_check: tune skipped, too little time left"
    else
      run_step tune timeout -k 10 -s INT $(( share + 20 )) "$PY" bench/gpu/tune_triton_tiles.py --quick \
        --shapes 16384,2000,256 --budget "$share" --out "$OUT/tune.json"
    fi
  fi

  if wants sweep; then
    share=$(bench_share sweep 75)
    local sweep_k=()
    [ -n "$not_failed" ] && sweep_k=(-k "not ($not_failed)")
    run_step sweep timeout -k 10 -s INT "$share" "$PY" -m pytest bench/test_memory_read.py::test_sweep \
      -q -p no:cacheprovider "${bench_args[@]}" "${sweep_k[@]}" --bench-budget $(( share - 45 )) \
      --benchmark-json "$OUT/bench-sweep.json" --benchmark-columns=median,iqr,rounds
  fi

  local runs=()
  for f in "$OUT/bench-perf.json" "$OUT/bench-sweep.json"; do [ -s "$f" ] && runs+=("$f"); done
  [ -s "$OUT/capacity.json" ] && runs+=(--capacity "$OUT/capacity.json")
  [ -s "$OUT/tune.json" ] && runs+=(--tune "$OUT/tune.json")
  if [ -s "$OUT/bench-perf.json" ] || [ -s "$OUT/bench-sweep.json" ]; then
    echo
    run_step report "$PY" bench/report.py "${runs[@]}" --out-dir "$OUT" --summary
  fi
  echo
  echo "=== gpu_check part $PART steps (total $(elapsed)s):"
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
