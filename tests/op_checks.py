"""The compiled op's checks against python_ref, shared by the CPU/CUDA kernel tests
(op/test_cpp_op.py) and the CUDA kernels run under the CPU emulation (gpu/test_cuda_emulated.py)."""

import torch

import python_ref
from cases import (check_against_reference, draw, eager_in_orders, fused_rounding,
                   safe_threshold_for)
from memae_fused import memory_read

TEMPERATURE = 0.1


def draw_safe(q, n, c, *, shrink_factor, similarity, dtype=torch.float64, seed=0, device="cpu"):
    """draw_case, retrying other seeds when no threshold near the target keeps a margin. Among
    the ~10^5 distinct weights of a large Q x N there is no such threshold, so there the
    queries and slots are a few distinct rows repeated in random order."""
    # 16-bit cosine thresholds keep a margin from twice as many weights (safe_threshold_for).
    most = 4000 if similarity == "cosine" and dtype.itemsize == 2 else 20000
    distinct_q, distinct_n = (q, n) if q * n <= most else (min(q, 16), min(n, 48))
    for attempt in range(20):
        try:
            query, memory = draw(distinct_q, distinct_n, c, similarity=similarity,
                                 seed=seed + 1000 * attempt)
            if (distinct_q, distinct_n) != (q, n):
                gen = torch.Generator().manual_seed(seed + attempt)
                query = query[torch.randint(0, distinct_q, (q,), generator=gen)]
                memory = memory[torch.randint(0, distinct_n, (n,), generator=gen)]
            query, memory = query.to(dtype), memory.to(dtype)
            lam = (safe_threshold_for(query, memory, similarity, TEMPERATURE, shrink_factor / n)
                   if shrink_factor else 0.0)
            return query.to(device), memory.to(device), lam
        except AssertionError:
            continue
    raise AssertionError(f"no safe threshold for {(q, n, c)}")


def run(query, memory, lam, similarity, backend, grad_read, grad_entropy):
    """read, entropy and the gradients of <read, grad_read> + <entropy, grad_entropy>."""
    query = query.detach().clone().requires_grad_(True)
    memory = memory.detach().clone().requires_grad_(True)
    if backend == "python_ref":
        read, entropy, _ = python_ref.memory_read(query, memory, shrink_thres=lam,
                                                  similarity=similarity, temperature=TEMPERATURE)
    else:
        read, entropy, _ = memory_read(query, memory, shrink_thres=lam, similarity=similarity,
                                       temperature=TEMPERATURE, backend=backend)
    loss = (read * grad_read.to(read.dtype)).sum() + (entropy * grad_entropy.to(entropy.dtype)).sum()
    grad_query, grad_memory = torch.autograd.grad(loss, (query, memory))
    return read, entropy, grad_query, grad_memory


def assert_scaled_close(got, want, tol, name, scale=None, slack=0.0):
    """Elementwise within tol relative, or tol times `scale` (by default the largest reference
    magnitude, at least 1e-6: some exact zeros come out of the reference as rounding noise)
    plus `slack` (a number, or a tensor of per-element allowances)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    if scale is None:
        scale = want.abs().max().item() if want.numel() else 0.0
    atol = tol * max(scale, 1e-6)
    if isinstance(slack, torch.Tensor):
        assert_within(got, want, atol + tol * want.abs() + slack, name)
        return
    torch.testing.assert_close(got, want, rtol=tol, atol=atol + slack, msg=name)


def assert_within(got, want, allowed, name):
    """|got - want| <= allowed element-wise (allowed a tensor of want's shape)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    assert got.shape == want.shape == allowed.shape, f"{name}: shapes differ"
    if not got.numel():
        return
    excess = (got - want).abs() - allowed
    worst = int(excess.argmax())
    assert excess.flatten()[worst] <= 0, (
        f"{name}: element {worst} is {got.flatten()[worst]:.6e}, want "
        f"{want.flatten()[worst]:.6e} within {allowed.flatten()[worst]:.2e}")


def online_entropy_slack(num_slots, lam):
    """The entropy's allowance at lam = 0 for the one-sweep forwards (Triton's and CUDA's),
    which compute -sum w log w rather than the reference's -sum w log(w + eps):
    0 < w log(1 + eps/w) < eps per slot."""
    return num_slots * 1e-12 if lam == 0 else 0.0


def compare_results(run_op, query, memory, lam, similarity, tol, seed=0, entropy_slack=0.0):
    """run_op(grad_read, grad_entropy) -> (read, entropy, grad_query, grad_memory) against
    python_ref in float64 on the same values. float32/float64 element-wise, with absolute
    slack on the scale of what rounds: the gradients scaled by the larger of the two (in a
    near one-hot row the query gradient is a cancellation whose float64 reference is itself
    only accurate to ~1e-15 of the memory gradient's size), the entropy by at least 1 (there
    its tiny value comes from -w log w of a weight next to 1, whose rounding does not shrink
    with it). 16-bit by whole-tensor error, within twice that of eager PyTorch in the same
    precision where that is larger (cases.check_against_reference). entropy_slack: absolute
    allowance added for the entropy (online_entropy_slack); the gradients get the allowance
    for the row term's rounding (cases.fused_rounding)."""
    gen = torch.Generator().manual_seed(seed)
    # Upstream gradients representable in the input dtype, so both sides see the same values.
    grad_read = torch.randn(query.shape, generator=gen).to(query.dtype).double().to(query.device)
    grad_entropy = torch.randn(query.shape[0], generator=gen).to(query.dtype).double()
    grad_entropy = grad_entropy.to(query.device)
    got = run_op(grad_read, grad_entropy)
    want = run(query.double(), memory.double(), lam, similarity, "python_ref", grad_read,
               grad_entropy)
    names = ("read", "entropy", "grad_query", "grad_memory")
    for g, w, name in zip(got, want, names):
        assert g.dtype == query.dtype and g.shape == w.shape, name
    if query.dtype.itemsize == 2:
        eager = eager_in_orders(
            lambda q, m, gr, ge: run(q, m, lam, similarity, "python_ref", gr, ge),
            query, memory, grad_read, grad_entropy)
        for g, w, e, name in zip(got, want, eager, names):
            check_against_reference(name, g, w.detach().double().cpu(), e, rtol=tol, atol=1e-4)
        return got
    grad_scale = max((w.abs().max().item() for w in want[2:] if w.numel()), default=0.0)
    scales = {"read": None, "entropy": max(want[1].abs().max().item(), 1.0),
              "grad_query": grad_scale, "grad_memory": grad_scale}
    slacks = {"entropy": entropy_slack}
    slacks["grad_query"], slacks["grad_memory"] = fused_rounding(
        query, memory, grad_read, grad_entropy, shrink_thres=lam, similarity=similarity,
        temperature=TEMPERATURE, dtype=query.dtype)
    for g, w, name in zip(got, want, names):
        assert_scaled_close(g, w, tol, name, scale=scales[name], slack=slacks.get(name, 0.0))
    return got


# Shapes for the CUDA kernels, on a GPU and emulated.
CUDA_SHAPES = [
    (1, 7, 5),
    (37, 53, 17),
    (130, 1, 8),
    (5, 20, 1),
    (70, 300, 64),
    (33, 65, 129),   # C past one column chunk
    (9, 40, 300),
    (200, 1000, 256),
]
