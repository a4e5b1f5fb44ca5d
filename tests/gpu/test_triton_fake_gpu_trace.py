"""torch.compile's view of the Triton ops on a GPU, checked without one (tests/gpu/fake_gpu_trace.py
traces them on fake CUDA tensors for an sm_90 target). On a GPU, test_triton.py's
test_compile_fullgraph_captures_the_op compiles them for real."""

import json
import math
import pathlib
import subprocess
import sys

import pytest
import torch

SCRIPT = pathlib.Path(__file__).with_name("fake_gpu_trace.py")

def expected_writes(launch):
    """What a kernel writes (the forward kernel by its SPLIT mode, the query-major backward by
    its pass, the memory-major backward by whether the keys are the values); the rest of its
    tensor arguments it only reads."""
    kernel = launch["kernel"]
    y = {"Y"} if launch["save_y"] else set()
    if kernel == "_fwd_kernel":
        return {"PART_ACC", "PART_STATS"} if launch["split"] else {"READ", "ENT", "STATS"} | y
    if kernel == "_bwd_memory_kernel":
        return {"PART_DMK"} if launch["shared_kv"] else {"PART_DMK", "PART_DMV"}
    if kernel == "_bwd_query_kernel":
        return {"fused": {"PART_R", "PART_X", "PART_Y"}, "row_term": {"PART_R"},
                "dquery": {"PART_X"}, "x_and_r": {"PART_R", "PART_X"}}[launch["pass"]]
    return {"_row_max_sum_kernel": {"PART_MAX", "PART_SUM"} | {"PART_" + v for v in y}}[kernel]


pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="on a GPU the ops are compiled for real (test_triton.py)")


@pytest.fixture(scope="module")
def traces():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 3 * 4 * 2 * 2  # shapes x dtypes x similarities x thresholds
    return records


def _label(record):
    return (f"{tuple(record['shape'])} {record['dtype']} "
            f"{'cosine' if record['cosine'] else 'dot'} lam={record['shrink_thres']}")


def test_every_launch_is_traced_into_with_its_writes_known(traces):
    for record in traces:
        label = _label(record)
        # Fully decomposed: no opaque custom op left for the compiler.
        assert record["custom_ops"] == [], label
        # Triton's front end analysed every kernel for sm_90: a failure there is logged and
        # makes torch clone every tensor argument.
        assert record["warnings"] == [], (label, record["warnings"][:2])
        for launch in record["launches"]:
            assert launch["wrapper"] == "triton_kernel_wrapper_functional", label
            written = set(launch["written"])
            assert written == expected_writes(launch), (label, launch)


def test_launch_sequence_and_splits(traces):
    sms = 132
    for record in traces:
        q, n, _ = record["shape"]
        kernels = [launch["kernel"] for launch in record["launches"]]
        grids = {launch["kernel"]: launch["grid"][0] for launch in record["launches"]}
        shrink = record["shrink_thres"] > 0
        forward = next(launch for launch in record["launches"] if launch["kernel"] == "_fwd_kernel")
        split_forward = forward["split"]
        # The query-major backward: at lam = 0 one dquery pass (R = 0); with shrinkage at
        # C = 256 in 16-bit and TF32 the x_and_r pass with Y from the forward, else fused.
        forward_y = shrink and q != 300 and record["dtype"] != "float32"
        query_passes = ["x_and_r"] if forward_y else ["fused"] if shrink else ["dquery"]
        # lam = 0 reads in one sweep, split or not; with shrinkage the split path finds the
        # row max and sum in a launch of its own (with Y for the forward_y plan).
        expected = (["_row_max_sum_kernel"] if split_forward and shrink else []) + [
            "_fwd_kernel", *["_bwd_query_kernel"] * len(query_passes), "_bwd_memory_kernel"]
        assert kernels == expected, _label(record)
        first = record["launches"][0]
        assert bool(first["save_y"]) == forward_y, _label(record)
        query_launches = [launch for launch in record["launches"]
                          if launch["kernel"] == "_bwd_query_kernel"]
        assert [launch["pass"] for launch in query_launches] == query_passes, _label(record)

        if q == 16384:
            # Many queries fill the GPU unsplit.
            assert not split_forward and grids["_fwd_kernel"][0] >= sms, _label(record)
            assert all(launch["grid"][0][1] == 1 for launch in query_launches), _label(record)
        if q == 4:
            # One query block: the memory is split across the grid to fill the SMs (whole
            # tiles per split round the count down a little).
            assert split_forward and grids["_fwd_kernel"][1] >= 0.9 * sms, _label(record)
            # The query-major passes: as few slot tiles per program as an even spread over
            # every SM would give (splits take whole tiles, so wide tiles leave a few SMs idle
            # at no cost in time).
            for launch in query_launches:
                tiles = math.ceil(n / launch["block_n"])
                per_split = math.ceil(tiles / launch["grid"][0][1])
                assert per_split == math.ceil(tiles / sms), (_label(record), launch["pass"])
