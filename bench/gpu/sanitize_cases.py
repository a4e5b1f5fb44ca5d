"""The CUDA op's kernels once each at small shapes, for compute-sanitizer:

    compute-sanitizer --tool memcheck --error-exitcode 3 python bench/gpu/sanitize_cases.py
    compute-sanitizer --tool racecheck --error-exitcode 3 python bench/gpu/sanitize_cases.py --quick

Forward and backward of memae_fused.memory_read with backend "cuda" in every dtype, with
and without shrinkage, cosine and dot, at shapes that take the unsplit and the split
launches (few queries or few slots split the sweep), a C past one column chunk and ragged
edges. Exit 0 when every case ran; the sanitizer's own exit code says whether it found
anything. Small, because the sanitizer slows kernels by 10-100x (racecheck the most), and
its start with torch takes tens of seconds. --quick: bfloat16 and float32 only.
"""

from __future__ import annotations

import argparse
import sys

import torch

import memae_fused

# (Q, N, C): unsplit; few queries (the slots split); few slots (the memory-major sweep's
# queries split); past one column chunk with ragged edges.
SHAPES = [(96, 130, 64), (5, 700, 32), (300, 9, 48), (37, 65, 300)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or "cuda" not in memae_fused.available_backends(torch.device("cuda")):
        print("sanitize_cases: no GPU or no CUDA kernels built", file=sys.stderr)
        return 2
    dtypes = [torch.bfloat16, torch.float32] if args.quick else [
        torch.bfloat16, torch.float16, torch.float32, torch.float64]
    runs = 0
    for dtype in dtypes:
        for q, n, c in SHAPES:
            for similarity in ("cosine", "dot"):
                for lam in (0.0, 1.0 / n):
                    gen = torch.Generator(device="cuda").manual_seed(runs)
                    query = torch.randn(q, c, generator=gen, device="cuda").to(dtype)
                    memory = torch.randn(n, c, generator=gen, device="cuda").to(dtype)
                    query.requires_grad_()
                    memory.requires_grad_()
                    res = memae_fused.memory_read(query, memory, shrink_thres=lam,
                                                  similarity=similarity, temperature=0.5,
                                                  backend="cuda")
                    (res.read.float().sum() + res.entropy.float().sum()).backward()
                    torch.cuda.synchronize()
                    runs += 1
    print(f"sanitize_cases: {runs} forward + backward runs of the CUDA kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
