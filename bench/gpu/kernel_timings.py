"""Per-kernel timings: each fused backend's forward op and backward op alone, at the
performance shapes, with the TFLOP/s reached on the cost model's count of the backend's own
matrix work (bench/costs.py) and on eager's (forward 2, backward 4 units of 2·Q·N·C).

    python bench/gpu/kernel_timings.py --out FILE.json [--dtype bfloat16] [--shrink both]
                                       [--backends triton,cuda] [--budget SECONDS]
    python bench/gpu/kernel_timings.py --allow-cpu --out FILE.json   (a check of this script)

On a GPU, triton.testing.do_bench times each op (no CUDA graphs: the ops run as a training
step calls them), median of its repetitions. FILE.json is rewritten after every case, so a
run cut short still returns what it measured; a case that would start after --budget
seconds is listed as skipped, and one the cost model predicts longer than what is left is
skipped too. The first step of bench/gpu/gpu_check.sh, before the tests: a broken build
still leaves numbers.

Without a GPU (--allow-cpu) the cpp backend and Triton under its interpreter run a tiny
shape, timed with the host clock.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from bench import costs  # noqa: E402
from bench.conftest import GPU_PERF_SHAPES, SHRINK_FACTOR, TEMPERATURE  # noqa: E402

CPU_SHAPES = [(64, 256, 32)]
EAGER_UNITS = {"forward": 2, "backward": 4}


def ops(backend):
    """(forward op, backward op) of a fused backend, as its autograd calls them."""
    if backend == "triton":
        import memae_fused.backends.triton  # noqa: F401  registers the ops

        return (torch.ops.memae_fused.triton_memory_read_fwd,
                torch.ops.memae_fused.triton_memory_read_bwd)
    import memae_fused.backends.cpp  # noqa: F401

    return torch.ops.memae_fused.memory_read_fwd, torch.ops.memae_fused.memory_read_bwd


def timer(device):
    """seconds(fn): do_bench's median on a GPU, the median of 5 host-clock calls on the CPU."""
    if device.type == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100,
                                                  return_mode="median") / 1e3

    def host(fn):
        fn()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    return host


def time_case(backend, q, n, c, dtype, shrink, device, seconds_of):
    """Forward and backward op timings of one case, with their TFLOP/s."""
    forward, backward = ops(backend)
    gen = torch.Generator(device=device).manual_seed(0)
    query = torch.randn(q, c, generator=gen, device=device).to(dtype)
    memory = torch.randn(n, c, generator=gen, device=device).to(dtype)
    grad_read = torch.randn(q, c, generator=gen, device=device).to(dtype)
    grad_entropy = torch.randn(q, generator=gen, device=device).to(dtype)
    lam = SHRINK_FACTOR / n if shrink else 0.0
    args = (lam, True, TEMPERATURE)
    if backend == "triton":
        # The forward of a training step: it saves Y where the backward's plan uses it.
        from memae_fused.backends import triton as triton_kernels

        save_y = triton_kernels.backward_query_plan(
            triton_kernels._block_c(c), dtype, device, triton_kernels._dot_precision(dtype),
            shrink) == "forward_y"
        read, entropy, stats, y = forward(query, memory, *args, save_y)
        run_forward = lambda: forward(query, memory, *args, save_y)  # noqa: E731
        run_backward = lambda: backward(grad_read, grad_entropy, query, memory, read,  # noqa: E731
                                        entropy, stats, y, *args)
    else:
        read, entropy, stats = forward(query, memory, *args)
        run_forward = lambda: forward(query, memory, *args)  # noqa: E731
        run_backward = lambda: backward(grad_read, grad_entropy, query, memory, read,  # noqa: E731
                                        entropy, stats, *args)
    result = {}
    for part, fn in (("forward", run_forward), ("backward", run_backward)):
        seconds = seconds_of(fn)
        own = costs.units(backend, costs.cost_dtype(dtype, backend), shrink, c, part)
        pair_flops = 2 * q * n * c
        result[part] = dict(ms=seconds * 1e3, own_units=own,
                            own_tflops=own * pair_flops / seconds / 1e12,
                            eager_count_tflops=EAGER_UNITS[part] * pair_flops / seconds / 1e12)
    return result


