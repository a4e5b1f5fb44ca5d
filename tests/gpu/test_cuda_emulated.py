"""The CUDA op's kernels and host code (csrc/cuda/memory_read_cuda.cu), compiled for the CPU
against tests/gpu/cuda_emulation and run on CPU tensors, against python_ref.

A GPU is rare here, so this is where the CUDA kernels' logic is checked on every machine:
indexing, tiling, the split sweeps and their combines, the shared-memory layout (filled with
NaN at each block's start), barriers (one that not every thread reaches is an error) and
WMMA's alignment rules. Outputs and scratch tensors come from at::empty filled with NaN
(deterministic mode), so an element a kernel fails to write shows up. What the emulation
cannot show (timing, real tensor-core rounding, races between threads that run between the
same two barriers, beyond what the reversed and warp-at-a-time schedules expose) is left to
the GPU tests in test_cpp_op.py."""

import itertools
import os
import platform
import subprocess
import sys

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from cases import draw, draw_case, safe_threshold, weights
from cuda_emulation import ROOT, load_emulated
from memae_fused.backends import cpp as cpp_op
from op_checks import (CUDA_SHAPES, TEMPERATURE, compare_results, draw_safe,
                       online_entropy_slack)

H100_SHARED_OPTIN = 232448  # bytes per block
A100_SHARED_OPTIN = 166912
SM86_SHARED_OPTIN = 101376

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux", reason="the emulation's fibers are written for Linux")

TOLERANCES = {torch.float64: 1e-9, torch.float32: 2e-5, torch.bfloat16: 1e-2,
              torch.float16: 1e-2}
DTYPE_IDS = {torch.float64: "f64", torch.float32: "f32", torch.bfloat16: "bf16",
             torch.float16: "f16"}


@pytest.fixture(scope="module")
def cuda_emulated():
    return load_emulated()


@pytest.fixture
def emulated(cuda_emulated):
    """The module on an emulated H100 (132 SMs), at::empty filling with NaN."""
    cuda_emulated.configure(multiprocessors=132, shared_optin_bytes=H100_SHARED_OPTIN,
                            reverse_schedule=False)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield cuda_emulated
    torch.use_deterministic_algorithms(was_deterministic)


def compare(op, query, memory, lam, similarity, tol, seed=0):
    """The emulated op (inputs in their dtype) against python_ref, as test_cpp_op compares the
    real one."""
    cosine = similarity == "cosine"

    def run_op(grad_read, grad_entropy):
        read, entropy, stats = op.memory_read_fwd(query, memory, lam, cosine, TEMPERATURE)
        return (read, entropy, *op.memory_read_bwd(
            grad_read.to(query.dtype), grad_entropy.to(query.dtype), query, memory, read,
            entropy, stats, lam, cosine, TEMPERATURE))

    return compare_results(run_op, query, memory, lam, similarity, tol, seed,
                           entropy_slack=online_entropy_slack(memory.shape[0], lam))


def _sweep_cases():
    """Every CUDA test shape in float64 and float32; the 16-bit (WMMA) engine on all but the
    largest, which it takes once."""
    for shape in CUDA_SHAPES:
        for dtype in TOLERANCES:
            if dtype.itemsize == 2 and shape == max(CUDA_SHAPES):
                continue
            yield pytest.param(shape, dtype, id=f"{'x'.join(map(str, shape))}-{DTYPE_IDS[dtype]}")
    yield pytest.param((200, 1000, 256), torch.bfloat16, id="200x1000x256-bf16")


