"""The compiled op (csrc/): CPU kernel against python_ref, gradcheck, opcheck, and the CUDA
kernels against python_ref when a GPU is present (skipped otherwise)."""

import pytest
import torch

from cases import draw, safe_threshold, weights
from memae_fused import backends, memory_read
from memae_fused.backends import cpp as cpp_op
from op_checks import (CUDA_SHAPES, TEMPERATURE, compare_results, draw_safe,
                       online_entropy_slack, run)

pytestmark = pytest.mark.skipif(
    not cpp_op.has_kernel("CPU"), reason="memae_fused._C has no CPU kernel"
)
needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and cpp_op.cuda_compiled()),
    reason="needs a GPU and memae_fused._C built with CUDA",
)

def compare(query, memory, lam, similarity, backend, tol, seed=0):
    """The backend (inputs in their dtype) against python_ref in float64 on the same values
    (CUDA's lam = 0 entropy within online_entropy_slack: its forward is one sweep)."""
    slack = online_entropy_slack(memory.shape[0], lam) if backend == "cuda" else 0.0
    return compare_results(
        lambda grad_read, grad_entropy: run(query, memory, lam, similarity, backend, grad_read,
                                            grad_entropy),
        query, memory, lam, similarity, tol, seed, entropy_slack=slack)


