"""Registers, stack (spills) and occupancy of the CUDA op's kernels, without a GPU.

    python bench/gpu/cuda_resources.py [--arch 90] [--out FILE.json] [--check]

Compiles csrc/cuda/memory_read_cuda.cu to a cubin with nvcc (device code only) and reads each
kernel's resource use with cuobjdump (the one that ships with Triton, or the toolkit's). The
tiled kernels run 256 threads, so registers decide how many CTAs share an SM: 128 or fewer
registers allow two, which lets one CTA compute while the other waits on its loads. --check
compares against CEILINGS, the measured use of the committed kernels, and fails on a kernel
that spills more or needs more registers than that: a change that pushes a kernel past them
costs speed that only a GPU would otherwise show.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE = os.path.join(ROOT, "csrc", "cuda", "memory_read_cuda.cu")
THREADS = 256
REGISTERS_PER_SM = 65536
# (registers, stack bytes) of each tiled kernel on sm_90 with nvcc 13.0, as committed; a
# kernel's template variants (split or not; the query-major kernel's lam = 0 or shrinking) share
# a line (the largest of them). The 16-bit query-major variants at lam = 0, without Y, take
# 75-87 registers (the shrinking ones 159-173). The tile copies' loops are kept rolled
# (#pragma unroll 1): unrolled, their 16-byte cp.async copies held up to 255 registers.
CEILINGS = {
    "memory_read_fwd_kernel<float>": (64, 8),
    "memory_read_fwd_kernel<double>": (84, 0),
    "memory_read_fwd_kernel<__half>": (79, 0),
    "memory_read_fwd_kernel<__nv_bfloat16>": (72, 0),
    "memory_read_fwd_online_kernel<float>": (69, 0),
    "memory_read_fwd_online_kernel<double>": (76, 0),
    "memory_read_fwd_online_kernel<__half>": (85, 0),
    "memory_read_fwd_online_kernel<__nv_bfloat16>": (85, 0),
    "memory_read_row_max_sum_kernel<float>": (40, 0),
    "memory_read_row_max_sum_kernel<double>": (62, 0),
    "memory_read_row_max_sum_kernel<__half>": (39, 0),
    "memory_read_row_max_sum_kernel<__nv_bfloat16>": (32, 0),
    "memory_read_bwd_query_kernel<float>": (80, 0),
    "memory_read_bwd_query_kernel<double>": (128, 8),
    "memory_read_bwd_query_kernel<__half>": (162, 0),
    "memory_read_bwd_query_kernel<__nv_bfloat16>": (173, 0),
    "memory_read_bwd_memory_kernel<float>": (80, 0),
    "memory_read_bwd_memory_kernel<double>": (100, 0),
    "memory_read_bwd_memory_kernel<__half>": (166, 0),
    "memory_read_bwd_memory_kernel<__nv_bfloat16>": (172, 0),
}


def _nvcc():
    from torch.utils.cpp_extension import CUDA_HOME

    path = os.path.join(CUDA_HOME or "/usr/local/cuda", "bin", "nvcc")
    if not os.path.exists(path):
        raise SystemExit(f"no nvcc at {path}")
    return path


def _cuobjdump():
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                           "cuobjdump")
    found = bundled if os.path.exists(bundled) else shutil.which("cuobjdump")
    if not found:
        raise SystemExit("no cuobjdump (neither Triton's nor on PATH)")
    return found


def compile_usage(arch):
    """{kernel name: (registers, stack bytes)}, the larger over a kernel's template variants
    that differ only in the split flag."""
    import torch.utils.cpp_extension as ext

    includes = ext.include_paths() + [os.path.join(ROOT, "csrc"), sysconfig.get_paths()["include"]]
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernels.cubin")
        cmd = [_nvcc(), "-cubin", f"-arch=sm_{arch}", "-O3", "-std=c++20",
               "--expt-relaxed-constexpr", "-D_GLIBCXX_USE_CXX11_ABI=1", "-o", cubin, SOURCE]
        cmd += [f"-I{path}" for path in includes]
        subprocess.run(cmd, check=True)
        dump = subprocess.run([_cuobjdump(), "--dump-resource-usage", cubin], check=True,
                              capture_output=True, text=True).stdout
    usage = {}
    for mangled, regs, stack in re.findall(
            r"Function (\S+):\s*REG:(\d+) STACK:(\d+)", dump):
        name = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout
        match = re.search(r"(memory_read_\w+)<([\w:]+)", name)
        if not match or "combine" in match.group(1):
            continue
        key = f"{match.group(1)}<{match.group(2)}>"
        old = usage.get(key, (0, 0))
        usage[key] = (max(old[0], int(regs)), max(old[1], int(stack)))
    return usage


def ctas_by_registers(registers):
    allocated = -(-registers // 8) * 8 * THREADS  # per-thread registers go in units of 8
    return REGISTERS_PER_SM // allocated


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--out", help="write the table as JSON here")
    parser.add_argument("--check", action="store_true",
                        help="fail on a kernel above its committed registers or stack")
    args = parser.parse_args()
    usage = compile_usage(args.arch)
    bad = []
    print(f"{'kernel':50} {'regs':>5} {'stack':>6} {'CTAs/SM by regs':>16}")
    for name in sorted(usage):
        regs, stack = usage[name]
        ceiling = CEILINGS.get(name)
        over = ceiling is None or regs > ceiling[0] or stack > ceiling[1]
        if over:
            bad.append(name)
        print(f"{name:50} {regs:5d} {stack:6d} {ctas_by_registers(regs):16d}"
              f"{'   BAD: above ' + str(ceiling) if over and args.check else ''}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"arch": f"sm_{args.arch}", "threads_per_cta": THREADS,
                       "kernels": {name: {"registers": r, "stack_bytes": s,
                                          "ctas_per_sm_by_registers": ctas_by_registers(r)}
                                   for name, (r, s) in sorted(usage.items())}}, fh, indent=1)
    if args.check and args.arch == 90 and bad:
        sys.exit(f"{len(bad)} kernel(s) above their committed registers or stack: {bad}")


if __name__ == "__main__":
    main()