@pytest.mark.parametrize("shape,dtype", list(_sweep_cases()))
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("shrink_factor", [0.0, 2.0])
# 132 SMs: the small shapes split every sweep (grid.z); 1 SM: nothing splits.
@pytest.mark.parametrize("multiprocessors", [132, 1], ids=["split", "unsplit"])
def test_matches_reference(emulated, shape, dtype, similarity, shrink_factor, multiprocessors):
    if shape == max(CUDA_SHAPES) and dtype.itemsize == 2 and (similarity, shrink_factor) != (
            "cosine", 2.0):
        pytest.skip("the 16-bit engine takes the largest shape in one configuration")
    emulated.configure(multiprocessors=multiprocessors, shared_optin_bytes=H100_SHARED_OPTIN,
                       reverse_schedule=False)
    query, memory, lam = draw_safe(*shape, shrink_factor=shrink_factor, similarity=similarity,
                                   dtype=dtype)
    compare(emulated, query, memory, lam, similarity, TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("multiprocessors", [132, 1], ids=["split", "unsplit"])
@pytest.mark.parametrize("order", ["ascending", "descending"])
def test_online_forward_rescales_as_the_max_grows(emulated, dtype, multiprocessors, order):
    """lam = 0's one-sweep forward: slots whose logits rise with their index make every row's
    running max grow in every 64-slot tile (each tile rescales the read accumulated so far,
    through shared memory on the WMMA path); falling ones never after the first."""
    emulated.configure(multiprocessors=multiprocessors, shared_optin_bytes=H100_SHARED_OPTIN,
                       reverse_schedule=False)
    gen = torch.Generator().manual_seed(5)
    n, c = 300, 40
    query = torch.rand(45, c, generator=gen, dtype=torch.float64) + 0.5
    base = torch.rand(n, c, generator=gen, dtype=torch.float64) + 0.5
    gain = torch.linspace(0.2, 0.6, n, dtype=torch.float64)[:, None]
    memory = base / base.sum(1, keepdim=True) * (gain if order == "ascending" else gain.flip(0))
    compare(emulated, query.to(dtype), memory.to(dtype), 0.0, "dot", TOLERANCES[dtype])


@pytest.mark.parametrize("shrink", [False, True], ids=["lam0", "shrink"])
@pytest.mark.parametrize("channels", [256, 512])
def test_wmma_work_matches_the_cost_model(emulated, shrink, channels):
    """The tensor-core multiply-adds of a forward and of a backward, in Q x N x C units, are
    bench/costs.py's count for the CUDA kernels: whole tiles (64 queries, 128 slots, C a
    multiple of the 256-column chunk) and one SM, so nothing is padded or split."""
    from bench import costs

    emulated.configure(multiprocessors=1, shared_optin_bytes=H100_SHARED_OPTIN,
                       reverse_schedule=False)
    q, n = 64, 128
    query, memory, lam = draw_safe(q, n, channels, shrink_factor=2.0 if shrink else 0.0,
                                   similarity="dot", dtype=torch.bfloat16)
    emulated.wmma_multiply_adds(reset=True)
    read, entropy, stats = emulated.memory_read_fwd(query, memory, lam, False, TEMPERATURE)
    forward = emulated.wmma_multiply_adds(reset=True) / (q * n * channels)
    emulated.memory_read_bwd(torch.randn_like(read), torch.randn_like(entropy), query, memory,
                             read, entropy, stats, lam, False, TEMPERATURE)
    backward = emulated.wmma_multiply_adds(reset=True) / (q * n * channels)
    row = costs.find("cuda", "bfloat16", shrink, channels, "dot")
    assert (forward, backward) == (row["units_forward"], row["units_backward"])


@settings(max_examples=60, deadline=None)
@given(
    q=st.integers(1, 80), n=st.integers(1, 200), c=st.integers(0, 300),
    similarity=st.sampled_from(["cosine", "dot"]),
    shrink_factor=st.sampled_from([0.0, 0.7, 1.5, 3.0]),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    multiprocessors=st.sampled_from([1, 3, 132]),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_shapes_match_reference(cuda_emulated, q, n, c, similarity, shrink_factor, dtype,
                                       multiprocessors, seed):
    """Any shape, on a GPU with few or many SMs (which decides the splits)."""
    if n == 1 or c == 0:
        shrink_factor = min(shrink_factor, 0.5)  # every weight is 1/N: keep them
    try:
        query, memory, lam = draw_case(q, n, c, shrink_factor=shrink_factor,
                                       similarity=similarity, temperature=TEMPERATURE,
                                       dtype=dtype, seed=seed)
    except AssertionError:
        assume(False)  # no threshold with a margin for this draw
    cuda_emulated.configure(multiprocessors=multiprocessors,
                            shared_optin_bytes=H100_SHARED_OPTIN, reverse_schedule=False)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        compare(cuda_emulated, query, memory, lam, similarity, TOLERANCES[dtype], seed=seed)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=DTYPE_IDS.get)
@pytest.mark.parametrize("multiprocessors", [132, 1], ids=["split", "unsplit"])
@pytest.mark.parametrize("shrink_factor", [0.0, 2.0], ids=["online", "shrinking"])
def test_every_schedule_gives_identical_results(emulated, dtype, multiprocessors,
                                                shrink_factor):
    """Threads between two barriers run in the opposite order, cp.async copies land when
    issued instead of at their wait, and warps run one at a time instead of round robin: a
    missing barrier or wait (a read of shared memory another thread has not written yet, or
    has already overwritten) changes the results; correct code gives the same bits in every
    run. C = 104 makes four channel chunks, so that a copy into the double-buffered chunks'
    other stage can meet a reader, and is a multiple of 8, so that 16-bit tiles are copied
    by cp.async too."""
    query, memory, lam = draw_safe(45, 150, 104, shrink_factor=shrink_factor,
                                   similarity="dot", dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    grad_read = torch.randn(query.shape, generator=gen).to(dtype)
    grad_entropy = torch.randn(query.shape[0], generator=gen).to(dtype)
    results = []
    for reverse, early_copies, serial_warps in itertools.product((False, True), repeat=3):
        emulated.configure(multiprocessors=multiprocessors,
                           shared_optin_bytes=H100_SHARED_OPTIN, reverse_schedule=reverse,
                           early_copies=early_copies, serial_warps=serial_warps)
        read, entropy, stats = emulated.memory_read_fwd(query, memory, lam, False,
                                                        TEMPERATURE)
        results.append((read, entropy, *emulated.memory_read_bwd(
            grad_read, grad_entropy, query, memory, read, entropy, stats, lam, False,
            TEMPERATURE)))
    for run in results[1:]:
        for first, other in zip(results[0], run):
            assert torch.equal(first, other)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
def test_rows_below_threshold_and_zero_rows(emulated, similarity, dtype):
    query, memory = draw_safe(20, 30, 16, shrink_factor=0.0, similarity=similarity,
                              dtype=dtype)[:2]
    # lam = 1 drops every slot of every row: zeros everywhere, gradients included.
    for t in compare(emulated, query, memory, 1.0, similarity, 1e-6):
        assert torch.equal(t, torch.zeros_like(t))
    query[3] = 0
    memory[7] = 0
    compare(emulated, query, memory, 0.0, similarity, TOLERANCES[dtype])


@pytest.mark.parametrize("side", ["queries", "slots"])
@pytest.mark.parametrize("shrink_factor", [0.0, 2.0])
def test_many_rows_on_few_multiprocessors(emulated, side, shrink_factor):
    """Many queries: forward and query-major backward unsplit, memory-major split over Q.
    Many slots: the reverse (as test_cuda_unsplit_sweeps does on a real GPU)."""
    emulated.configure(multiprocessors=4, shared_optin_bytes=H100_SHARED_OPTIN,
                       reverse_schedule=False)
    gen = torch.Generator().manual_seed(7)
    query, memory = draw(40, 30, 24, similarity="cosine", seed=11)
    many = 2 * 4 * 32 + 37
    if side == "queries":
        query = query[torch.randint(0, 40, (many,), generator=gen)]
    else:
        memory = memory[torch.randint(0, 30, (many,), generator=gen)]
    lam = 0.0
    if shrink_factor:
        lam = safe_threshold(weights(query, memory, "cosine", TEMPERATURE),
                             shrink_factor / memory.shape[0])
    compare(emulated, query.float(), memory.float(), lam, "cosine", 2e-5)


@pytest.mark.parametrize("lam", [0.0, 0.05, 0.5])  # uniform weights 1/9: all kept / all dropped
def test_zero_channels(emulated, lam):
    query, memory = torch.randn(6, 0, dtype=torch.float64), torch.randn(9, 0, dtype=torch.float64)
    read, entropy, grad_query, grad_memory = compare(emulated, query, memory, lam, "dot", 1e-12)
    assert read.shape == (6, 0) and grad_query.shape == (6, 0) and grad_memory.shape == (9, 0)


def test_no_queries(emulated):
    memory = torch.randn(5, 8)
    read, entropy, stats = emulated.memory_read_fwd(torch.empty(0, 8), memory, 0.1, True, 1.0)
    assert read.shape == (0, 8) and entropy.shape == (0,) and stats.shape == (3, 0)


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=DTYPE_IDS.get)
def test_fits_an_a100(emulated, dtype):
    """Every kernel's shared memory fits an A100's 163 KiB per block."""
    emulated.configure(multiprocessors=108, shared_optin_bytes=A100_SHARED_OPTIN,
                       reverse_schedule=False)
    query, memory, lam = draw_safe(10, 70, 20, shrink_factor=2.0, similarity="cosine",
                                   dtype=dtype)
    compare(emulated, query, memory, lam, "cosine", TOLERANCES[dtype])


def test_too_little_shared_memory_is_a_clear_error(emulated):
    """On a GPU with 99 KiB per block (sm_86/sm_89) the float64 backward does not fit."""
    emulated.configure(multiprocessors=84, shared_optin_bytes=SM86_SHARED_OPTIN,
                       reverse_schedule=False)
    query, memory = torch.randn(10, 20, dtype=torch.float64), torch.randn(30, 20,
                                                                          dtype=torch.float64)
    read, entropy, stats = emulated.memory_read_fwd(query, memory, 0.0, True, 1.0)
    with pytest.raises(RuntimeError, match="backward kernel needs .* bytes of shared memory"):
        emulated.memory_read_bwd(torch.randn_like(read), torch.randn_like(entropy), query, memory,
                                 read, entropy, stats, 0.0, True, 1.0)


def test_emulator_reports_a_barrier_not_every_thread_reaches(cuda_emulated):
    with pytest.raises(RuntimeError, match="hangs: 128 threads wait in __syncthreads"):
        cuda_emulated.self_test("divergent_barrier")


def test_emulator_reports_misaligned_wmma_pointers(cuda_emulated):
    with pytest.raises(RuntimeError, match="not 256-bit aligned"):
        cuda_emulated.self_test("misaligned_wmma")


def test_emulator_exposes_a_missing_barrier(cuda_emulated):
    """A kernel that reads its neighbour's shared-memory slot without a barrier in between
    gives different results in the two schedules."""
    outputs = []
    for reverse in (False, True):
        cuda_emulated.configure(multiprocessors=1, shared_optin_bytes=H100_SHARED_OPTIN,
                                reverse_schedule=reverse)
        outputs.append(cuda_emulated.self_test("missing_barrier"))
    assert not torch.equal(outputs[0], outputs[1])


def test_emulator_lets_a_warp_run_ahead(emulated):
    """Warps one at a time: the first warp to run reads the other's slots before they are
    written (the 0xFF poison, -1), which round robin, keeping warps one warp-collective call
    apart, never shows."""
    outputs = {}
    for reverse in (False, True):
        for serial_warps in (False, True):
            emulated.configure(multiprocessors=1, shared_optin_bytes=H100_SHARED_OPTIN,
                               reverse_schedule=reverse, serial_warps=serial_warps)
            outputs[reverse, serial_warps] = emulated.self_test("warp_ahead")
    poison = torch.full((32,), -1, dtype=torch.int32)
    assert not (outputs[False, False] == -1).any() and not (outputs[True, False] == -1).any()
    assert torch.equal(outputs[False, True][:32], poison)
    assert torch.equal(outputs[True, True][32:], poison)


def test_emulator_lands_async_copies_at_their_wait(emulated):
    """cp.async (cuda_pipeline.h): the bytes are in shared memory once the thread waits for
    them, not before (a read then sees the 0xFF poison); a thread that never waits is an
    error."""
    assert torch.equal(emulated.self_test("async_copy"), torch.arange(1, 65,
                                                                       dtype=torch.int32))
    assert torch.equal(emulated.self_test("async_copy_read_early"),
                       torch.full((64,), -1, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="cp.async copies it never waited for"):
        emulated.self_test("async_copy_never_waited")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16],
                         ids=DTYPE_IDS.get)
