"""Capacity check: the Triton issue's largest problem with each fused backend, against what
eager python_ref would need.

    python bench/gpu/capacity.py [--q 65536 --n 100000 --c 256 --dtype bfloat16] [--json FILE]
    python bench/gpu/capacity.py --predict      (the seconds the cost model says it needs)

For each fused backend on the device, Triton first: the forward at the full (Q, N, C), its
time (after a warm-up at a small Q, so kernels are compiled), its peak memory above the
inputs (torch.cuda.max_memory_allocated) and its first rows' read and entropy checked
against python_ref in float64 (rows are independent, so a few rows are an exact check of the
kernel at full size); then forward + backward at Q/8 and Q/16, whose peaks give the
full-size peak by linear extrapolation (everything a fused backend allocates is Q x C or
N x C, so its peak is affine in Q at fixed N), and whose time, scaled by Q, the full-size
time. Eager python_ref runs at a small Q only: its peak grows linearly with Q (every
intermediate is Q x N), so the peak at Q is extrapolated from it and set against the
device's memory. The JSON file is rewritten after every case, so a run cut short keeps
what it measured. Without a GPU (--allow-cpu) it runs the cpp backend at a small shape, as
a check of this script.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import memae_fused  # noqa: E402
import python_ref  # noqa: E402
from bench import costs  # noqa: E402

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


def measure(fn, query, memory, device, backward=True):
    """(seconds, peak bytes above the inputs, outputs) of one forward (+ backward)."""
    gc.collect()
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if backward:
        read, entropy = fn(query, memory)
        # The gradients are dropped at once: the peak counts them all the same.
        torch.autograd.grad((read.float().sum() + entropy.float().sum()), (query, memory))
    else:
        with torch.no_grad():
            read, entropy = fn(query, memory)
    sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else None
    return seconds, peak, (read.detach(), entropy.detach())


# The fractions of Q at which forward + backward runs, for the extrapolation.
BACKWARD_FRACTIONS = (16, 8)
# The roofline time is a floor: a budget takes it at EFFICIENCY, and each backend's warm-up
# (Triton's JIT) COMPILE_S more.
EFFICIENCY = 0.2
COMPILE_S = 15.0


def predicted_seconds(q, n, c, dtype, backends):
    """The cost model's time for the whole check: per backend a warm-up, the full forward,
    forward + backward at the reduced sizes; eager at its small Q."""
    shrink = SHRINK_FACTOR > 0
    total = 0.0
    for backend in backends:
        forward = costs.predicted_seconds(backend, dtype, shrink, q, n, c, "forward")
        full = costs.predicted_seconds(backend, dtype, shrink, q, n, c)
        total += COMPILE_S + (forward + sum(full / f for f in BACKWARD_FRACTIONS)) / EFFICIENCY
    return total


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
    parser.add_argument("--json", help="also write the results here (after every case)")
    parser.add_argument("--predict", action="store_true",
                        help="print the seconds the cost model predicts for the check and exit")
    args = parser.parse_args()
    if args.predict:
        print(round(predicted_seconds(args.q, args.n, args.c, args.dtype,
                                      args.backends.split(","))))
        return

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

    def save():
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1)

    print(f"capacity: ({q}, {n}, {c}) {args.dtype} on {name}: forward at full size, forward + "
          f"backward at Q/{BACKWARD_FRACTIONS[0]} and Q/{BACKWARD_FRACTIONS[1]}", flush=True)
    for backend in backends:
        fn = read_fn(backend, n)
        entry = results["backends"][backend] = {}
        try:
            warm = make_inputs(min(q, 1024), n, c, dtype, device)
            measure(fn, *warm, device)
            del warm
            query, memory = make_inputs(q, n, c, dtype, device)
            seconds, peak, (read, entropy) = measure(fn, query, memory, device, backward=False)
            entry["forward"] = {"seconds": seconds, "peak_bytes": peak, "finite": bool(
                torch.isfinite(read).all() and torch.isfinite(entropy).all())}
            entry["forward"].update(check_rows(read, entropy, query, memory, n))
            query = memory = read = entropy = None
            save()
            points = []
            for fraction in BACKWARD_FRACTIONS:
                small_q = q // fraction
                query, memory = make_inputs(small_q, n, c, dtype, device)
                seconds, peak, _ = measure(fn, query, memory, device)
                query = memory = None
                points.append((small_q, seconds, peak))
                entry[f"forward_backward_q{small_q}"] = {"seconds": seconds, "peak_bytes": peak}
                save()
            (q1, _, p1), (q2, t2, p2) = points
            entry["forward_backward_extrapolated"] = {
                "seconds": t2 * q / q2,
                "peak_bytes": None if p1 is None else p2 + (p2 - p1) * (q - q2) / (q2 - q1)}
        except torch.OutOfMemoryError as exc:
            entry["error"] = "out of memory: " + str(exc).splitlines()[0]
        finally:
            query = memory = read = entropy = None
        save()
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
    lines = [f"Capacity, ({q}, {n}, {c}) {args.dtype}, on {name} (forward + backward "
             f"extrapolated from Q/{BACKWARD_FRACTIONS[0]} and Q/{BACKWARD_FRACTIONS[1]}):", "",
             "| case | forward s | forward peak GiB | fwd + bwd s (extrap.) "
             "| fwd + bwd peak GiB (extrap.) | first rows vs python_ref (max abs err) |",
             "|---|---:|---:|---:|---:|---|"]

    def gib_of(nbytes):
        return "n/a" if nbytes is None else f"{nbytes / gib:.2f}"

    for backend, entry in results["backends"].items():
        fwd, both = entry.get("forward"), entry.get("forward_backward_extrapolated")
        if fwd is None:
            lines.append(f"| {backend} | | | | | {entry.get('error', 'not run')} |")
            continue
        check = (f"read {fwd['read_max_abs_err']:.2e} (of {fwd['read_max_abs']:.2f}), entropy "
                 f"{fwd['entropy_max_abs_err']:.2e}, finite: {fwd['finite']}")
        if both is None:
            lines.append(f"| {backend} | {fwd['seconds']:.2f} | {gib_of(fwd['peak_bytes'])} | | "
                         f"| {check}; {entry.get('error', 'backward not run')} |")
            continue
        lines.append(f"| {backend} | {fwd['seconds']:.2f} | {gib_of(fwd['peak_bytes'])} "
                     f"| {both['seconds']:.2f} | {gib_of(both['peak_bytes'])} | {check} |")
    if eager.get("extrapolated_peak_bytes") is not None:
        lines.append(f"| eager python_ref (peak at Q={args.eager_q} x {q // args.eager_q}) | | | | "
                     f"{eager['extrapolated_peak_bytes'] / gib:.1f} | device has "
                     f"{total / gib:.0f} GiB: {'fits' if eager['fits_on_device'] else 'does not fit'} |")
    print("\n".join(lines))
    results["table"] = "\n".join(lines)
    save()


if __name__ == "__main__":
    main()
