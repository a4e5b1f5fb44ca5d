"""The cost model behind every performance claim: matrix work and memory traffic per
(query, slot) pair of each backend's plan, and the roofline time they imply on an H100 and
an H200.

    python -m bench.costs [--json] [--similarity cosine|dot] [--shape Q,N]

Matrix work is counted in units of one Q x N x C product (2·Q·N·C FLOP): the eager
reference does 2 forward (logits, read) and 4 backward; the fused kernels recompute the
logits instead of storing Q x N tensors, so they do more. The Triton counts come from the
plan its launcher takes (memae_fused.backends.triton.backward_query_plan; "forward_y" counts
a training step's forward, which saves Y: a forward under no_grad does one unit less), and
the tests
(tests/bench_tools/test_costs.py) count the products each launch performs under the
interpreter against them.

Bytes per pair are approximate, counted as follows:
- fused GPU kernels (triton, cuda): each program owns a block of rows and reads the other
  side's C-wide tiles once per block from HBM (no L2 reuse counted), so a sweep that loads k
  tiles of C elements per swept row costs k·C·b / block_rows; the owned rows, per-row stats
  and partial sums are O((Q + N)·C) and left out;
- cpp: the rows x N scratch of each block of queries, every write and read of it counted
  (whether or not it stays in cache), at the accumulation precision;
- eager: every Q x N tensor each ATen op of python_ref's forward and backward reads or
  writes, counted once per op (measured by running it under a dispatch mode at a small
  shape; views move nothing);
- compile: an estimate: inductor fuses the element-wise chains between the matrix
  products, so each product's Q x N operand or result crosses HBM once (forward: logits
  written, read by the fused softmax/shrink/entropy kernel, weights written, read by the
  read product; backward: g·mvᵀ written, read with the saved weights and logits, ds written
  and read by two products, the weights read by d mv's).

Roofline time per pair = max(units·2·C / peak FLOP/s, bytes / HBM bandwidth), at the data
sheets' dense peaks (bf16 989 TFLOP/s, ~790 measured on an H100; TF32 495; FP32 and FP64 67;
HBM 3.35 TB/s on an H100, 4.8 TB/s on an H200). The CPU backend has no GPU roofline.
"""

from __future__ import annotations

import argparse
import json
import math
from functools import lru_cache
from typing import List, Optional

import torch

BACKENDS = ("eager", "compile", "triton", "cuda", "cpp")
DTYPES = ("bfloat16", "float16", "tf32", "float32", "float64")
CHANNELS = (64, 128, 256, 512)
GPUS = {
    "H100": {"bfloat16": 989e12, "float16": 989e12, "tf32": 495e12, "float32": 67e12,
             "float64": 67e12, "hbm": 3.35e12},
    "H200": {"bfloat16": 989e12, "float16": 989e12, "tf32": 495e12, "float32": 67e12,
             "float64": 67e12, "hbm": 4.8e12},
}
MEASURED_BF16_PEAK = 790e12  # what dense bf16 GEMMs reach on an H100 (FlashAttention-3's figure)
TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "tf32": torch.float32,
                "float32": torch.float32, "float64": torch.float64}

# Triton: matrix products (units) of each sweep, and the C-wide tiles it loads per swept row
# (keys, values, queries, upstream gradients) for cosine and for dot similarity (where keys
# and values are the same tile).
TRITON_SWEEPS = {
    # name: (units, tiles loaded with cosine, with dot, owner: "query" or "memory")
    "forward_max_sum": (1, 1, 1, "query"),   # lam > 0 sweep 1: logits
    "forward_max_sum_y": (2, 1, 1, "query"),  # forward_y's sweep 1: logits, Y = p·mk
    "forward_read": (2, 2, 1, "query"),      # lam > 0 sweep 2: logits, h·mv
    "forward_online": (2, 2, 1, "query"),    # lam = 0: logits, p·mv
    "backward_fused": (4, 2, 1, "query"),    # logits, g·mvᵀ, X, Y
    "backward_row_term": (2, 2, 1, "query"),  # logits, g·mvᵀ
    "backward_dquery": (3, 1, 1, "query"),   # logits, g·mkᵀ (values from the unit keys), d zq
    "backward_x_and_r": (3, 1, 1, "query"),  # the same products, R summed beside X
    "backward_memory": (4, 2, 2, "memory"),  # logits, mv·gᵀ, d mk, d mv (swept: zq, g)
    # the atomic plan's: the same and ds·mk per query tile, added into d(query) with atomics
    # (a read and write of the tile per slot block in the accumulation dtype: counted in
    # _triton_sweep_cost)
    "backward_memory_atomic": (5, 2, 2, "memory"),
}
TRITON_TILE_KERNEL = {"forward_max_sum": "forward", "forward_read": "forward",
                      "forward_online": "forward", "forward_max_sum_y": "forward",
                      "backward_x_and_r": "backward_x_and_r", "backward_fused": "backward_query",
                      "backward_row_term": "backward_row_term",
                      "backward_dquery": "backward_dquery", "backward_memory": "backward_memory",
                      "backward_memory_atomic": "backward_memory"}
