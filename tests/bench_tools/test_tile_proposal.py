"""bench/gpu/triton_resources.py's rule for proposing tile shapes from compiled resources:
a shape counts with its worst result over Triton versions and launch variants."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def resources(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.syspath_prepend(str(ROOT / "bench" / "gpu"))
    import triton_resources

    return triton_resources


def result(tiles, stack=0, shared=1000, regs=200, mma="wgmma", **kw):
    return dict(mode="bfloat16", kernel="forward", block_c=256, tiles=list(tiles), stack=stack,
                shared=shared, regs=regs, mma=mma, **kw)


def test_worst_result_over_runs_decides(resources):
    results = [
        # The largest: spill-free with one Triton, spilling with the other.
        result((128, 64, 8, 2)), result((128, 64, 8, 2), stack=24),
        # wgmma with one, mma.sync with the other: no longer counts as wgmma.
        result((64, 64, 8, 2)), result((64, 64, 8, 2), mma="mma.sync"),
        # Spill-free wgmma in both, smaller.
        result((64, 32, 8, 2)), result((64, 32, 8, 2), regs=250),
        # Over the shared-memory limit in one run.
        result((128, 128, 8, 2)), result((128, 128, 8, 2), shared=10**6),
        # Failed to compile once.
        result((128, 32, 8, 2)), dict(mode="bfloat16", kernel="forward", block_c=256,
                                      tiles=[128, 32, 8, 2], error="boom"),
    ]
    picks = resources.propose(results)
    assert picks == {("bfloat16", "forward", 256): ((64, 32, 8, 2), 0, "wgmma")}
    # Where nothing is spill-free, the least spill within the allowance.
    picks = resources.propose([result((64, 64, 8, 2), stack=200),
                               result((32, 32, 8, 2), stack=40, mma="mma.sync")])
    assert picks == {("bfloat16", "forward", 256): ((32, 32, 8, 2), 40, "other")}