def test_one_barrier_per_channel_chunk(emulated, dtype):
    """The logits sweep double-buffers its 32-channel chunks (cp.async copies the next chunk
    while the current one multiplies): one __syncthreads per chunk, two in float64 (one
    stage). 32 queries and 32 slots make one block and one tile in each kernel, and C <= 64
    one column chunk: 32 more channels add one chunk to the forward's one logits pass and
    to each of the backward's two (lam = 0)."""
    emulated.configure(multiprocessors=1, shared_optin_bytes=H100_SHARED_OPTIN,
                       reverse_schedule=False)
    counts = []
    for channels in (32, 64):
        query, memory, lam = draw_safe(32, 32, channels, shrink_factor=0.0, similarity="dot",
                                       dtype=dtype)
        emulated.block_barriers(reset=True)
        read, entropy, stats = emulated.memory_read_fwd(query, memory, lam, False, TEMPERATURE)
        forward = emulated.block_barriers(reset=True)
        emulated.memory_read_bwd(torch.randn_like(read), torch.randn_like(entropy), query,
                                 memory, read, entropy, stats, lam, False, TEMPERATURE)
        counts.append((forward, emulated.block_barriers(reset=True)))
    per_chunk = 2 if dtype == torch.float64 else 1
    assert (counts[1][0] - counts[0][0], counts[1][1] - counts[0][1]) == (per_chunk,
                                                                          2 * per_chunk)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("shrink_factor", [0.0, 2.0])
