#!/usr/bin/env bash
# Set up everything in ./.venv (PyTorch, the build of memae_fused's kernels, test tools) and
# run one job:  ./dev.sh main   the main job      ./dev.sh test   the test suite
#               ./dev.sh bench  the benchmarks
set -euo pipefail
cd "$(dirname "$0")"
job=${1:-}
case "$job" in main|test|bench) ;; *) echo "usage: ./dev.sh main|test|bench" >&2; exit 2 ;; esac
shift

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
pip_q() { .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@"; }
pip_q --upgrade pip setuptools wheel
pip_q -r requirements-dev.txt
# The extension builds against the torch just installed, hence no build isolation.
pip_q --no-build-isolation --editable .

case "$job" in
  main) exec .venv/bin/memae-fused demo --overwrite "$@" ;;  # a rerun replaces runs/demo
  test) exec .venv/bin/python -m pytest tests "$@" ;;
  bench) exec .venv/bin/python -m pytest bench "$@" ;;
esac
