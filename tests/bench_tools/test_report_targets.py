"""bench/report.py's targets table: the issues' performance targets judged on a run, checked
on benchmark records built here (the GPU runs they are written for need a GPU)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def report(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import report
    return report


def record(device, dtype, shape, mode, case, median_ms, peak_mib=None):
    q, n, c = shape
    return {"stats": {"median": median_ms / 1e3},
            "extra_info": dict(device=device, dtype=dtype, q=q, n=n, c=c, mode=mode, case=case,
                               sweep=False, model_flops=1, peak_mem_bytes=(
                                   None if peak_mib is None else peak_mib * 2**20))}


def test_gpu_targets_are_judged_per_shape(report):
    big, small = (16384, 20000, 256), (16384, 2000, 256)
    times = {  # (shape, mode, case) -> ms
        (big, "full", "eager"): 30.0, (big, "full", "compile"): 14.0,
        (big, "full", "triton"): 8.0, (big, "full", "cuda"): 11.0,
        (big, "forward", "triton"): 3.0, (big, "forward", "sdpa"): 1.0,
        (small, "full", "eager"): 3.0, (small, "full", "compile"): 2.0,
        (small, "full", "triton"): 2.5,
    }
    benchmarks = [record("cuda", "bfloat16", shape, mode, case, ms)
                  for (shape, mode, case), ms in times.items()]
    rows = {(target, shape): (measured, met)
            for _, target, shape, measured, met in report.target_rows(benchmarks)}
    big_id, small_id = "bfloat16 16384x20000x256", "bfloat16 16384x2000x256"
    assert rows["triton fwd+bwd >= 3x eager (N >= 10000)", big_id] == ("3.75x", True)
    assert rows["triton fwd+bwd >= 2x torch.compile (N >= 10000)", big_id] == ("1.75x", False)
    # N < 10000: only "never slower" applies, and here triton is slower than torch.compile.
    assert ("triton fwd+bwd >= 3x eager (N >= 10000)", small_id) not in rows
    assert rows["triton fwd+bwd never slower than eager or torch.compile", small_id][1] is False
    assert rows["triton fwd+bwd never slower than eager or torch.compile", big_id][1] is True
    assert rows["triton forward within 2x of SDPA (bf16)", big_id] == ("3.00x its time", False)
    assert rows["cuda fwd+bwd within 1.5x of triton", big_id] == ("1.38x its time", True)
    assert rows["cuda fwd+bwd faster than torch.compile", big_id] == ("1.27x", True)
    # A target whose cases were not run is not judged.
    assert ("cuda fwd+bwd within 1.5x of triton", small_id) not in rows


def test_float32_is_not_held_to_the_attention_ceiling(report):
    shape = (4096, 100000, 256)
    benchmarks = [record("cuda", "float32", shape, "forward", case, ms)
                  for case, ms in (("triton", 9.0), ("sdpa", 1.0))]
    assert report.target_rows(benchmarks) == []


def test_cpu_targets_and_capacity(report):
    benchmarks = [record("cpu", "float32", (2048, 50000, 256), "full", "eager", 7000, 4400),
                  record("cpu", "float32", (2048, 50000, 256), "full", "cpp", 2100, 400),
                  record("cpu", "float32", (4096, 2000, 256), "full", "eager", 300),
                  record("cpu", "float32", (4096, 2000, 256), "full", "cpp", 250)]
    rows = {(t, s): (m, ok) for _, t, s, m, ok in report.target_rows(benchmarks)}
    assert rows["cpp fwd+bwd peak memory >= 10x lower than eager", "float32 2048x50000x256"] \
        == ("11.0x lower", True)
    assert rows["cpp fwd+bwd >= 1.5x eager", "float32 4096x2000x256"] == ("1.20x", False)

    gib = 2**30
    capacity = {"q": 65536, "n": 100000, "c": 256, "dtype": "bfloat16",
                "device_memory_bytes": 140 * gib,
                "eager": {"extrapolated_peak_bytes": 900 * gib, "fits_on_device": False},
                "backends": {"triton": {"forward": {"peak_bytes": 9 * gib, "finite": True},
                                        "forward_backward_extrapolated": {"peak_bytes": 20 * gib}},
                             "cuda": {"forward": {"peak_bytes": 9 * gib, "finite": True},
                                      "error": "out of memory: tried to allocate"}}}
    target = "fwd+bwd fits where eager cannot (peak extrapolated from Q/16, Q/8)"
    verdicts = {r[1]: r[4] for r in report.capacity_target_rows(capacity)}
    assert verdicts == {f"triton {target}": True, f"cuda {target}": False}
    # capacity.py's CPU check of itself has no device memory to judge against.
    assert report.capacity_target_rows(dict(capacity, device_memory_bytes=None)) == []
