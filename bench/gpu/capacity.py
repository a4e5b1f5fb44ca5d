"""Capacity check: the Triton issue's largest problem, forward + backward, with each fused
backend, against what eager python_ref would need.

    python bench/gpu/capacity.py [--q 65536 --n 100000 --c 256 --dtype bfloat16] [--json FILE]

For each fused backend on the device: one forward + backward at (Q, N, C), its time (after a
warm-up at a small Q, so kernels are compiled) and its peak memory above the inputs
(torch.cuda.max_memory_allocated), plus a check of the first rows' read and entropy against
python_ref in float64 (rows are independent, so a few rows are an exact check of the kernel
at full size). Eager python_ref is run at a small Q only: its peak grows linearly with Q (every
intermediate is Q x N), so the peak at Q is extrapolated from it and set against the device's
memory. Without a GPU (--allow-cpu) it runs the cpp backend at a small shape, as a check of
this script.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch

import memae_fused
import python_ref

SIMILARITY, TEMPERATURE, SHRINK_FACTOR = "cosine", 1.0, 1.0
CHECKED_ROWS = 256


def make_inputs(q, n, c, dtype, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    query = torch.randn(q, c, generator=gen, device=device)
    memory = torch.randn(n, c, generator=gen, device=device)
    memory *= torch.rand(n, 1, generator=gen, device=device) + 0.5
    return query.to(dtype).requires_grad_(), memory.to(dtype).requires_grad_()


def read_fn(backend, n):
    lam = SHRINK_FACTOR / n

    def run(query, memory):
        if backend == "eager":
            res = python_ref.memory_read(query, memory, shrink_thres=lam, similarity=SIMILARITY,
                                         temperature=TEMPERATURE)
        else:
            res = memae_fused.memory_read(query, memory, shrink_thres=lam, similarity=SIMILARITY,
                                          temperature=TEMPERATURE, backend=backend)
        return res.read, res.entropy
    return run


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn, query, memory, device):
    """(seconds, peak bytes above the inputs, outputs) of one forward + backward."""
    gc.collect()
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    read, entropy = fn(query, memory)
    grads = torch.autograd.grad((read.float().sum() + entropy.float().sum()), (query, memory))
    sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else None
    del grads
    return seconds, peak, (read.detach(), entropy.detach())


def check_rows(read, entropy, query, memory, n):
    """Largest difference of the first rows' read and entropy from python_ref in float64."""
    rows = min(CHECKED_ROWS, query.shape[0])
    ref = python_ref.memory_read(query[:rows].detach().double(), memory.detach().double(),
                                 shrink_thres=SHRINK_FACTOR / n, similarity=SIMILARITY,
                                 temperature=TEMPERATURE)
    return {"read_max_abs_err": (read[:rows].double() - ref.read).abs().max().item(),
            "read_max_abs": ref.read.abs().max().item(),
            "entropy_max_abs_err": (entropy[:rows].double() - ref.entropy).abs().max().item()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--q", type=int, default=65536)
    parser.add_argument("--n", type=int, default=100000)
    parser.add_argument("--c", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--eager-q", type=int, default=1024,
                        help="Q at which eager python_ref is run for the extrapolation")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="without a GPU, check this script with cpp at a small shape")
    parser.add_argument("--backends", default="triton,cuda",
                        help="fused GPU backends to run, in this order (default triton,cuda)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    if torch.cuda.is_available():
        device = torch.device("cuda")
        available = memae_fused.available_backends(device)
        backends = [b for b in args.backends.split(",") if b in available]
        total = torch.cuda.get_device_properties(0).total_memory
        name = torch.cuda.get_device_name(0)
    elif args.allow_cpu:
        device, backends, total, name = torch.device("cpu"), ["cpp"], None, "cpu"
        args.q, args.n, args.c, args.eager_q = 512, 3000, 64, 64
    else:
        raise SystemExit("capacity: no GPU (use --allow-cpu to check the script)")

    q, n, c = args.q, args.n, args.c
    results = {"device": name, "q": q, "n": n, "c": c, "dtype": args.dtype,
               "torch": torch.__version__, "backends": {}}
    print(f"capacity: ({q}, {n}, {c}) {args.dtype} forward + backward on {name}", flush=True)
    for backend in backends:
        fn = read_fn(backend, n)
        warm = make_inputs(min(q, 1024), n, c, dtype, device)
        measure(fn, *warm, device)
        del warm
        try:
            query, memory = make_inputs(q, n, c, dtype, device)
            seconds, peak, (read, entropy) = measure(fn, query, memory, device)
            entry = {"seconds": seconds, "peak_bytes": peak,
                     "finite": bool(torch.isfinite(read).all() and torch.isfinite(entropy).all())}
            entry.update(check_rows(read, entropy, query, memory, n))
        except torch.OutOfMemoryError as exc:
            entry = {"error": "out of memory: " + str(exc).splitlines()[0]}
        finally:
            query = memory = read = entropy = None
        results["backends"][backend] = entry
        print(f"  {backend}: {entry}", flush=True)

    query, memory = make_inputs(args.eager_q, n, c, dtype, device)
    try:
        _, peak, _ = measure(read_fn("eager", n), query, memory, device)
        eager = {"q": args.eager_q, "peak_bytes": peak}
        if peak is not None:
            eager["extrapolated_peak_bytes"] = peak * q / args.eager_q
            eager["fits_on_device"] = eager["extrapolated_peak_bytes"] < total
    except torch.OutOfMemoryError as exc:
        eager = {"q": args.eager_q, "error": "out of memory: " + str(exc).splitlines()[0]}
    results["eager"] = eager
    results["device_memory_bytes"] = total
    print(f"  eager python_ref: {eager}; device memory {total}")

    gib = 2.0 ** 30
    lines = [f"Capacity, ({q}, {n}, {c}) {args.dtype}, forward + backward, on {name}:", "",
             "| case | time s | peak GiB above inputs | first rows vs python_ref (max abs err) |",
             "|---|---:|---:|---|"]
    for backend, entry in results["backends"].items():
        if "error" in entry:
            lines.append(f"| {backend} | | | {entry['error']} |")
            continue
        peak = "n/a" if entry["peak_bytes"] is None else f"{entry['peak_bytes'] / gib:.2f}"
        lines.append(f"| {backend} | {entry['seconds']:.2f} | {peak} | read "
                     f"{entry['read_max_abs_err']:.2e} (of {entry['read_max_abs']:.2f}), entropy "
                     f"{entry['entropy_max_abs_err']:.2e}, finite: {entry['finite']} |")
    if eager.get("extrapolated_peak_bytes") is not None:
        lines.append(f"| eager python_ref (peak at Q={args.eager_q} x {q // args.eager_q}) | | "
                     f"{eager['extrapolated_peak_bytes'] / gib:.1f} | device has "
                     f"{total / gib:.0f} GiB: {'fits' if eager['fits_on_device'] else 'does not fit'} |")
    print("\n".join(lines))
    results["table"] = "\n".join(lines)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