SHAPES = [
    (1, 7, 5),      # one query
    (37, 53, 17),   # nothing a multiple of a block
    (130, 1, 8),    # one slot
    (5, 20, 1),     # one channel
    (70, 300, 64),
    (9, 40, 512),
    (129, 257, 33),
    (600, 90, 24),  # several query blocks per thread, per-thread gradient accumulators
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("shrink_factor", [0.0, 2.0])
def test_cpu_float64_matches_reference(shape, similarity, shrink_factor):
    query, memory, lam = draw_safe(*shape, shrink_factor=shrink_factor, similarity=similarity)
    compare(query, memory, lam, similarity, "cpp", 1e-9)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_rows_below_threshold_give_zeros_and_zero_grads(similarity):
    query, memory, _ = draw_safe(6, 9, 4, shrink_factor=0.0, similarity=similarity)
    # With N >= 2 every weight is < 1, so lam = 1 drops every slot of every row.
    read, entropy, grad_query, grad_memory = compare(query, memory, 1.0, similarity, "cpp", 1e-12)
    for t in (read, entropy, grad_query, grad_memory):
        assert torch.equal(t, torch.zeros_like(t))


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("shrink", [False, True])
def test_zero_query_and_memory_rows(similarity, shrink):
    query, memory = draw_safe(8, 12, 6, shrink_factor=0.0, similarity=similarity)[:2]
    query[2] = 0
    memory[5] = 0
    lam = safe_threshold(weights(query, memory, similarity, TEMPERATURE), 2.0 / 12) if shrink else 0.0
    compare(query, memory, lam, similarity, "cpp", 1e-9)


def test_some_rows_shrunk_to_nothing():
    # Row 0 addresses one slot almost exclusively and keeps it; a threshold above every weight
    # of the flat row 1 empties that row only.
    memory = torch.eye(4, dtype=torch.float64)
    query = torch.tensor([[5.0, 0, 0, 0], [0.1, 0.1, 0.1, 0.1]], dtype=torch.float64)
    read, entropy, grad_query, _ = compare(query, memory, 0.5, "dot", "cpp", 1e-9)
    assert read[1].abs().max() == 0 and entropy[1] == 0 and grad_query[1].abs().max() == 0
    assert read[0].abs().max() > 0


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("shrink_factor", [0.0, 2.0])
def test_gradcheck(similarity, shrink_factor):
    query, memory, lam = draw_safe(5, 7, 3, shrink_factor=shrink_factor, similarity=similarity)
    query.requires_grad_(True)
    memory.requires_grad_(True)

    def fn(q, m):
        return memory_read(q, m, shrink_thres=lam, similarity=similarity,
                           temperature=TEMPERATURE, backend="cpp")[:2]

    assert torch.autograd.gradcheck(fn, (query, memory), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cosine", [True, False])
def test_opcheck(dtype, cosine):
    similarity = "cosine" if cosine else "dot"
    query, memory, lam = draw_safe(11, 13, 6, shrink_factor=2.0, similarity=similarity, dtype=dtype)
    fwd_args = (query.requires_grad_(True), memory.requires_grad_(True), lam, cosine, TEMPERATURE)
    torch.library.opcheck(torch.ops.memae_fused.memory_read_fwd.default, fwd_args)
    with torch.no_grad():
        read, entropy, stats = torch.ops.memae_fused.memory_read_fwd(*fwd_args)
    bwd_args = (torch.randn_like(read), torch.randn_like(entropy), query.detach(),
                memory.detach(), read, entropy, stats, lam, cosine, TEMPERATURE)
    torch.library.opcheck(torch.ops.memae_fused.memory_read_bwd.default, bwd_args)


def test_stats_contract():
    query, memory, lam = draw_safe(10, 30, 8, shrink_factor=2.0, similarity="cosine")
    _, _, stats = torch.ops.memae_fused.memory_read_fwd(query, memory, lam, True, TEMPERATURE)
    assert stats.shape == (3, 10) and stats.dtype == torch.float64
    zq = query / query.norm(dim=1, keepdim=True)
    mk = memory / memory.norm(dim=1, keepdim=True)
    w = torch.softmax(zq @ mk.t() / TEMPERATURE, dim=1)
    h = torch.relu(w - lam) * w / ((w - lam).abs() + 1e-12)
    a = h / h.sum(1, keepdim=True).clamp_min(1e-12)
    torch.testing.assert_close(stats[0], torch.logsumexp(zq @ mk.t() / TEMPERATURE, dim=1))
    torch.testing.assert_close(stats[1], h.sum(1))
    torch.testing.assert_close(stats[2], (a * a / (a + 1e-12)).sum(1))


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("shrink_factor", [0.0, 2.0])
def test_cpu_float32(similarity, shrink_factor):
    query, memory, lam = draw_safe(80, 250, 96, shrink_factor=shrink_factor,
                                   similarity=similarity, dtype=torch.float32)
    # 2e-5 of the largest magnitude: about the float32 eager reference's own error here.
    compare(query, memory, lam, similarity, "cpp", 2e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("shrink_factor", [0.0, 2.0])
def test_cpu_half_precision(dtype, similarity, shrink_factor):
    query, memory, lam = draw_safe(100, 200, 64, shrink_factor=shrink_factor,
                                   similarity=similarity, dtype=dtype)
    compare(query, memory, lam, similarity, "cpp", 1e-2)


def test_empty_query_and_non_contiguous_inputs():
    memory = torch.randn(6, 4, dtype=torch.float64)
    read, entropy, stats = torch.ops.memae_fused.memory_read_fwd(
        torch.empty(0, 4, dtype=torch.float64), memory, 0.1, True, 1.0)
    assert read.shape == (0, 4) and entropy.shape == (0,) and stats.shape == (3, 0)
    query = torch.randn(4, 9, dtype=torch.float64)[:, ::2].t()  # (5, 4), not contiguous
    got = torch.ops.memae_fused.memory_read_fwd(query, memory, 0.0, False, 1.0)
    want = torch.ops.memae_fused.memory_read_fwd(query.contiguous(), memory, 0.0, False, 1.0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("lam", [0.0, 0.05, 0.5])  # uniform weights 1/9: all kept / all dropped
def test_zero_channels(device, similarity, lam):
    """C = 0: every logit is 0, so the weights are uniform; read and gradients are empty."""
    query = torch.randn(6, 0, dtype=torch.float64, device=device)
    memory = torch.randn(9, 0, dtype=torch.float64, device=device)
    backend = "cpp" if device == "cpu" else "cuda"
    read, entropy, grad_query, grad_memory = compare(query, memory, lam, similarity, backend,
                                                     1e-12)
    assert read.shape == (6, 0) and grad_query.shape == (6, 0) and grad_memory.shape == (9, 0)
    expected = 0.0 if lam == 0.5 else torch.log(torch.tensor(9.0, dtype=torch.float64)).item()
    torch.testing.assert_close(entropy.cpu(), torch.full((6,), expected, dtype=torch.float64))


def test_auto_uses_cpp_on_cpu():
    assert backends.resolve("auto", torch.device("cpu")) == "cpp"


def test_bad_arguments_are_rejected():
    query, memory = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(RuntimeError, match="channels"):
        torch.ops.memae_fused.memory_read_fwd(query, torch.randn(5, 3), 0.1, True, 1.0)
    with pytest.raises(RuntimeError, match="at least one slot"):
        torch.ops.memae_fused.memory_read_fwd(query, torch.randn(0, 4), 0.1, True, 1.0)
    with pytest.raises(RuntimeError, match="temperature"):
        torch.ops.memae_fused.memory_read_fwd(query, memory, 0.1, True, 0.0)
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.memae_fused.memory_read_fwd(query.long(), memory.long(), 0.1, True, 1.0)


# ----------------------------------------------------------------------------- CUDA kernels

# On a GPU these small shapes all take the split sweeps (grid.z over N in the forward and
# query-major backward, over Q in the memory-major backward); test_cuda_unsplit_sweeps
# takes the unsplit ones.


@needs_cuda
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("shrink_factor", [0.0, 2.0])
# float16/bfloat16 run on tensor cores with the weights tiles rounded to the input dtype.
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-5),
                                       (torch.bfloat16, 1e-2), (torch.float16, 1e-2)],
                         ids=["f64", "f32", "bf16", "f16"])
def test_cuda_matches_reference(shape, similarity, shrink_factor, dtype, tol):
    query, memory, lam = draw_safe(*shape, shrink_factor=shrink_factor, similarity=similarity,
                                   dtype=dtype, device="cuda")
    compare(query, memory, lam, similarity, "cuda", tol)


@needs_cuda
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_cuda_rows_below_threshold_and_zero_rows(similarity):
    query, memory = draw_safe(20, 30, 16, shrink_factor=0.0, similarity=similarity,
                              dtype=torch.float32, device="cuda")[:2]
    read, entropy, grad_query, grad_memory = compare(query, memory, 1.0, similarity, "cuda", 1e-6)
    for t in (read, entropy, grad_query, grad_memory):
        assert torch.equal(t, torch.zeros_like(t))
    query[3] = 0
    memory[7] = 0
    compare(query, memory, 0.0, similarity, "cuda", 1e-5)


@needs_cuda
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("shrink_factor", [0.0, 2.0])
def test_cuda_gradcheck_and_opcheck(similarity, shrink_factor):
    query, memory, lam = draw_safe(6, 9, 4, shrink_factor=shrink_factor, similarity=similarity,
                                   device="cuda")
    query.requires_grad_(True)
    memory.requires_grad_(True)

    def fn(q, m):
        return memory_read(q, m, shrink_thres=lam, similarity=similarity,
                           temperature=TEMPERATURE, backend="cuda")[:2]

    assert torch.autograd.gradcheck(fn, (query, memory), eps=1e-6, atol=1e-6, rtol=1e-4)
    torch.library.opcheck(torch.ops.memae_fused.memory_read_fwd.default,
                          (query, memory, lam, similarity == "cosine", TEMPERATURE))


@needs_cuda
def test_cuda_matches_cpu_kernel():
    query, memory, lam = draw_safe(300, 2000, 128, shrink_factor=2.0, similarity="cosine",
                                   dtype=torch.float32)
    cpu = torch.ops.memae_fused.memory_read_fwd(query, memory, lam, True, TEMPERATURE)
    gpu = torch.ops.memae_fused.memory_read_fwd(query.cuda(), memory.cuda(), lam, True, TEMPERATURE)
    for c, g in zip(cpu, gpu):
        torch.testing.assert_close(g.cpu(), c, rtol=1e-4, atol=1e-5)


def _rows_filling_the_gpu():
    """More owned rows (32 per CTA) than the kernels' split threshold of two CTAs per SM."""
    return 2 * torch.cuda.get_device_properties(0).multi_processor_count * 32 + 37


@needs_cuda
@pytest.mark.parametrize("side", ["queries", "slots"])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("shrink_factor", [0.0, 2.0])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-5)],
                         ids=["f64", "f32"])
def test_cuda_unsplit_sweeps(side, similarity, shrink_factor, dtype, tol):
    """Many queries: forward and query-major backward unsplit, memory-major split over Q.
    Many slots: the reverse."""
    many = _rows_filling_the_gpu()
    # The long side repeats 300 distinct rows in random order, so that a threshold with a
    # margin from every weight exists (among millions of distinct weights there is none).
    gen = torch.Generator().manual_seed(7)
    query, memory = draw(300, 70, 40, similarity=similarity, seed=11)
    if side == "queries":
        query = query[torch.randint(0, 300, (many,), generator=gen)]
    else:
        memory = memory[torch.randint(0, 70, (many,), generator=gen)]
    lam = 0.0
    if shrink_factor:
        w = weights(query, memory, similarity, TEMPERATURE)
        lam = safe_threshold(w, shrink_factor / memory.shape[0])
    compare(query.to("cuda", dtype), memory.to("cuda", dtype), lam, similarity, "cuda", tol)
