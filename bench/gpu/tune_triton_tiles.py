"""Sweep the Triton kernels' tile shapes on a GPU and print the fastest per kernel.

    python3 bench/gpu/tune_triton_tiles.py [--out results.json] [--quick] [--shapes Q,N,C;...]
                                       [--budget SECONDS]

First the query-major backward's plans (triton_kernels.backward_query_plan: one fused
sweep; Y from the forward and X, R in one sweep; or R first and then d(query)) are timed
against each other as whole forward + backward steps (the forward_y plan's forward does more),
each with its picked tiles ("backward_plan"). Then each kernel of the current plan is swept on
its own while the others keep memae_fused.triton_kernels.tile_config's current choice; the
forward is timed alone, a backward kernel by timing the whole backward. The candidates are
the shapes that compiled without spills and within shared memory in the committed resource
sweep (bench/results/*-triton-resources-sm90.json, from bench/gpu/triton_resources.py), so no
device time goes to shapes known to spill. Results feed tile_config and _FORWARD_Y.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import sys
import time

import torch
import triton.testing

from memae_fused.backends import triton as triton_kernels

SHAPES = [(16384, 2000, 256), (4096, 100000, 256)]
PLANS = ("fused", "forward_y", "row_term_first")
# The kernels each plan of the query-major backward runs, besides the forward and the
# memory-major backward.
PLAN_KERNELS = {"fused": ("backward_query",), "forward_y": ("backward_x_and_r",),
                "row_term_first": ("backward_row_term", "backward_dquery")}


def kernels(plan):
    """What is tuned, most decisive first, when the current plan is `plan`."""
    return ("backward_plan", "forward", *PLAN_KERNELS[plan], "backward_memory")


RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")


# A wgmma shape that spills at most this much (bytes per thread) is timed too where no
# spill-free one exists: Hopper's faster tensor-core instructions against the spill's cost.
WGMMA_SPILL = 512
SHARED_LIMIT = 232448


def candidates(kernel, mode, block_c, current):
    """The current shape; if no spill-free shape uses wgmma, the least-spilling wgmma shape
    within WGMMA_SPILL; then every shape that was spill-free and within shared memory in each
    resource sweep that compiled it, largest first."""
    verdicts, wgmma_spill = {}, {}
    for path in glob.glob(os.path.join(RESULTS, "*-triton-resources-sm90.json")):
        with open(path) as fh:
            for run in json.load(fh)["runs"]:
                for r in run["results"]:
                    if (r["kernel"], r["mode"], r["block_c"]) != (kernel, mode, block_c):
                        continue
                    key = tuple(r["tiles"])
                    verdicts[key] = verdicts.get(key, True) and r["usable"]
                    if r.get("mma") == "wgmma" and r["shared"] <= SHARED_LIMIT:
                        wgmma_spill[key] = max(wgmma_spill.get(key, 0), r["stack"])
    # Largest tiles first: the likelier winners, timed before a --budget runs out.
    usable = [current] + sorted((triton_kernels.Tiles(*t) for t, ok in verdicts.items() if ok),
                                key=lambda t: (-t.block_q * t.block_n, t))
    spilling = []
    if not any(wgmma_spill.get(tuple(t)) == 0 for t in usable):
        spilling = sorted((stack, t) for t, stack in wgmma_spill.items() if stack <= WGMMA_SPILL)
        spilling = [triton_kernels.Tiles(*spilling[0][1])] if spilling else []
    # The wgmma comparison right after the current shape, before a --budget runs out.
    return list(dict.fromkeys(usable[:1] + spilling + usable[1:]))


def time_kernel(kernel, tiles, q, n, c, dtype):
    """Milliseconds of the forward (kernel "forward") or of the whole backward, with `tiles`
    for `kernel`, or for kernel "backward_plan" of forward + backward with the query-major
    plan named by `tiles`."""
    default, default_plan = triton_kernels.tile_config, triton_kernels.backward_query_plan

    def patched(name, block_c, dt, device, precision="ieee"):
        return tiles if name == kernel else default(name, block_c, dt, device, precision)

    if kernel == "backward_plan":
        triton_kernels.backward_query_plan = lambda *args: tiles
    else:
        triton_kernels.tile_config = patched
    try:
        query = torch.randn(q, c, device="cuda", dtype=dtype)
        memory = torch.randn(n, c, device="cuda", dtype=dtype) * 0.1
        # The forward as a training step calls it: with Y where the backward's plan uses it.
        save_y = triton_kernels.backward_query_plan(
            triton_kernels._block_c(c), dtype, query.device,
            triton_kernels._dot_precision(dtype), True) == "forward_y"
        args = (query, memory, 1.0 / n, True, 0.05, save_y)
        read, entropy, stats, y = triton_kernels.triton_memory_read_fwd(*args)
        if kernel == "forward":
            fn = lambda: triton_kernels.triton_memory_read_fwd(*args)  # noqa: E731
        elif kernel == "backward_plan":
            grad_read, grad_ent = torch.randn_like(read), torch.randn_like(entropy)

            def fn():
                out = triton_kernels.triton_memory_read_fwd(*args)
                return triton_kernels.triton_memory_read_bwd(
                    grad_read, grad_ent, query, memory, *out, 1.0 / n, True, 0.05)
        else:
            grad_read, grad_ent = torch.randn_like(read), torch.randn_like(entropy)
            fn = lambda: triton_kernels.triton_memory_read_bwd(  # noqa: E731
                grad_read, grad_ent, query, memory, read, entropy, stats, y, 1.0 / n, True,
                0.05)
        return triton.testing.do_bench(fn, warmup=10, rep=40)
    finally:
        triton_kernels.tile_config, triton_kernels.backward_query_plan = default, default_plan


def label(option):
    """A plan's name, or a tile shape as a tuple."""
    return option if isinstance(option, str) else tuple(option)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", help="write all timings here as JSON")
    parser.add_argument("--quick", action="store_true", help="bf16 only")
    parser.add_argument("--shapes", help="Q,N,C;... instead of " + str(SHAPES))
    parser.add_argument("--budget", type=float, default=float("inf"),
                        help="seconds; each kernel in turn gets an even share of what is "
                             "left and starts no new candidate after it (gpu_check's step)")
    args = parser.parse_args(argv)
    shapes = SHAPES
    if args.shapes:
        shapes = [tuple(map(int, shape.split(","))) for shape in args.shapes.split(";")]
    if not torch.cuda.is_available():
        print("no GPU: nothing to tune", file=sys.stderr)
        return 1
    dtypes = (torch.bfloat16,) if args.quick else (torch.bfloat16, torch.float32)
    rows = []
    gpu = torch.device("cuda")
    groups = []
    for (q, n, c), dtype in itertools.product(shapes, dtypes):
        plan = triton_kernels.backward_query_plan(triton_kernels._block_c(c), dtype, gpu,
                                                 triton_kernels._dot_precision(dtype))
        groups += [((q, n, c), dtype, kernel) for kernel in kernels(plan)]
    start = time.monotonic()
    for index, ((q, n, c), dtype, kernel) in enumerate(groups):
        # An even share of what is left: time a group does not use passes to the next ones.
        left = args.budget - (time.monotonic() - start)
        deadline = time.monotonic() + left / (len(groups) - index)
        precision = triton_kernels._dot_precision(dtype)
        mode = {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(
            dtype, "float32-tf32" if precision == "tf32" else "float32")
        block_c = triton_kernels._block_c(c)
        if kernel == "backward_plan":
            default = triton_kernels.backward_query_plan(block_c, dtype, gpu, precision)
            options = [default] + [plan for plan in PLANS if plan != default]
        else:
            default = triton_kernels.tile_config(kernel, block_c, dtype, gpu, precision)
            options = candidates(kernel, mode, block_c, default)
        best = None
        for tiles in options:
            # Every plan is timed: they decide the most.
            if kernel != "backward_plan" and time.monotonic() > deadline:
                print(f"  budget spent: skip {kernel} {label(tiles)}", file=sys.stderr)
                continue
            try:
                ms = time_kernel(kernel, tiles, q, n, c, dtype)
            except Exception as exc:  # out of shared memory or registers: not a candidate
                print(f"  skip {kernel} {label(tiles)}: {type(exc).__name__}", file=sys.stderr)
                continue
            rows.append(dict(kernel=kernel, q=q, n=n, c=c, dtype=str(dtype),
                             tiles=tiles if isinstance(tiles, str) else list(tiles),
                             ms=ms, default=tiles == default))
            if best is None or ms < best[1]:
                best = (tiles, ms)
        if best is None:
            print(f"{kernel:16s} ({q},{n},{c}) {str(dtype):15s} nothing timed", flush=True)
            continue
        default_ms = next((r["ms"] for r in rows if r["default"] and r["kernel"] == kernel
                           and (r["q"], r["n"], r["dtype"]) == (q, n, str(dtype))), float("nan"))
        print(f"{kernel:17s} ({q},{n},{c}) {str(dtype):15s} best {label(best[0])} "
              f"{best[1]:.3f} ms; current {label(default)} {default_ms:.3f} ms", flush=True)
        if args.out:  # after every kernel, so that a run cut short keeps what it timed
            with open(args.out, "w") as f:
                json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                           "triton": triton.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
