"""float32 gradients next to the shrink threshold: the fused op and the released formula in
eager float32, each against float64, by how far a row's nearest weight lies from lambda.

    python bench/threshold_gradients.py [--rows 2000] [--json FILE]

The released shrinkage h = relu(w - lam)·w / (|w - lam| + eps) has dh/dw = w·eps/(u + eps)² +
u/(u + eps) + u·w/(u + eps)²·... with u = w - lam: near u = 0 the first term reaches lam/eps
(2.5e9 at lam = 0.0025), so a weight within rounding of lambda has a gradient that depends on
how u happened to round. No float32 implementation can match float64 there; this measures how
far each one is, and from what distance on they agree.

Inputs (dot similarity, temperature 1, as the released module): memory = the identity
(N = C = 64), so each query row is its own logits, and in every row one logit is set so that
its weight is lam·(1 + d) with d log-uniform in ±[1e-9, 1e-1]. Everything is computed from the
same float32 inputs; float64 runs on them exactly. Per row: the relative error of the query
gradient of <read, g> + <entropy, g_e>, binned by the float64 |w - lam| / lam of the row's
nearest weight; the memory gradient (a sum over all rows) is reported whole.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

import python_ref
from memae_fused import memory_read

LAM = 0.0025
N = 64
BINS = [0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1.0]


def inputs(rows: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, N, generator=gen, dtype=torch.float64)
    d = 10 ** (torch.rand(rows, generator=gen, dtype=torch.float64) * 8 - 9)
    d = d * torch.where(torch.rand(rows, generator=gen) < 0.5, -1.0, 1.0).double()
    target = LAM * (1 + d)
    # Logit 0 of each row such that its softmax weight is `target`.
    rest = torch.logsumexp(logits[:, 1:], dim=1)
    logits[:, 0] = torch.log(target / (1 - target)) + rest
    return logits.float(), torch.eye(N, dtype=torch.float32)


def gradients(query, memory, backend, grad_read, grad_entropy):
    query = query.detach().clone().requires_grad_(True)
    memory = memory.detach().clone().requires_grad_(True)
    if backend == "released":
        read, entropy, _ = python_ref.memory_read(query, memory, shrink_thres=LAM,
                                                  similarity="dot", temperature=1.0)
    else:
        read, entropy, _ = memory_read(query, memory, shrink_thres=LAM, similarity="dot",
                                       temperature=1.0, backend=backend)
    loss = (read * grad_read.to(read.dtype)).sum() + (entropy * grad_entropy.to(entropy.dtype)).sum()
    return torch.autograd.grad(loss, (query, memory))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="cpp", help="the fused backend measured")
    ap.add_argument("--json", help="write the table here")
    args = ap.parse_args(argv)

    query, memory = inputs(args.rows, args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    grad_read = torch.randn(query.shape, generator=gen).double()
    grad_entropy = torch.randn(query.shape[0], generator=gen).double()
    want_q, want_m = gradients(query.double(), memory.double(), "released", grad_read, grad_entropy)
    fused_q, fused_m = gradients(query, memory, args.backend, grad_read, grad_entropy)
    eager_q, eager_m = gradients(query, memory, "released", grad_read, grad_entropy)

    w = python_ref.memory_read(query.double(), memory.double(), shrink_thres=0.0, similarity="dot",
                               temperature=1.0, return_att=True).att
    distance = ((w - LAM).abs() / LAM).min(dim=1).values

    def row_error(got, want):
        return ((got.double() - want).norm(dim=1) / want.norm(dim=1).clamp_min(1e-30))

    errors = {"fused vs float64": row_error(fused_q, want_q),
              "released f32 vs float64": row_error(eager_q, want_q),
              "fused vs released f32": row_error(fused_q, eager_q.double())}
    table = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        sel = (distance >= lo) & (distance < hi)
        if not sel.any():
            continue
        row = {"distance": f"[{lo:g}, {hi:g})", "rows": int(sel.sum())}
        for name, err in errors.items():
            row[name] = {"median": err[sel].median().item(), "max": err[sel].max().item()}
        table.append(row)

    def whole(got, want):
        return ((got.double() - want).norm() / want.norm()).item()

    memory_errors = {"fused vs float64": whole(fused_m, want_m),
                     "released f32 vs float64": whole(eager_m, want_m),
                     "fused vs released f32": whole(fused_m, eager_m.double())}
    print(f"query-gradient relative error per row, lambda = {LAM}, N = C = {N}, dot, "
          f"temperature 1, {args.rows} rows, fused backend {args.backend!r}; median (max)")
    names = list(errors)
    print(f"{'|w - lam| / lam':>16} {'rows':>5}  " + "  ".join(f"{n:>26}" for n in names))
    for row in table:
        cells = "  ".join(f"{row[n]['median']:>11.2e} ({row[n]['max']:.2e})" for n in names)
        print(f"{row['distance']:>16} {row['rows']:>5}  {cells}")
    print("memory gradient, whole-tensor relative error: " +
          ", ".join(f"{n} {e:.2e}" for n, e in memory_errors.items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"lambda": LAM, "n": N, "rows": args.rows, "backend": args.backend,
                       "query_gradient": table, "memory_gradient": memory_errors}, fh, indent=2)
    return 0 if all(math.isfinite(e) for e in memory_errors.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
