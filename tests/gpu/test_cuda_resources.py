"""The CUDA op's kernels compiled for sm_90 without a GPU (bench/gpu/cuda_resources.py --check):
none may need more registers or stack than the committed kernels do. Registers decide how
many 256-thread CTAs share an SM (two at 128 or fewer), so creeping past a ceiling costs
speed that nothing else here would show."""

import os
import subprocess
import sys

import pytest
from torch.utils.cpp_extension import CUDA_HOME

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")),
                    reason="no CUDA toolkit here")
def test_kernels_stay_within_committed_registers_and_stack():
    proc = subprocess.run([sys.executable, "bench/gpu/cuda_resources.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
