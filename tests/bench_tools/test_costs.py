"""bench/costs.py, the cost model: its unit counts against a hand count, the Triton counts
against the matrix products the kernels perform under the interpreter, and its JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import costs
from memae_fused import memory_read
from memae_fused.backends import triton as triton_kernels

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("backend, dtype, shrink, channels, plan, units", [
    # eager: logits + read; d zq, d mk, g·mvᵀ, d mv
    ("eager", "bfloat16", True, 256, None, (2, 4)),
    ("compile", "float32", False, 64, None, (2, 4)),
    # cpp: the backward recomputes the logits
    ("cpp", "float32", True, 256, None, (2, 5)),
    # Triton with shrinkage: logits twice + read; logits, g·mvᵀ, X, Y; logits, g·mvᵀ, d mk, d mv
    ("triton", "bfloat16", True, 128, None, (3, 8)),
    # at C = 256 in 16-bit and TF32 Y = sum w·mk comes from the forward's first sweep:
    # logits, Y, logits, read; logits, g·mkᵀ, X (R beside it); memory-major 4
    ("triton", "bfloat16", True, 256, None, (4, 7)),
    ("triton", "tf32", True, 256, None, (4, 7)),
    ("triton", "bfloat16", True, 256, "fused", (3, 8)),
    # R in a sweep of its own: logits, g·mvᵀ; logits, g·mkᵀ, d zq
    ("triton", "bfloat16", True, 256, "row_term_first", (3, 9)),
    # The atomic plan: d(query) from the memory-major sweep (5), after R's sweep (2)
    ("triton", "bfloat16", False, 256, "atomic", (2, 5)),
    ("triton", "bfloat16", True, 256, "atomic", (3, 7)),
    # Triton without shrinkage: one online sweep; logits, g·mkᵀ, d zq; memory-major 4
    ("triton", "bfloat16", False, 256, None, (2, 7)),
    ("triton", "float32", False, 512, None, (2, 7)),
    # CUDA with shrinkage: logits twice + read; logits, g·mvᵀ, X, Y; logits, g·mvᵀ, d mk, d mv
    ("cuda", "bfloat16", True, 256, None, (3, 8)),
    # CUDA at lam = 0: one online sweep; X alone (R' = 0); the memory-major 4
    ("cuda", "bfloat16", False, 256, None, (2, 7)),
    # per extra 256-channel (16-bit) or 128-channel (float32) chunk the logits again
    ("cuda", "bfloat16", False, 512, None, (3, 11)),
    ("cuda", "float32", True, 256, None, (5, 12)),
])
def test_units_match_a_hand_count(backend, dtype, shrink, channels, plan, units):
    row = costs.find(backend, dtype, shrink, channels, plan=plan)
    assert (row["units_forward"], row["units_backward"]) == units
    assert row["units_per_pair"] == sum(units)


def test_bytes_and_roofline_follow_their_rules():
    # Triton bf16, lam = 0, C = 64, cosine: forward_online loads keys and values per swept
    # slot, dquery one tile, the memory-major sweep queries and gradients; each divided by
    # the owned rows of its tile.
    row = costs.find("triton", "bfloat16", False, 64)
    gpu = torch.device("cuda")
    expected = 0.0
    for kernel, tiles_loaded, owner in (("forward", 2, "q"), ("backward_dquery", 1, "q"),
                                        ("backward_memory", 2, "n")):
        tiles = triton_kernels.tile_config(kernel, 64, torch.bfloat16, gpu)
        expected += tiles_loaded * 64 * 2 / (tiles.block_q if owner == "q" else tiles.block_n)
    assert row["bytes_per_pair"] == pytest.approx(expected)
    flops_s = 9 * 2 * 64 / 989e12
    bytes_s = expected / 4.8e12
    assert row["roofline_ps_per_pair"]["H200"] == pytest.approx(1e12 * max(flops_s, bytes_s),
                                                                rel=1e-4)
    # Eager moves Q x N tensors; shrinkage adds several.
    eager = costs.find("eager", "bfloat16", False, 64)["bytes_per_pair"]
    assert costs.find("eager", "bfloat16", True, 64)["bytes_per_pair"] > eager > 10
    assert costs.find("eager", "float32", False, 64)["bytes_per_pair"] == 2 * eager


@pytest.mark.skipif(not triton_kernels.triton_interpret_enabled(), reason="needs the interpreter")
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("shrink, plan", [(False, None), (True, None), (True, "row_term_first"),
                                          (True, "forward_y"), (False, "atomic"),
                                          (True, "atomic")])
def test_triton_counts_are_what_the_kernels_compute(monkeypatch, counted_products, shrink, plan,
                                                    similarity):
    # Shapes that are whole interpreter tiles (32 x 64, C = BLOCK_C), one program per block,
    # no split: the products then add up to units x Q x N x C exactly.
    q, n, c = 64, 128, 64
    if plan == "atomic":
        monkeypatch.setenv(triton_kernels.ATOMIC_BACKWARD_ENV, "1")
    elif plan is not None:
        monkeypatch.setattr(triton_kernels, "backward_query_plan", lambda *args: plan)
    gen = torch.Generator().manual_seed(3)
    query = torch.randn(q, c, generator=gen, requires_grad=True)
    memory = torch.randn(n, c, generator=gen, requires_grad=True)
    lam = 0.5 / n if shrink else 0.0
    res = memory_read(query, memory, shrink_thres=lam, similarity=similarity, temperature=0.5,
                      backend="triton")
    forward = counted_products["mac"] / (q * n * c)
    (res.read.sum() + res.entropy.sum()).backward()
    backward = counted_products["mac"] / (q * n * c) - forward
    plans = costs.triton_plans("float32", shrink, c)
    # The interpreter's launcher takes the GPU's plan but at lam > 0 the fused sweep.
    name = plan or ("fused" if shrink else "dquery_only")
    model = costs.find("triton", "float32", shrink, c, similarity, plan=name)
    assert name in [p["plan"] for p in plans]
    assert (forward, backward) == (model["units_forward"], model["units_backward"])


def test_command_prints_json_with_every_field():
    out = subprocess.run([sys.executable, "-m", "bench.costs", "--json", "--shape", "65536,100000"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=True).stdout
    rows = json.loads(out)
    fields = {"backend", "plan", "dtype", "shrink", "channels", "units_per_pair",
              "bytes_per_pair"}
    assert all(fields <= set(r) for r in rows)
    seen = {(r["backend"], r["dtype"], r["shrink"], r["channels"]) for r in rows}
    for backend in costs.BACKENDS:
        for channels in costs.CHANNELS:
            assert (backend, "float32", True, channels) in seen
            assert (backend, "float32", False, channels) in seen
    triton_bf16 = [r for r in rows if r["backend"] == "triton" and r["dtype"] == "bfloat16"
                   and r["shrink"] and r["channels"] == 256]
    assert {r["plan"] for r in triton_bf16} == {"fused", "forward_y", "row_term_first", "atomic"}
    assert sum(r["default"] for r in triton_bf16) == 1
    assert all(r["roofline_ms_h200"] > 0 for r in rows if r["backend"] != "cpp")
