"""The benchmark suite (bench/) in fast mode, so that it cannot rot: every case runs with tiny
shapes and 2 rounds, pytest-benchmark writes its JSON, and the report turns it into markdown."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_suite_fast_mode_and_report(tmp_path):
    pytest.importorskip("pytest_benchmark")
    run_json = tmp_path / "run.json"
    env = dict(os.environ, BENCH_FAST="1")
    bench = subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "-q", "-p", "no:cacheprovider",
         f"--benchmark-json={run_json}", "--benchmark-columns=median,rounds"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert bench.returncode == 0, bench.stdout[-6000:] + bench.stderr[-3000:]

    benchmarks = json.loads(run_json.read_text())["benchmarks"]
    cases = {b["extra_info"]["case"] for b in benchmarks}
    assert {"eager", "compile"} <= cases
    assert {b["extra_info"]["mode"] for b in benchmarks} == {"forward", "backward", "full"}
    assert any(b["extra_info"]["sweep"] for b in benchmarks)
    for b in benchmarks:
        assert b["stats"]["rounds"] >= 2 and b["stats"]["median"] > 0
        e = b["extra_info"]
        assert e["model_flops"] > 0
        # Each case's own count (bench/costs.py) is at least the model's: nothing does less.
        assert (e["own_flops"] is None) == (e["case"] == "sdpa")
        assert e["case"] == "sdpa" or e["own_flops"] >= e["model_flops"]
        assert "peak_mem_bytes" in b["extra_info"]

    # gpu_check's other two tables: capacity.py's own (its CPU check of the script) and the
    # tile timings in the form tune_triton_tiles.py writes them (it needs a GPU).
    capacity_json = tmp_path / "capacity.json"
    capacity = subprocess.run(
        [sys.executable, "bench/gpu/capacity.py", "--allow-cpu", "--json", str(capacity_json)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert capacity.returncode == 0, capacity.stdout + capacity.stderr
    tune_json = tmp_path / "tune.json"
    tune_json.write_text(json.dumps({"device": "test", "torch": "t", "triton": "t", "rows": [
        dict(kernel="forward", q=16, n=32, c=8, dtype="torch.bfloat16", tiles=tiles, ms=ms,
             default=default)
        for tiles, ms, default in [([64, 32, 8, 2], 0.5, True), ([32, 64, 8, 2], 0.4, False)]]
        + [dict(kernel="backward_plan", q=16, n=32, c=8, dtype="torch.bfloat16", tiles=plan,
                ms=ms, default=default)
           for plan, ms, default in [("row_term_first", 0.9, True), ("fused", 1.8, False)]]}))

    out = tmp_path / "report"
    report = subprocess.run(
        [sys.executable, "bench/report.py", str(run_json), "--out-dir", str(out), "--summary",
         "--capacity", str(capacity_json), "--tune", str(tune_json)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stdout + report.stderr
    (md,) = out.glob("*.md")
    text = md.read_text()
    assert "| forward | eager python_ref |" in text and "Scaling with N" in text
    assert "## Capacity" in text and "| cpp |" in text
    assert "| forward | 16 × 32 × 8 | bfloat16 | (32, 64, 8, 2) | 0.400 | 1.00 |" in text
    assert "| forward | 16 × 32 × 8 | bfloat16 | (64, 32, 8, 2) * | 0.500 | 1.25 |" in text
    assert "| backward_plan | 16 × 32 × 8 | bfloat16 | fused | 1.800 | 2.00 |" in text
    assert "median ms" in report.stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert len(list(out.glob("*.png"))) == 1


def test_tile_tuning_candidates_come_from_the_committed_sweeps(monkeypatch):
    """bench/gpu/tune_triton_tiles.py runs only on a GPU: its candidate lists, read from the
    committed resource sweeps, are checked here."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "bench" / "gpu"))
    import tune_triton_tiles
    from memae_fused.backends import triton as triton_kernels

    gpu = torch.device("cuda")
    for plan in tune_triton_tiles.PLANS:
        assert tune_triton_tiles.kernels(plan)[0] == "backward_plan"  # the plans timed first
    for kernel in ("forward", "backward_query", "backward_row_term", "backward_dquery",
                   "backward_memory"):
        pick = triton_kernels.tile_config(kernel, 256, torch.bfloat16, gpu)
        shapes = tune_triton_tiles.candidates(kernel, "bfloat16", 256, pick)
        assert shapes[0] == pick and len(shapes) == len(set(shapes)) > 2, (kernel, shapes)
        areas = [t.block_q * t.block_n for t in shapes[2:]]
        assert areas == sorted(areas, reverse=True), (kernel, shapes)
    # The C = 256 backward has no spill-free wgmma tile: a spilling one is timed second.
    shapes = tune_triton_tiles.candidates("backward_query", "bfloat16", 256,
                                          triton_kernels.tile_config("backward_query", 256,
                                                                    torch.bfloat16, gpu))
    assert shapes[1] == (64, 16, 8, 2), shapes


def test_tile_tuning_main_times_every_plan_then_the_current_plans_kernels(monkeypatch, tmp_path):
    """tune_triton_tiles.main's plan of work, which only a GPU would run, with the timing
    stubbed: every backward plan first (timed even with no budget left), then the current
    plan's kernels, each within its share of the budget, every timing written out."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "bench" / "gpu"))
    import tune_triton_tiles
    from memae_fused.backends import triton as triton_kernels

    timed = []

    def fake_time(kernel, option, q, n, c, dtype):
        timed.append((kernel, option))
        return 2.0 if option == "fused" else 1.0

    monkeypatch.setattr(tune_triton_tiles, "time_kernel", fake_time)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "stub")
    out = tmp_path / "tune.json"
    shape = ["--quick", "--shapes", "16384,2000,256", "--out", str(out)]
    assert tune_triton_tiles.main(shape + ["--budget", "600"]) == 0
    plan = triton_kernels.backward_query_plan(256, torch.bfloat16, torch.device("cuda"))
    assert timed[:3] == [("backward_plan", plan)] + [
        ("backward_plan", p) for p in tune_triton_tiles.PLANS if p != plan]
    assert [k for k in dict.fromkeys(kernel for kernel, _ in timed)] == list(
        tune_triton_tiles.kernels(plan))
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == len(timed) and rows[0]["tiles"] == plan and rows[0]["default"]
    # With no budget, the plans are still timed and nothing else.
    timed.clear()
    assert tune_triton_tiles.main(shape + ["--budget", "0"]) == 0
    assert [kernel for kernel, _ in timed] == ["backward_plan"] * 3
