"""The Triton kernels against python_ref, forward and backward.

Without a GPU the kernels run under Triton's CPU interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), which checks their logic, masking and split-combine paths.
"""

import logging
import warnings

import pytest
import torch

import python_ref
from cases import check_against_reference, draw_case, eager_in_orders
from memae_fused import memory_read
from memae_fused.backends import triton as triton_kernels
from op_checks import online_entropy_slack

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and not triton_kernels.triton_interpret_enabled(),
    reason="no GPU and TRITON_INTERPRET is not set",
)

TOL = {
    torch.float64: dict(rtol=1e-9, atol=1e-11),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
}


def grads_of(query, memory, lam, similarity, temperature, fn, grad_read, grad_ent):
    query = query.clone().requires_grad_(True)
    memory = memory.clone().requires_grad_(True)
    res = fn(query, memory, shrink_thres=lam, similarity=similarity, temperature=temperature)
    loss = ((res.read * grad_read.to(res.read)).sum()
            + (res.entropy * grad_ent.to(res.entropy)).sum())
    return (res.read, res.entropy, *torch.autograd.grad(loss, (query, memory)))


def run_both(q, n, c, *, similarity, shrink_factor, dtype, temperature=None, scale=None):
    """(float64 reference, triton in dtype, eager python_ref in dtype under a few summation
    orders) on the same inputs."""
    if temperature is None:  # logits of a few units either way
        temperature = 0.1 if similarity == "cosine" else 0.5
    query, memory, lam = draw_case(q, n, c, shrink_factor=shrink_factor, similarity=similarity,
                                   temperature=temperature, scale=scale, dtype=dtype)
    # The reference sees exactly the values the kernel sees, in float64.
    query, memory = query.double(), memory.double()
    grad_read, grad_ent = torch.randn(q, c, dtype=torch.float64), torch.randn(q, dtype=torch.float64)
    args = (lam, similarity, temperature)
    want = grads_of(query, memory, *args, python_ref.memory_read, grad_read, grad_ent)
    got = grads_of(query.to(DEVICE, dtype), memory.to(DEVICE, dtype), *args,
                   lambda *a, **k: memory_read(*a, backend="triton", **k), grad_read, grad_ent)
    eager = eager_in_orders(
        lambda *inputs: grads_of(*inputs[:2], *args, python_ref.memory_read, *inputs[2:]),
        query.to(dtype), memory.to(dtype), grad_read, grad_ent)
    assert all(g.dtype == dtype for g in got)
    return want, got, eager


def assert_matches(want, got, eager=None, entropy_slack=0.0, **tol):
    """Element-wise in float64; by whole-tensor error below it (cases.check_against_reference)."""
    for i, name in enumerate(("read", "entropy", "grad_query", "grad_memory")):
        if got[i].dtype == torch.float64:
            t = dict(tol, atol=tol["atol"] + entropy_slack) if name == "entropy" else tol
            torch.testing.assert_close(got[i].cpu(), want[i], msg=lambda m: f"{name}: {m}", **t)
        else:
            check_against_reference(name, got[i], want[i], eager[i], **tol)


