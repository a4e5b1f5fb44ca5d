"""Runs the emulated CUDA op under AddressSanitizer, as compute-sanitizer's memcheck would on
a GPU: any read or write outside a tensor, the shared-memory buffer or a thread's stack
aborts with a report. Started by tests/gpu/test_cuda_emulated.py in a process with libasan
preloaded:  python tests/gpu/cuda_emulation/asan_check.py cases|out_of_bounds"""

import itertools
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from cuda_emulation import load_emulated  # noqa: E402

SHAPES = [(1, 7, 5), (37, 53, 17), (130, 1, 8), (5, 20, 1), (33, 65, 129), (9, 40, 300),
          (6, 9, 0)]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def run_cases(op):
    gen = torch.Generator().manual_seed(0)
    cases = itertools.product(SHAPES, DTYPES, (132, 1), (0.0, 0.02))
    for index, ((q, n, c), dtype, sms, lam) in enumerate(cases):
        cosine = index % 3 != 0  # a third with dot, where keys and values are one tensor
        op.configure(multiprocessors=sms, shared_optin_bytes=232448, reverse_schedule=False)
        query = torch.randn(q, c, generator=gen).to(dtype)
        memory = torch.randn(n, c, generator=gen).to(dtype)
        read, entropy, stats = op.memory_read_fwd(query, memory, lam, cosine, 0.1)
        op.memory_read_bwd(torch.randn(q, c, generator=gen).to(dtype),
                           torch.randn(q, generator=gen).to(dtype), query, memory, read,
                           entropy, stats, lam, cosine, 0.1)
    print("asan_check: all cases ran")


if __name__ == "__main__":
    op = load_emulated(sanitize_address=True)
    if sys.argv[1] == "cases":
        run_cases(op)
    else:
        op.self_test(sys.argv[1])
