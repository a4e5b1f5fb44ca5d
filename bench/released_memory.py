"""Peak memory of the released MemAE training step on its memory module: the released module's
computation in eager PyTorch against memae_fused.released, each in a process of its own.

    python bench/released_memory.py [--shape 4,256,2,32,32] [--slots 2000] [--json FILE]

The step is the released training loop's, on the memory module alone: res = module(x);
loss = MSE(res['output'], x) + 0.0002 * EntropyLossEncap()(res['att']); loss.backward().
"released" computes the released module's formulas as written there (dot-product logits,
softmax, ReLU hard shrinkage, L1 normalisation, weighted read, entropy from 'att'); "fused" is
memae_fused.released.MemModule with the same weight. Both run in float32 on the CPU. One warm-up
step, then the measured step: its peak resident set (VmHWM, reset with /proc/self/clear_refs
just before the step) above the resident set at that moment, so the inputs, the weights and
the libraries are not counted, and each process has its own peak.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys

SHRINK_THRES = 0.0025
ENTROPY_WEIGHT = 0.0002


def _status_kib(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def released_module(weight):
    """The released MemModule's forward as a function of the input (the formulas, in eager
    PyTorch, materialising the Q x N tensors as the released code does)."""
    import torch
    import torch.nn.functional as F

    def forward(x):
        s = x.shape
        query = x.movedim(1, -1).contiguous().view(-1, s[1])
        att = F.softmax(F.linear(query, weight), dim=1)
        att = (F.relu(att - SHRINK_THRES) * att) / (torch.abs(att - SHRINK_THRES) + 1e-12)
        att = F.normalize(att, p=1, dim=1)
        out = F.linear(att, weight.t())
        out = out.view(s[0], *s[2:], s[1]).movedim(-1, 1)
        att = att.view(s[0], *s[2:], weight.shape[0]).movedim(-1, 1)
        return {"output": out, "att": att}

    return forward


def measure(impl: str, shape, slots: int, backend: str) -> dict:
    import torch
    from torch import nn

    from memae_fused.released import EntropyLossEncap, MemModule

    torch.manual_seed(0)
    channels = shape[1]
    fused = MemModule(mem_dim=slots, fea_dim=channels, shrink_thres=SHRINK_THRES, backend=backend)
    module = fused if impl == "fused" else released_module(fused.memory.weight)
    x = torch.randn(*shape)

    def step():
        res = module(x)
        loss = nn.MSELoss()(res["output"], x) + ENTROPY_WEIGHT * EntropyLossEncap()(res["att"])
        loss.backward()
        fused.memory.weight.grad = None
        return loss.item()

    step()  # warm-up: thread pools, allocator arenas
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _status_kib("VmRSS")
    loss = step()
    peak = _status_kib("VmHWM") - base
    queries = shape[0] * int(torch.tensor(shape[2:]).prod())
    return {"impl": impl, "backend": backend if impl == "fused" else "eager", "shape": list(shape),
            "queries": queries, "slots": slots, "loss": loss, "peak_kib": peak,
            "q_by_n_mib": queries * slots * 4 / 2**20, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="4,256,2,32,32", help="input (B, C, T, H, W)")
    ap.add_argument("--slots", type=int, default=2000, help="mem_dim N")
    ap.add_argument("--backend", default="auto", help="memae_fused backend for 'fused'")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", choices=("released", "fused"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split(","))
    if args.child:
        print(json.dumps(measure(args.child, shape, args.slots, args.backend)))
        return 0
    rows = []
    for impl in ("released", "fused"):
        proc = subprocess.run([sys.executable, __file__, "--child", impl, "--shape", args.shape,
                               "--slots", str(args.slots), "--backend", args.backend],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            return proc.returncode
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    released, fused = rows
    ratio = released["peak_kib"] / max(fused["peak_kib"], 1)
    print(f"training step of the memory module, input {tuple(shape)} ({released['queries']} "
          f"queries), N = {args.slots}, float32, CPU, {released['threads']} threads, torch "
          f"{released['torch']}; one Q x N float32 tensor = {released['q_by_n_mib']:.1f} MiB")
    for row in rows:
        print(f"  {row['impl']:>8} ({row['backend']}): peak {row['peak_kib'] / 1024:8.1f} MiB above "
              f"the step's start, loss {row['loss']:.6f}")
    print(f"  released / fused peak: {ratio:.1f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "ratio": ratio}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