# A case's time on the GPU: do_bench spends 25 + 100 ms per op and at least 4 calls; the
# calls take the cost model's roofline time at EFFICIENCY of it or better; the first case of
# a backend and lam compiles its kernels (COMPILE_S, Triton's JIT for the forward and the
# backward passes; the CUDA kernels are built already).
EFFICIENCY = 0.2
COMPILE_S = 15.0


def case_seconds(backend, dtype, shrink, q, n, c, first):
    calls = {part: costs.predicted_seconds(backend, dtype, shrink, q, n, c, part) / EFFICIENCY
             for part in ("forward", "backward")}
    seconds = sum(0.125 + 4 * t for t in calls.values())
    return seconds + (COMPILE_S if first and backend == "triton" else 0.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="the JSON file to write (after every case)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--shrink", choices=("both", "on", "off"), default="both",
                        help="lam = 1/N (on), lam = 0 (off), or both")
    parser.add_argument("--backends", default="triton,cuda")
    parser.add_argument("--budget", type=float, default=120.0,
                        help="seconds; cases that would start later are skipped")
    parser.add_argument("--allow-cpu", action="store_true")
    parser.add_argument("--predict", action="store_true",
                        help="print the seconds the cost model predicts for the GPU run and exit")
    args = parser.parse_args(argv)
    start = time.monotonic()
    shrinks = {"both": (True, False), "on": (True,), "off": (False,)}[args.shrink]
    if args.predict:
        dtype_name = costs.cost_dtype(getattr(torch, args.dtype), "triton")
        print(round(sum(case_seconds(b, dtype_name, s, q, n, c, first=i == 0)
                        for b in args.backends.split(",") for s in shrinks
                        for i, (q, n, c) in enumerate(GPU_PERF_SHAPES))))
        return 0
    if not args.out:
        parser.error("--out is required")

    if torch.cuda.is_available():
        device, shapes = torch.device("cuda"), GPU_PERF_SHAPES
        name = torch.cuda.get_device_name(0)
        import memae_fused

        available = memae_fused.available_backends(device)
        backends = [b for b in args.backends.split(",") if b in available]
    elif args.allow_cpu:
        device, shapes, name = torch.device("cpu"), CPU_SHAPES, "cpu"
        backends = ["cpp"] + (["triton"] if os.environ.get("TRITON_INTERPRET") == "1" else [])
        args.dtype = "float32"
    else:
        raise SystemExit("kernel_timings: no GPU (use --allow-cpu to check the script)")
    dtype = getattr(torch, args.dtype)
    seconds_of = timer(device)
    results = dict(device=name, dtype=args.dtype, torch=torch.__version__,
                   temperature=TEMPERATURE, similarity="cosine", cases=[], skipped=[])

    def save():
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)

    for backend in backends:
        for shrink in shrinks:
            for q, n, c in shapes:
                case = dict(backend=backend, q=q, n=n, c=c, shrink=shrink)
                left = args.budget - (time.monotonic() - start)
                predicted = 0.0
                if device.type == "cuda":
                    predicted = case_seconds(backend, costs.cost_dtype(dtype, backend), shrink, q, n, c,
                                             first=not any(r["backend"] == backend
                                                           and r["shrink"] == shrink
                                                           for r in results["cases"]))
                if left <= predicted:
                    results["skipped"].append(dict(case, why=f"{left:.0f} s left, needs "
                                                             f"{predicted:.1f} s or more"))
                    save()
                    continue
                try:
                    case.update(time_case(backend, q, n, c, dtype, shrink, device, seconds_of))
                except Exception as exc:  # noqa: BLE001 - recorded, and the next case runs
                    case["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                results["cases"].append(case)
                save()
                summary = case.get("error") or ", ".join(
                    f"{part} {case[part]['ms']:.3g} ms ({case[part]['own_tflops']:.3g} TFLOP/s "
                    f"own count, {case[part]['eager_count_tflops']:.3g} eager count)"
                    for part in ("forward", "backward"))
                print(f"{backend} {args.dtype} lam {'1/N' if shrink else '0'} ({q}, {n}, {c}): "
                      f"{summary}", flush=True)
    save()
    return 1 if any("error" in c for c in results["cases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
