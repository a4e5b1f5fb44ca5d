"""Which backend serves DAAD's block memory fastest on the CPU: BlockMemory's forward and
forward + backward per backend, at DAAD-like shapes (few queries, long D).

    python bench/block_memory.py [--repeats 7] [--json FILE]

Cost model: one forward is two matrix products of Q x N x D multiply-adds (logits, read);
forward + backward about six (the backward recomputes the logits and takes three more:
the gradient of the weights, of the query and of the memory). At Q = 512, N = 500,
D = 4096 that is 2.1 G multiply-adds forward, so a 2-core CPU at ~40 GFLOP/s needs ~100 ms;
the Q x N tensors are 256 K entries, so memory traffic is the inputs' (Q + N) x D, not
Q x N. Times are medians over --repeats runs after one warm-up, float32, torch's threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import memae_fused
from memae_fused import BlockMemory

# (batch, (C, H, W), division, N): a 64 x 64 x 64 scale at DAAD's r_h = r_w = 8 (D = 4096),
# a finer 32 x 128 x 128 scale (D = 8192), and a small one with short blocks (D = 256).
SHAPES = [
    (8, (64, 64, 64), (1, 8, 8), 500),
    (8, (32, 128, 128), (1, 8, 8), 500),
    (8, (256, 8, 8), (1, 8, 8), 500),
]


def time_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    backends = [b for b in memae_fused.available_backends("cpu") if b != "triton"]
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, median of "
          f"{args.repeats}")
    print(f"{'map C x H x W':>16} {'division':>10} {'Q':>5} {'D':>6} {'N':>5} {'backend':>10} "
          f"{'forward ms':>11} {'fwd+bwd ms':>11} {'fwd GFLOP/s':>12}")
    for batch, shape, division, slots in SHAPES:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, *shape, generator=gen)
        for backend in backends:
            torch.manual_seed(0)
            mem = BlockMemory(slots, shape, division, backend=backend)
            queries = batch * division[0] * division[1] * division[2]

            def forward():
                with torch.no_grad():
                    mem(x)

            def forward_backward():
                xg = x.detach().requires_grad_(True)
                out = mem(xg)
                (out.output.square().mean() + 0.1 * out.entropy).backward()

            fwd, full = time_ms(forward, args.repeats), time_ms(forward_backward, args.repeats)
            gflops = 2 * 2 * queries * slots * mem.dim / (fwd * 1e-3) / 1e9
            rows.append(dict(batch=batch, shape=shape, division=division, queries=queries,
                             dim=mem.dim, slots=slots, backend=backend, forward_ms=fwd,
                             forward_backward_ms=full, forward_gflops=gflops))
            print(f"{'x'.join(map(str, shape)):>16} {'x'.join(map(str, division)):>10} "
                  f"{queries:>5} {mem.dim:>6} {slots:>5} {backend:>10} {fwd:>11.1f} {full:>11.1f} "
                  f"{gflops:>12.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