def test_misaligned_inputs_take_element_loads(emulated, dtype, shrink_factor):
    """Tiles are copied in 16-byte vectors where the rows allow it; inputs that start off a
    16-byte boundary (a view one element into its storage) take element loads instead."""
    query, memory, lam = draw_safe(45, 150, 64, shrink_factor=shrink_factor, similarity="dot",
                                   dtype=dtype)

    def shifted(t):
        storage = torch.empty(t.numel() + 1, dtype=t.dtype)
        view = storage[1:].view(t.shape)
        view.copy_(t)
        assert view.data_ptr() % 16 != 0
        return view

    compare(emulated, shifted(query), shifted(memory), lam, "dot", TOLERANCES[dtype])


def test_matches_cpu_kernel(emulated):
    """Forward outputs and saved statistics agree with the C++ CPU kernel's."""
    assert cpp_op.load_error() is None  # importing it registered torch.ops.memae_fused
    query, memory, lam = draw_safe(300, 2000, 128, shrink_factor=2.0, similarity="cosine",
                                   dtype=torch.float32)
    cpu = torch.ops.memae_fused.memory_read_fwd(query, memory, lam, True, TEMPERATURE)
    emulated_gpu = emulated.memory_read_fwd(query, memory, lam, True, TEMPERATURE)
    for c, g in zip(cpu, emulated_gpu):
        torch.testing.assert_close(g, c, rtol=1e-4, atol=1e-5)


