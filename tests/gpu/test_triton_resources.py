"""The Triton tile shapes that tile_config picks, compiled for sm_90 (H100/H200) without a
GPU: none may spill more than a few registers or need more shared memory than the SM has
(bench/gpu/triton_resources.py --check). Both happen easily, since ptxas's register use is not
monotonic in the tile or channel width: a shape that spills kilobytes crawls on the GPU, and
one over the shared-memory limit fails to launch. The 16-bit forward's picks must also keep
Hopper's wgmma, which a Triton upgrade or a kernel change can lose silently."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
triton = pytest.importorskip("triton")
NVIDIA_TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


@pytest.mark.skipif(not os.path.exists(os.path.join(NVIDIA_TOOLS, "cuobjdump")),
                    reason="this triton ships no NVIDIA toolchain")
def test_picked_tile_shapes_fit_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # real compiles
    proc = subprocess.run([sys.executable, "bench/gpu/triton_resources.py", "--check", "--jobs", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    report = "\n".join(line for line in proc.stdout.splitlines() if "BAD" in line)
    assert proc.returncode == 0, f"{report}\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}"
    # The 16-bit forward up to C = 256, the fast path users take, stays on Hopper's wgmma.
    forward_picks = [line for line in proc.stdout.splitlines()
                     if re.match(r"(bfloat16|float16) +forward +/\d C<=(16|32|64|128|256) ", line)
                     and "PICKED" in line]
    # dtypes x (4 variants x 5 widths + the forward_y plan's 2 variants at C = 256)
    assert len(forward_picks) == 2 * (4 * 5 + 2), proc.stdout[-1500:]
    slower = [line for line in forward_picks if "'wgmma'" not in line]
    assert not slower, "\n".join(slower)