# The CUDA kernels' output-column chunk per dtype (csrc/cuda/memory_read_cuda.cu, EngineFor)
# and owned rows per CTA (kRows).
CUDA_COLUMNS = {"bfloat16": 256, "float16": 256, "tf32": 128, "float32": 128, "float64": 64}
CUDA_ROWS = 32


def cost_dtype(dtype, backend: str) -> str:
    """The cost model's dtype name of a case: a torch dtype (or its name) as `backend` runs it,
    "tf32" for float32 where torch's matmul precision lets that backend use TF32 (eager,
    compile and triton; the CUDA and CPU kernels multiply float32 in IEEE)."""
    name = str(dtype).removeprefix("torch.")
    if (name == "float32" and backend in ("eager", "compile", "triton")
            and torch.get_float32_matmul_precision() != "highest"):
        return "tf32"
    return name


def _bytes(dtype: str) -> int:
    return TORCH_DTYPES[dtype].itemsize


def triton_plans(dtype: str, shrink: bool, channels: int) -> List[dict]:
    """Every plan the Triton launcher can take here, the one it takes by default first:
    dict(plan, default, sweeps (forward, backward))."""
    from memae_fused.backends import triton as triton_kernels

    gpu = torch.device("cuda")
    precision = "tf32" if dtype == "tf32" else "ieee"
    block_c = triton_kernels._block_c(channels)
    default = triton_kernels.backward_query_plan(block_c, TORCH_DTYPES[dtype], gpu, precision,
                                                 shrink)
    forward = {"fused": ["forward_max_sum", "forward_read"],
               "row_term_first": ["forward_max_sum", "forward_read"],
               "forward_y": ["forward_max_sum_y", "forward_read"],
               "dquery_only": ["forward_online"]}
    backward = {"fused": ["backward_fused"], "dquery_only": ["backward_dquery"],
                "row_term_first": ["backward_row_term", "backward_dquery"],
                "forward_y": ["backward_x_and_r"]}
    names = [default] + [p for p in ("fused", "forward_y", "row_term_first")
                         if shrink and p != default]
    plans = [dict(plan=name, default=name == default, forward=forward[name],
                  backward=backward[name] + ["backward_memory"]) for name in names]
    # Asked for with MEMAE_FUSED_ATOMIC_BACKWARD=1: d(query) from the memory-major sweep.
    plans.append(dict(plan="atomic", default=False,
                      forward=forward["fused" if shrink else "dquery_only"],
                      backward=(["backward_row_term"] if shrink else [])
                      + ["backward_memory_atomic"]))
    return plans


def _triton_sweep_cost(sweep: str, dtype: str, channels: int, cosine: bool):
    """(units, bytes per pair) of one Triton sweep at the GPU's tiles."""
    from memae_fused.backends import triton as triton_kernels

    units, tiles_cosine, tiles_dot, owner = TRITON_SWEEPS[sweep]
    tiles = triton_kernels.tile_config(TRITON_TILE_KERNEL[sweep], triton_kernels._block_c(channels),
                                       TORCH_DTYPES[dtype], torch.device("cuda"),
                                       "tf32" if dtype == "tf32" else "ieee")
    rows = tiles.block_q if owner == "query" else tiles.block_n
    loaded = tiles_cosine if cosine else tiles_dot
    accumulation = 8 if dtype == "float64" else 4  # d(query) is kept in it
    atomics = 2 * channels * accumulation / rows if sweep == "backward_memory_atomic" else 0.0
    return units, loaded * channels * _bytes(dtype) / rows + atomics