SHAPES = [(1, 1, 1), (1, 5, 3), (37, 70, 20), (50, 129, 16), (65, 33, 40), (3, 200, 64)]


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("shrink_factor", [0.0, 2.0])
@pytest.mark.parametrize("q,n,c", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference(q, n, c, similarity, shrink_factor, dtype):
    if n == 1 and shrink_factor:
        shrink_factor = 0.5  # one slot has weight 1: keep it
    want, got, eager = run_both(q, n, c, similarity=similarity, shrink_factor=shrink_factor,
                                dtype=dtype)
    assert_matches(want, got, eager, online_entropy_slack(n, shrink_factor), **TOL[dtype])


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("shrink_factor", [0.0, 3.0])
def test_split_paths_match_reference(monkeypatch, similarity, shrink_factor):
    # Force the split-over-N forward / query-major backward and split-over-Q memory-major
    # backward that the GPU takes for few queries or few slots.
    monkeypatch.setattr(triton_kernels, "plan_splits", lambda blocks, length, block, dev: 3)
    want, got, _ = run_both(45, 301, 24, similarity=similarity, shrink_factor=shrink_factor,
                            dtype=torch.float64)
    assert_matches(want, got, None, online_entropy_slack(301, shrink_factor), **TOL[torch.float64])


@pytest.mark.parametrize("plan", ["forward_y", "row_term_first"])
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("shrink_factor", [0.0, 3.0])
def test_other_backward_plans_match_reference(monkeypatch, similarity, shrink_factor, splits,
                                              plan):
    # The plans the GPU runs at C = 256 in 16-bit and TF32: Y = sum w·mk from the forward's
    # first sweep and X, R in one query-major sweep (forward_y), or R in a sweep of its own,
    # then d(query) with R known (row_term_first); unsplit and split over N (the split
    # forward_y forward accumulates Y in the row max/sum launch).
    monkeypatch.setattr(triton_kernels, "backward_query_plan", lambda *args: plan)
    monkeypatch.setattr(triton_kernels, "plan_splits", lambda blocks, length, block, dev: splits)
    want, got, _ = run_both(45, 301, 24, similarity=similarity, shrink_factor=shrink_factor,
                            dtype=torch.float64)
    assert_matches(want, got, None, online_entropy_slack(301, shrink_factor), **TOL[torch.float64])


@pytest.mark.parametrize("plan", ["fused", "forward_y", "row_term_first"])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_both_backward_plans_at_256_channels_in_bf16(monkeypatch, plan, similarity):
    # The performance shapes' width, in bfloat16, judged by eager bf16's error: on a GPU this
    # runs the picked tiles of either plan.
    monkeypatch.setattr(triton_kernels, "backward_query_plan", lambda *args: plan)
    want, got, eager = run_both(70, 200, 256, similarity=similarity, shrink_factor=2.0,
                                dtype=torch.bfloat16)
    assert_matches(want, got, eager, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("shrink_factor", [0.0, 3.0])
def test_atomic_backward_matches_reference(monkeypatch, similarity, shrink_factor, splits):
    # The optional FlashAttention-2 style backward: d(query) added with atomics by the
    # memory-major sweep (after R's sweep with shrinkage); unsplit and split over Q.
    monkeypatch.setenv(triton_kernels.ATOMIC_BACKWARD_ENV, "1")
    monkeypatch.setattr(triton_kernels, "plan_splits", lambda blocks, length, block, dev: splits)
    assert triton_kernels.atomic_backward_enabled()
    want, got, _ = run_both(45, 301, 24, similarity=similarity, shrink_factor=shrink_factor,
                            dtype=torch.float64)
    assert_matches(want, got, None, online_entropy_slack(301, shrink_factor), **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_atomic_backward_with_a_padded_slot_tile_and_low_logits(monkeypatch, dtype):
    # Fewer slots than a tile: the padded slots' w = exp(-logsumexp) overflows when the
    # logits are far below 0 (here -100 in float32, -16 in float16); masked, they add
    # nothing to the atomic path's d(query), which matches the deterministic path's.
    gen = torch.Generator().manual_seed(5)
    value = 5.0 if dtype == torch.float32 else 2.0
    query = torch.full((2, 4), -value, dtype=dtype)
    memory = (value + 0.1 * torch.randn(5, 4, generator=gen)).to(dtype)

    def grads(atomic):
        monkeypatch.setenv(triton_kernels.ATOMIC_BACKWARD_ENV, "1" if atomic else "0")
        q = query.to(DEVICE).clone().requires_grad_(True)
        m = memory.to(DEVICE).clone().requires_grad_(True)
        res = memory_read(q, m, shrink_thres=0.0, similarity="dot", temperature=1.0,
                          backend="triton")
        (res.read.sum() + res.entropy.sum()).backward()
        return q.grad.double().cpu(), m.grad.double().cpu()

    for got, want in zip(grads(True), grads(False)):
        assert torch.isfinite(got).all() and torch.isfinite(want).all()
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * want.abs().max().item())


def test_atomic_backward_only_when_asked_and_not_deterministic(monkeypatch, counted_products):
    # Off by default and under torch.use_deterministic_algorithms: the deterministic plans
    # run (their product count tells them apart: at lam = 0, 2 + 7 units against 2 + 5).
    q, n, c = 64, 128, 64
    query = torch.randn(q, c, dtype=torch.float64, requires_grad=True)
    memory = torch.randn(n, c, dtype=torch.float64, requires_grad=True)

    def units():
        counted_products["mac"] = 0
        res = memory_read(query.to(DEVICE), memory.to(DEVICE), shrink_thres=0.0,
                          temperature=0.5, backend="triton")
        (res.read.sum() + res.entropy.sum()).backward()
        return counted_products["mac"] / (q * n * c)

    assert not triton_kernels.atomic_backward_enabled()
    assert units() == 9
    monkeypatch.setenv(triton_kernels.ATOMIC_BACKWARD_ENV, "1")
    assert units() == 7
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert not triton_kernels.atomic_backward_enabled() and units() == 9
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.parametrize("splits", [1, 3])
def test_forward_saves_y_only_for_a_backward(monkeypatch, splits):
    # Y = sum_j w_j·mk_j (the softmax, before shrinkage) against float64, saved only when
    # autograd records the call; a backward without it takes the row_term_first passes.
    monkeypatch.setattr(triton_kernels, "backward_query_plan", lambda *args: "forward_y")
    monkeypatch.setattr(triton_kernels, "plan_splits", lambda blocks, length, block, dev: splits)
    query, memory, lam = draw_case(37, 140, 24, shrink_factor=2.0, temperature=0.1)
    recorded = []
    original = triton_kernels.triton_memory_read_fwd

    def spy(*args):
        out = original(*args)
        recorded.append(out[3])
        return out

    monkeypatch.setattr(triton_kernels, "triton_memory_read_fwd", spy)
    with torch.no_grad():
        memory_read(query.to(DEVICE), memory.to(DEVICE), shrink_thres=lam, temperature=0.1,
                    backend="triton")
    assert recorded[-1].numel() == 0
    q_req = query.to(DEVICE).requires_grad_(True)
    memory_read(q_req, memory.to(DEVICE), shrink_thres=lam, temperature=0.1, backend="triton")
    zq = torch.nn.functional.normalize(query.double(), dim=1)
    mk = torch.nn.functional.normalize(memory.double(), dim=1)
    want = torch.softmax(zq @ mk.T / 0.1, dim=1) @ mk
    torch.testing.assert_close(recorded[-1].cpu().double(), want, rtol=1e-5, atol=1e-6)
    # The backward op with no Y: the same gradients through the two-sweep passes.
    read, entropy, stats, y = original(query, memory, lam, True, 0.1, True)
    args = (torch.randn_like(read), torch.randn_like(entropy), query, memory, read, entropy,
            stats)
    with_y = triton_kernels.triton_memory_read_bwd(*args, y, lam, True, 0.1)
    without = triton_kernels.triton_memory_read_bwd(*args, y.new_empty(0), lam, True, 0.1)
    for a, b in zip(with_y, without):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_split_plan_fills_the_sms_in_fewest_waves(monkeypatch):
    # On an H100/H200 (132 SMs, one program per SM at the picked tiles) programs run in waves
    # of 132; the plan takes the split with the fewest waves per unit of work.
    monkeypatch.setattr(triton_kernels, "_num_sms", lambda device: 132)
    gpu = torch.device("cuda")
    plan = triton_kernels.plan_splits
    assert plan(256, 2000, 32, gpu) == 1  # a program for every SM already
    assert plan(64, 100000, 32, gpu) == 2  # 128 programs, one wave (3 splits: two waves)
    assert plan(1, 20000, 32, gpu) == 132
    assert plan(1, 40, 32, gpu) == 2  # no more splits than tiles
    assert plan(5, 10**6, 32, gpu) == 26  # 130 programs
    assert plan(100, 5000, 32, gpu) == 1  # 2 to 8 splits: no fewer waves per unit of work


def test_wide_channels():
    want, got, eager = run_both(9, 40, 512, similarity="cosine", shrink_factor=2.0,
                                dtype=torch.float32)
    assert_matches(want, got, eager, **TOL[torch.float32])


@pytest.mark.parametrize("shrink_factor", [0.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_low_precision_close_to_eager_same_precision(dtype, similarity, shrink_factor):
    # 16-bit inputs, float32 accumulation: judged by eager PyTorch's error in the same precision
    # against the float64 reference (FlashAttention's criterion), forward and backward. At
    # lam = 0 the backward takes D from the rounded read and no row term R (dquery_only).
    want, got, eager = run_both(64, 150, 32, similarity=similarity, shrink_factor=shrink_factor,
                                dtype=dtype)
    assert_matches(want, got, eager, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_lam0_with_near_parallel_slots(dtype):
    # Slots nearly parallel make d(query) a small difference of large terms, which any error
    # in D (R = 0 at lam = 0) multiplies by |Y|; D's entropy term must then not come from the
    # 16-bit entropy output (the saved A' absorbs its rounding).
    gen = torch.Generator().manual_seed(5)
    n, c = 300, 40
    query = (torch.rand(45, c, generator=gen, dtype=torch.float64) + 0.5).to(dtype).double()
    base = torch.rand(n, c, generator=gen, dtype=torch.float64) + 0.5
    gain = torch.linspace(0.2, 0.6, n, dtype=torch.float64)[:, None]
    memory = (base / base.sum(1, keepdim=True) * gain).to(dtype).double()
    grad_read, grad_ent = torch.randn(45, c, dtype=torch.float64), torch.randn(45, dtype=torch.float64)
    args = (0.0, "dot", 0.1)
    want = grads_of(query, memory, *args, python_ref.memory_read, grad_read, grad_ent)
    got = grads_of(query.to(DEVICE, dtype), memory.to(DEVICE, dtype), *args,
                   lambda *a, **k: memory_read(*a, backend="triton", **k), grad_read, grad_ent)
    eager = eager_in_orders(
        lambda *inputs: grads_of(*inputs[:2], *args, python_ref.memory_read, *inputs[2:]),
        query.to(dtype), memory.to(dtype), grad_read, grad_ent)
    assert_matches(want, got, eager, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_float32_follows_tf32_setting(similarity):
    # "high" lets float32 products use TF32 on a GPU (the interpreter computes them in float32
    # regardless). TF32 rounds products to 2^-11; logits 1/temperature = 10 times the cosine
    # magnify that, hence 1e-2 of the norm, as for 16-bit inputs.
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        assert triton_kernels._dot_precision(torch.float32) == "tf32"
        want, got, eager = run_both(64, 150, 32, similarity=similarity, shrink_factor=2.0,
                                    dtype=torch.float32)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert triton_kernels._dot_precision(torch.float32) == "ieee" or previous != "highest"
    assert_matches(want, got, eager, rtol=1e-2, atol=1e-4)


def test_all_rows_below_threshold_give_zeros():
    query, memory, _ = draw_case(20, 50, 16, shrink_factor=0.0)
    tq = query.to(DEVICE).requires_grad_(True)
    tm = memory.to(DEVICE).requires_grad_(True)
    res = memory_read(tq, tm, shrink_thres=0.5, temperature=1.0, backend="triton")
    assert torch.equal(res.read, torch.zeros_like(res.read))
    assert torch.equal(res.entropy, torch.zeros_like(res.entropy))
    (res.read.sum() + res.entropy.sum()).backward()
    assert torch.equal(tq.grad, torch.zeros_like(tq.grad))
    assert torch.equal(tm.grad, torch.zeros_like(tm.grad))


@pytest.mark.parametrize("plan", ["fused", "forward_y", "row_term_first"])
def test_zero_rows_stay_finite(monkeypatch, plan):
    # A zero memory row: the two-pass plan rebuilds its values as unit key times norm.
    monkeypatch.setattr(triton_kernels, "backward_query_plan", lambda *args: plan)
    query, memory, _ = draw_case(10, 30, 8, shrink_factor=0.0)
    query[3] = 0
    memory[7] = 0
    for sim in ("cosine", "dot"):
        tq = query.to(DEVICE).requires_grad_(True)
        tm = memory.to(DEVICE).requires_grad_(True)
        got = memory_read(tq, tm, shrink_thres=0.01, similarity=sim, temperature=0.2,
                          backend="triton")
        want = python_ref.memory_read(query, memory, shrink_thres=0.01, similarity=sim,
                                      temperature=0.2)
        torch.testing.assert_close(got.read.cpu(), want.read, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(got.entropy.cpu(), want.entropy, rtol=1e-9, atol=1e-11)
        (got.read.sum() + got.entropy.sum()).backward()
        assert torch.isfinite(tq.grad).all() and torch.isfinite(tm.grad).all()


@pytest.mark.parametrize("plan", ["fused", "forward_y", "row_term_first"])
def test_gradcheck(monkeypatch, plan):
    monkeypatch.setattr(triton_kernels, "backward_query_plan", lambda *args: plan)
    query, memory, lam = draw_case(6, 11, 5, shrink_factor=2.0, temperature=0.3)
    tq = query.to(DEVICE).requires_grad_(True)
    tm = memory.to(DEVICE).requires_grad_(True)

    def fn(q, m):
        res = memory_read(q, m, shrink_thres=lam, temperature=0.3, backend="triton")
        return res.read, res.entropy

    assert torch.autograd.gradcheck(fn, (tq, tm), eps=1e-7, atol=1e-6, rtol=1e-5)


def test_compile_fullgraph_captures_the_op():
    from memae_fused import FusedMemory

    mod = FusedMemory(40, 16, backend="triton").to(DEVICE).double()
    x = torch.randn(2, 16, 3, 5, dtype=torch.float64, device=DEVICE)
    # Under the interpreter torch cannot trace into Triton kernels (AOT backends would drop
    # them), so on the CPU this checks Dynamo's capture without graph breaks.
    backend = "inductor" if DEVICE == "cuda" else "eager"
    compiled = torch.compile(mod, fullgraph=True, backend=backend)
    # torch logs a warning (and clones every kernel argument) when it cannot tell which
    # arguments a Triton kernel writes (tests/gpu/test_triton_fake_gpu_trace.py, without a GPU).
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    loggers = [logging.getLogger(name) for name in ("torch", "torch._dynamo")]  # no propagation
    for logger in loggers:
        logger.addHandler(handler)
    try:
        out, want = compiled(x), mod(x)
        out.output.sum().backward()
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    torch.testing.assert_close(out.output, want.output)
    assert mod.memory.grad is not None
    assert not [w for w in warnings if "mutated" in w], warnings


GPU_TILE_SHAPES = sorted({shape[:2] for kernels in triton_kernels._TILES.values()
                          for widths in kernels.values() for shape in widths.values()})


@pytest.mark.parametrize("plan", ["fused", "forward_y", "row_term_first"])
@pytest.mark.parametrize("block_q,block_n", sorted(set(GPU_TILE_SHAPES) | {(32, 128)}))
def test_other_tile_shapes(monkeypatch, block_q, block_n, plan):
    # The GPU's tile shapes differ from the interpreter's: masking must hold for each of them.
    monkeypatch.setattr(triton_kernels, "tile_config",
                        lambda *args: triton_kernels.Tiles(block_q, block_n, 4, 1))
    monkeypatch.setattr(triton_kernels, "backward_query_plan", lambda *args: plan)
    want, got, _ = run_both(70, 150, 24, similarity="dot", shrink_factor=2.0, dtype=torch.float64)
    assert_matches(want, got, **TOL[torch.float64])


def test_inputs_no_tile_fits_are_refused_or_passed_on(monkeypatch):
    """On a GPU the tiles fit at most 512 channels (256 in float64): wider inputs go to the
    next backend, with a warning when backend="triton" was asked for by name."""
    gpu = torch.device("cuda")
    assert triton_kernels.unsupported_reason(torch.bfloat16, 512, gpu) is None
    assert "513 channels" in triton_kernels.unsupported_reason(torch.bfloat16, 513, gpu)
    assert triton_kernels.unsupported_reason(torch.float64, 256, gpu) is None
    assert "300 channels" in triton_kernels.unsupported_reason(torch.float64, 300, gpu)
    assert triton_kernels.unsupported_reason(torch.float64, 4096, torch.device("cpu")) is None
    # The CPU has no such limit; pretend it had one to see what the op does with it.
    from memae_fused import backends
    monkeypatch.setattr(backends, "input_reason",
                        lambda name, query: "too wide" if name == "triton" else None)
    query, memory = torch.randn(4, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    fallback = backends.fallback_after("triton", torch.device("cpu"))
    assert fallback in ("cpp", "reference")
    want = python_ref.memory_read(query, memory, shrink_thres=0.0)
    with pytest.warns(UserWarning, match=f"backend='triton' cannot take these inputs \\(too wide\\); "
                                         f"running them on backend='{fallback}'"):
        got = memory_read(query, memory, shrink_thres=0.0, backend="triton")
    torch.testing.assert_close(got.read, want.read, rtol=1e-12, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        memory_read(query, memory, shrink_thres=0.0, backend="auto")