def _run_under_asan(case):
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                             text=True).stdout.strip()
    if not os.path.isabs(libasan):
        pytest.skip("gcc has no libasan here")
    env = dict(os.environ, LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0")
    return subprocess.run([sys.executable, str(ROOT / "tests" / "gpu" / "cuda_emulation" / "asan_check.py"),
                           case], capture_output=True, text=True, env=env, timeout=900)


def test_kernels_stay_in_bounds_under_address_sanitizer():
    """Every kernel of the forward and backward, in every dtype, split and unsplit, odd
    shapes, C = 0 included: no access outside a tensor, shared memory or a stack."""
    result = _run_under_asan("cases")
    assert result.returncode == 0 and "all cases ran" in result.stdout, result.stderr[-4000:]


def test_address_sanitizer_catches_an_out_of_bounds_write():
    result = _run_under_asan("out_of_bounds")
    assert result.returncode != 0
    assert "AddressSanitizer: heap-buffer-overflow" in result.stderr, result.stderr[-4000:]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
def test_long_block_queries(emulated, dtype):
    # DAAD's block queries: few of them, D = 64 * 8 * 8 = 4096 channels (32 column chunks).
    query, memory, lam = draw_safe(64, 50, 4096, shrink_factor=0.0, similarity="cosine",
                                   dtype=dtype)
    compare(emulated, query, memory, lam, "cosine", TOLERANCES[dtype])