@lru_cache(maxsize=None)
def eager_bytes_per_pair(dtype: str, shrink: bool, cosine: bool) -> float:
    """Q x N traffic of python_ref's forward and backward per pair, measured on the CPU at a
    small shape: each ATen op's Q x N inputs and outputs, once per op, at dtype's size."""
    import python_ref
    from torch.utils._python_dispatch import TorchDispatchMode

    q, n, c = 48, 80, 16
    counted = {"bytes": 0}

    class QNTraffic(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not func.is_view:
                flat = torch.utils._pytree.tree_leaves((args, kwargs, out))
                counted["bytes"] += sum(t.numel() for t in flat if isinstance(t, torch.Tensor)
                                        and t.numel() == q * n)
            return out

    gen = torch.Generator().manual_seed(0)
    query = torch.randn(q, c, generator=gen, requires_grad=True)
    memory = torch.randn(n, c, generator=gen, requires_grad=True)
    with QNTraffic():
        res = python_ref.memory_read(query, memory, shrink_thres=1.0 / n if shrink else 0.0,
                                     similarity="cosine" if cosine else "dot", temperature=0.5)
        (res.read.sum() + res.entropy.sum()).backward()
    return counted["bytes"] * _bytes(dtype) / (q * n)


def _compile_bytes_per_pair(dtype: str) -> float:
    # forward: logits written and read, weights written and read (4 passes); backward: g·mvᵀ
    # written and read, the saved weights and logits read, ds written and read twice, the
    # weights read once more (8 passes).
    return (4 + 8) * _bytes(dtype)


def _cpp_bytes_per_pair(dtype: str) -> float:
    # forward: logits written, read and written per row, read by the read GEMM (4 passes);
    # backward: two GEMM outputs written, both read and two written per row, ds read by
    # d zq's GEMM, ds and a read by the memory gradient's (9 passes). float32 scratch for
    # every dtype but float64.
    return (4 + 9) * (8 if dtype == "float64" else 4)


def cost_rows(similarity: str = "cosine") -> List[dict]:
    """One dict per backend x plan x dtype x shrink x channels."""
    cosine = similarity == "cosine"
    rows = []
    for backend in BACKENDS:
        for dtype in DTYPES:
            if backend == "cpp" and dtype not in ("float32", "float64"):
                continue  # 16-bit inputs run in float32 on the CPU; no TF32 there
            if backend == "cuda" and dtype == "tf32":
                continue  # the CUDA kernels multiply float32 in IEEE FMA whatever torch allows
            for shrink in (False, True):
                for channels in CHANNELS:
                    for plan in _plans(backend, dtype, shrink, channels, cosine):
                        rows.append(_finish(dict(backend=backend, dtype=dtype, shrink=shrink,
                                                 channels=channels, similarity=similarity,
                                                 **plan)))
    return rows


def _plans(backend, dtype, shrink, channels, cosine) -> List[dict]:
    if backend == "eager":
        return [dict(plan="autograd", default=True, units_forward=2, units_backward=4,
                     bytes_per_pair=eager_bytes_per_pair(dtype, shrink, cosine))]
    if backend == "compile":
        return [dict(plan="inductor", default=True, units_forward=2, units_backward=4,
                     bytes_per_pair=_compile_bytes_per_pair(dtype))]
    if backend == "cpp":
        return [dict(plan="blocked_rows", default=True, units_forward=2, units_backward=5,
                     bytes_per_pair=_cpp_bytes_per_pair(dtype))]
    if backend == "cuda":
        chunks = math.ceil(channels / CUDA_COLUMNS[dtype])
        # Per column chunk the logits over all C channels (forward: twice with shrinkage, once
        # in lam = 0's online sweep; backward: logits and g·mvᵀ in both kernels), and the
        # chunk's share of the read / X (and Y with shrinkage) / d mk and d mv. Bytes: per
        # swept row, the keys for the logits and the chunk's values (forward); keys and values,
        # then keys for X and Y (query-major); queries and gradients twice (memory-major).
        b = _bytes(dtype)
        sweeps = 2 if shrink else 1
        forward_bytes = (sweeps * chunks * channels + channels) * b / CUDA_ROWS
        backward_bytes = (2 * chunks * channels + channels) * b / CUDA_ROWS \
            + (2 * chunks * channels + 2 * channels) * b / CUDA_ROWS
        plan = ("two_sweep" if shrink else "online") + f"_column_chunks_{chunks}"
        return [dict(plan=plan, default=True, units_forward=sweeps * chunks + 1,
                     units_backward=4 * chunks + (4 if shrink else 3),
                     bytes_per_pair=forward_bytes + backward_bytes)]
    out = []
    for plan in triton_plans(dtype, shrink, channels):
        costs = {part: [_triton_sweep_cost(s, dtype, channels, cosine) for s in plan[part]]
                 for part in ("forward", "backward")}
        out.append(dict(plan=plan["plan"], default=plan["default"],
                        units_forward=sum(u for u, _ in costs["forward"]),
                        units_backward=sum(u for u, _ in costs["backward"]),
                        bytes_per_pair=sum(b for part in costs.values() for _, b in part)))
    return out


def _finish(row: dict) -> dict:
    row["units_per_pair"] = row["units_forward"] + row["units_backward"]
    row["bytes_per_pair"] = round(row["bytes_per_pair"], 3)
    row["roofline_ps_per_pair"] = None
    if row["backend"] != "cpp":
        row["roofline_ps_per_pair"] = {
            gpu: round(1e12 * roofline_seconds_per_pair(row, gpu), 5) for gpu in GPUS}
    return row


def roofline_seconds_per_pair(row: dict, gpu: str = "H200", part: str = "total") -> float:
    """max(matrix time, memory time) of one pair on `gpu`; part "forward", "backward" or
    "total" (the bytes are split between forward and backward in proportion to the units)."""
    units = {"forward": row["units_forward"], "backward": row["units_backward"],
             "total": row["units_per_pair"]}[part]
    peaks = GPUS[gpu]
    flops = units * 2 * row["channels"] / peaks[row["dtype"]]
    moved = row["bytes_per_pair"] * units / row["units_per_pair"] / peaks["hbm"]
    return max(flops, moved)


def find(backend: str, dtype: str, shrink: bool, channels: int, similarity: str = "cosine",
         plan: Optional[str] = None) -> dict:
    """The row of one case (the backend's default plan unless `plan` is named); any channel
    count, not only the table's."""
    for row in _plans(backend, dtype, shrink, channels, similarity == "cosine"):
        if (plan is None and row["default"]) or row["plan"] == plan:
            return _finish(dict(backend=backend, dtype=dtype, shrink=shrink, channels=channels,
                                similarity=similarity, **row))
    raise KeyError(f"no plan {plan!r} for {backend} {dtype} shrink={shrink} C={channels}")


def units(backend: str, dtype: str, shrink: bool, channels: int, part: str = "total",
          similarity: str = "cosine") -> int:
    """Matrix units of the backend's default plan: part "forward", "backward" or "total"."""
    row = find(backend, dtype, shrink, channels, similarity)
    return {"forward": row["units_forward"], "backward": row["units_backward"],
            "total": row["units_per_pair"]}[part]


def predicted_seconds(backend: str, dtype: str, shrink: bool, q: int, n: int, c: int,
                      part: str = "total", gpu: str = "H200", similarity: str = "cosine") -> float:
    """Roofline time of one call at (Q, N, C): a lower bound, for budgets."""
    return q * n * roofline_seconds_per_pair(find(backend, dtype, shrink, c, similarity), gpu, part)


def format_table(rows: List[dict]) -> str:
    lines = ["| backend | plan | dtype | shrink | C | units fwd + bwd | bytes/pair "
             "| H100 ps/pair | H200 ps/pair |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        roof = r["roofline_ps_per_pair"] or {}
        lines.append(f"| {r['backend']} | {r['plan']}{'' if r['default'] else ' (alt)'} "
                     f"| {r['dtype']} | {r['shrink']} | {r['channels']} "
                     f"| {r['units_forward']} + {r['units_backward']} = {r['units_per_pair']} "
                     f"| {r['bytes_per_pair']:g} | {roof.get('H100', '-')} | {roof.get('H200', '-')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.costs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--similarity", choices=("cosine", "dot"), default="cosine")
    parser.add_argument("--shape", metavar="Q,N",
                        help="add each row's roofline milliseconds (forward + backward) at this "
                             "many queries and slots on an H200")
    args = parser.parse_args(argv)
    rows = cost_rows(args.similarity)
    if args.shape:
        q, n = (int(v) for v in args.shape.split(","))
        for r in rows:
            if r["roofline_ps_per_pair"]:
                r["roofline_ms_h200"] = round(r["roofline_ps_per_pair"]["H200"] * q * n / 1e9, 3)
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
