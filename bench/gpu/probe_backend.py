"""Does one fused backend run on this GPU? One forward + backward at a performance shape,
in a process of its own, with its first rows checked against python_ref.

    python bench/gpu/probe_backend.py BACKEND [--q 4096 --n 2000 --c 256 --dtypes bfloat16,float32]

Exit 0 when it ran in every dtype given (a mismatch is printed, not fatal: the tests judge
accuracy), 1 when it raised or faulted. A kernel fault poisons the CUDA context of the process it happens in, so
bench/gpu/gpu_check.sh probes each backend first and leaves one that fails out of its benchmark
runs, where it would take every later case down with it.
"""

from __future__ import annotations

import argparse
import sys

import torch

import memae_fused
import python_ref

CHECKED_ROWS = 64


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backend")
    parser.add_argument("--q", type=int, default=4096)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--c", type=int, default=256)
    parser.add_argument("--dtypes", default="bfloat16", help="comma-separated")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    ran = [probe(args, torch.device(args.device), dtype) for dtype in args.dtypes.split(",")]
    return 0 if all(ran) else 1


def probe(args, device, dtype_name):
    """True when the backend ran forward + backward in this dtype."""
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator(device=device).manual_seed(0)
    query = torch.randn(args.q, args.c, generator=gen, device=device).to(dtype).requires_grad_()
    memory = torch.randn(args.n, args.c, generator=gen, device=device).to(dtype).requires_grad_()
    lam = 1.0 / args.n
    try:
        res = memae_fused.memory_read(query, memory, shrink_thres=lam, similarity="cosine",
                                      temperature=1.0, backend=args.backend)
        grads = torch.autograd.grad(res.read.float().sum() + res.entropy.float().sum(),
                                    (query, memory))
        if device.type == "cuda":
            torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        print(f"probe {args.backend} {dtype_name}: FAILED: {type(exc).__name__}: {exc}"
              .splitlines()[0])
        return False
    rows = min(CHECKED_ROWS, args.q)
    ref = python_ref.memory_read(query[:rows].detach().double(), memory.detach().double(),
                                 shrink_thres=lam, similarity="cosine", temperature=1.0)
    err = (res.read[:rows].double() - ref.read).abs().max().item()
    scale = ref.read.abs().max().item()
    finite = all(bool(torch.isfinite(t).all()) for t in (res.read, res.entropy, *grads))
    # A gross check only: at lam = 1/N many weights sit near the threshold, where the read is
    # nearly discontinuous (the tests keep their inputs away from it).
    tol = 1e-3 if dtype in (torch.float32, torch.float64) else 5e-2
    verdict = "ok" if finite and err <= tol * max(scale, 1e-6) else "MISMATCH (see the tests)"
    print(f"probe {args.backend}: ran ({args.q}, {args.n}, {args.c}) {dtype_name} forward + "
          f"backward; first {rows} rows' read max abs err {err:.2e} of {scale:.2f}, "
          f"finite: {finite}: {verdict}")
    return True


if __name__ == "__main__":
    sys.exit(main())
