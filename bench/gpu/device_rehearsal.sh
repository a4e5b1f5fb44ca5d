#!/usr/bin/env bash
# Rehearse bench/gpu/gpu_check.sh on this GPU-less machine under the GPU machine's versions
# (Python 3.12, torch 2.11.0+cu130, Triton 3.6.0: KINDS.md of the device tool), before
# spending device time, and leave the CUDA extension built for them in build/device/ so that
# the device call can carry it instead of building there:
#
#   bench/gpu/device_rehearsal.sh          (about 4 min with the venv in place; 3 min more for it)
#
# then, on the device, two calls (gpu_check.sh's header says why), the second sent as soon as
# the first returns, while the machine is still warm:
#   run(command="bash bench/gpu/gpu_check.sh 1", timeout_s=290,
#       carry=["build/device/_C.abi3.so", "build/device/_C.stamp"])
#   run(command="GPU_CHECK_SECONDS=<S> bash bench/gpu/gpu_check.sh 2", timeout_s=<S + 30>,
#       carry=<the same>)
# where S is the first call's lease.budget_left_s less 40 s, at most 250: the machine's start
# counts against the 15 minutes too, so part 2 gets what part 1 leaves and still ends with
# its report rather than being cut off. About 2 + 4.5 + 4.5 minutes: a part that fails can
# run once more within the 15.
#
# The tree it tests is a copy of the working tree as the device tool sends it (tracked and
# untracked-not-ignored files). Environment: PYTHON312 (python3.12), VENV (.venv-device).
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=${VENV:-.venv-device}
python312() {
  local candidate
  for candidate in "${PYTHON312:-}" python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    if [ -n "$candidate" ] &&
       "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "device_rehearsal: no Python 3.12 found; set PYTHON312" >&2
  return 1
}
if [ ! -x "$VENV/bin/python" ]; then
  "$(python312)" -m venv "$VENV"
fi
# Triton 3.6's interpreter converts 1-element arrays with int(), which NumPy 2.4 refuses.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.11.0 \
  triton==3.6.0 "numpy<2.4" ninja setuptools wheel pytest pytest-benchmark pytest-xdist \
  hypothesis pillow matplotlib av tqdm
PY=$PWD/$VENV/bin/python

TREE=build/device/tree
rm -rf build/device
mkdir -p "$TREE"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$TREE"

(
  cd "$TREE"
  MEMAE_FUSED_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-2} "$PY" setup.py build_ext \
    --inplace >build.log 2>&1 || { tail -n 40 build.log; exit 1; }
  echo "device_rehearsal: built for sm_90 against torch $("$PY" -c 'import torch; print(torch.__version__)')"
  # The tests' limit is the GPU's (compiles); under the CPU interpreter they take minutes.
  PYTHON=$PY GPU_CHECK_ALLOW_CPU=1 GPU_CHECK_SKIP_BUILD=1 GPU_CHECK_TEST_WORKERS=2 \
    GPU_CHECK_TEST_SECONDS=${GPU_CHECK_TEST_SECONDS:-900} \
    OUT=../gpu_check-dry-run bash bench/gpu/gpu_check.sh >/dev/null ||
    { tail -n 60 ../gpu_check-dry-run/gpu_check.log; exit 1; }
)
cp "$TREE"/memae_fused/_C*.so build/device/_C.abi3.so
TORCH_CUDA_ARCH_LIST=9.0 "$PY" bench/gpu/extension_stamp.py >build/device/_C.stamp
rm -rf "$TREE"
echo "device_rehearsal: gpu_check dry run passed (log: build/device/gpu_check-dry-run/);"
echo "  carry build/device/_C.abi3.so and build/device/_C.stamp to skip the device's build"
