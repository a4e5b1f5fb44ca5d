"""Random test inputs whose addressing weights keep a margin from the shrink threshold.

Hard shrinkage is nearly a step at w = lambda (and its derivative is huge just above it), so
two correct implementations can disagree on a weight within rounding of lambda. Instead of
loosening tolerances, every test draws inputs and a lambda with no weight near lambda.
"""

import torch

import python_ref
from python_ref.memory import LOG_EPS, NORM_EPS, SHRINK_EPS

REL_MARGIN = 1e-3


def draw(q, n, c, *, similarity="cosine", temperature=0.1, dtype=torch.float64, seed=None,
         device="cpu", scale=None):
    """query (q, c) ~ N(0, 1); memory (n, c) with rows of random length, so dot logits vary."""
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    query = torch.randn(q, c, generator=gen, dtype=torch.float64)
    memory = torch.randn(n, c, generator=gen, dtype=torch.float64)
    memory *= torch.rand(n, 1, generator=gen, dtype=torch.float64) + 0.5
    if scale is None:
        scale = 1.0 if similarity == "cosine" or c == 0 else c ** -0.5
    query *= scale
    return query.to(device=device, dtype=dtype), memory.to(device=device, dtype=dtype)


def weights(query, memory, similarity, temperature):
    """Softmax weights before shrinkage, in float64."""
    return python_ref.memory_read(query.double(), memory.double(), shrink_thres=0.0,
                                  similarity=similarity, temperature=temperature,
                                  return_att=True).att


def safe_threshold(w, target, rel_margin=REL_MARGIN):
    """A threshold near `target` with no weight within rel_margin * threshold of it."""
    if target == 0:
        return 0.0
    vals = torch.sort(w.flatten().double()).values
    lo, hi = target / 1.5, target * 1.5
    cand = torch.cat([vals[(vals > lo) & (vals < hi)], torch.tensor([lo, hi], dtype=vals.dtype)])
    cand = torch.sort(cand).values
    gaps = cand[1:] - cand[:-1]
    mids = (cand[1:] + cand[:-1]) / 2
    ok = gaps / 2 > rel_margin * mids
    if not ok.any():
        raise AssertionError(f"no threshold near {target} keeps a margin; draw other inputs")
    # Among the gaps wide enough, the one closest to the target.
    idx = torch.nonzero(ok).flatten()
    best = idx[torch.argmin((mids[idx] - target).abs())]
    thres = float(mids[best])
    assert (vals - thres).abs().min() > rel_margin * thres
    return thres


def weights_of_16bit_unit_vectors(query, memory, temperature):
    """Softmax weights, in float64, from the operands the fused kernels multiply for 16-bit
    cosine similarity: rows normalised in float32, then rounded to the input dtype."""
    def unit_rows(x):
        x = x.float()
        return (x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)).to(query.dtype).double()

    return torch.softmax(unit_rows(query) @ unit_rows(memory).t() / temperature, dim=1)


def safe_threshold_for(query, memory, similarity, temperature, target, rel_margin=REL_MARGIN):
    """safe_threshold for these inputs. For 16-bit cosine the margin is kept from the fused
    kernels' weights too: rounding the unit vectors moves logits by ~1e-3 / temperature, so
    the threshold must not fall between a weight and its kernel value either."""
    w = weights(query, memory, similarity, temperature)
    if similarity != "cosine" or query.dtype.itemsize != 2:
        return safe_threshold(w, target, rel_margin)
    w_kernel = weights_of_16bit_unit_vectors(query, memory, temperature)
    # Forbidden: each [min, max] of a weight and its kernel value, widened by the margin.
    low = torch.minimum(w, w_kernel).flatten() * (1 - rel_margin)
    high = torch.maximum(w, w_kernel).flatten() * (1 + rel_margin)
    order = torch.argsort(low)
    low, high = low[order].tolist(), high[order].tolist()
    lo, hi = target / 1.5, target * 1.5
    best, covered_to = None, lo
    for start, end in zip(low + [hi], high + [hi]):
        if start > covered_to:  # (covered_to, start) is free: its point nearest the target
            point = min(max(target, covered_to), start)
            if lo < point < hi and (best is None or abs(point - target) < abs(best - target)):
                best = point
        covered_to = max(covered_to, end)
    if best is None:
        raise AssertionError(f"no threshold near {target} keeps a margin; draw other inputs")
    assert ((w - best).abs() > rel_margin * best / 2).all()
    assert torch.equal(w > best, w_kernel > best)
    return best


def draw_case(q, n, c, *, shrink_factor=2.0, similarity="cosine", temperature=0.1,
              dtype=torch.float64, seed=None, device="cpu", scale=None):
    """Inputs plus a threshold near shrink_factor / n (0 for no shrinkage) with a margin.
    Without a seed, draws again until such a threshold exists."""
    for _ in range(1 if seed is not None else 20):
        query, memory = draw(q, n, c, similarity=similarity, temperature=temperature,
                             dtype=dtype, seed=seed, device=device, scale=scale)
        try:
            lam = (safe_threshold_for(query, memory, similarity, temperature, shrink_factor / n)
                   if shrink_factor else 0.0)
            return query, memory, lam
        except AssertionError:
            if seed is not None:
                raise
    raise AssertionError(f"no threshold near {shrink_factor} / {n} keeps a margin")


def eager_in_orders(run, query, memory, grad_read, grad_ent, orders=3):
    """Eager PyTorch's results in the inputs' own precision under `orders` summation orders.

    `run(query, memory, grad_read, grad_ent)` gives (read, entropy, grad_query, grad_memory).
    Besides the given order, memory slots and channels are permuted (and the results permuted
    back): each run is an equally valid same-precision computation with its own rounding, so
    the worst of them, not one that happens to round luckily, sets the bar. Returns one list of
    runs per result."""
    runs = [run(query, memory, grad_read, grad_ent)]
    n, c = memory.shape
    for _ in range(orders - 1):
        slots, chans = torch.randperm(n), torch.randperm(c)
        back_slots, back_chans = torch.argsort(slots), torch.argsort(chans)
        read, ent, gq, gm = run(query[:, chans], memory[slots][:, chans], grad_read[:, chans],
                                grad_ent)
        runs.append((read[:, back_chans], ent, gq[:, back_chans], gm[back_slots][:, back_chans]))
    return [list(results) for results in zip(*runs)]


def check_against_reference(name, got, want, eager=None, rtol=1e-5, atol=1e-6, slack=None):
    """Below float64, judge a whole tensor: |got - want| <= rtol·|want| + atol·sqrt(numel)
    (norms over the tensor), or at most twice the error of eager PyTorch in the same precision
    (FlashAttention's criterion) where cancellation, in a near one-hot row say, makes that
    larger. `want` is the float64 reference on the same (rounded) inputs; `eager` is one
    same-precision result or a list of them (eager_in_orders), judged by the worst. `slack`:
    an element-wise allowance, taken off each element's error first (fused_rounding)."""
    got = got.detach().double().cpu()
    assert torch.isfinite(got).all(), f"{name}: not finite"
    diff = (got - want).abs()
    if slack is not None:
        assert slack.shape == diff.shape, f"{name}: allowance of another shape"
        diff = (diff - slack).clamp_min(0)
    err = diff.norm().item()
    bar = rtol * want.norm().item() + atol * want.numel() ** 0.5
    if eager is not None:
        for run in eager if isinstance(eager, (list, tuple)) else [eager]:
            eager_err = (run.detach().double().cpu() - want).norm().item()
            if eager_err == eager_err:  # eager float16 entropy is NaN: 1e-12 underflows in the log
                bar = max(bar, 2 * eager_err)
    assert err <= bar, f"{name}: error {err:.2e} > {bar:.2e} (|want| = {want.norm().item():.2e})"


def fused_rounding(query, memory, grad_read, grad_ent, *, shrink_thres, similarity,
                   temperature, dtype):
    """Element-wise allowance for d(query) and d(memory) computed in `dtype` the fused way:
    the softmax's row term from the outputs, D = <g, read> + g_e (entropy - A'), as
    FlashAttention takes it, where autograd sums it from the per-slot gradients. Autograd's
    sum cancels against those same per-slot terms (exactly where one slot holds the whole
    weight: N = 1, or a single slot kept by shrinkage; nearly in a near one-hot row); D does
    not, and its rounding reaches the gradients even where they are zero. A first-order
    rounding model of the backward's formulas from D on (docs/algorithm.md): every sum of n
    terms is taken to err by sqrt(n) u sum |terms| (Higham and Mary's probabilistic bound,
    lambda = 1; u the unit roundoff of `dtype`), and the errors reach d(query) and d(memory)
    through the logits' Jacobian, bounded term by term. The logits' and weights' own
    rounding, which every implementation has, is left to the tolerances. At lam = 0 it also
    allows for the one-sweep entropy's missing eps (online_entropy_slack's, in the
    gradients). Returns (query allowance, memory allowance), float64, on the CPU."""
    query, memory = query.detach().double().cpu(), memory.detach().double().cpu()
    grad_read, grad_ent = grad_read.double().cpu(), grad_ent.double().cpu()
    u = torch.finfo(dtype).eps / 2
    (num_queries, channels), num_slots = query.shape, memory.shape[0]
    root_c = max(channels, 1) ** 0.5
    q_norm = query.norm(dim=1, keepdim=True).clamp_min(NORM_EPS)
    m_norm = memory.norm(dim=1, keepdim=True).clamp_min(NORM_EPS)
    if similarity == "dot":
        q_op, m_op = query, memory
    else:
        q_op, m_op = query / q_norm, memory / m_norm
    w = weights(query, memory, similarity, temperature)
    if shrink_thres > 0:
        over = w - shrink_thres
        h = torch.relu(over) * w / (over.abs() + SHRINK_EPS)
        h_grad = torch.where(over > 0, over / (over + SHRINK_EPS)
                             + w * SHRINK_EPS / (over + SHRINK_EPS) ** 2, torch.zeros_like(w))
        h_sum = h.sum(1, keepdim=True).clamp_min(SHRINK_EPS)
        a = h / h_sum
    else:
        h_grad, h_sum, a = torch.ones_like(w), torch.ones_like(w[:, :1]), w
    read = a @ memory
    entropy = -(a * torch.log(a + LOG_EPS)).sum(dim=1, keepdim=True)
    dlog = torch.log(a + LOG_EPS) + a / (a + LOG_EPS)
    grad_a = grad_read @ memory.t() - grad_ent[:, None] * dlog
    grad_w = h_grad * (grad_a - (a * grad_a).sum(1, keepdim=True)) / h_sum
    row_r = (w * grad_w).sum(1, keepdim=True)
    grad_logits = w * (grad_w - row_r)
    # d a_j and D: dot products over C, and the entropy's terms (D's over N).
    grad_a_err = (root_c * u * (grad_read.abs() @ memory.abs().t()
                                + (grad_read * read).abs().sum(1, keepdim=True))
                  + grad_ent.abs()[:, None] * max(num_slots, 1) ** 0.5 * u
                  * (dlog.abs() + entropy.abs() + 1))
    grad_w_err = h_grad * grad_a_err / h_sum
    row_r_err = (w * grad_w_err).sum(1, keepdim=True)
    ds_err = w * (grad_w_err + row_r_err) + u * grad_logits.abs()
    if shrink_thres == 0:
        # The one-sweep forms' entropy is -sum w log w, without the reference's eps: its
        # derivative differs by < 2 eps / w_j per slot, D's entropy by < N eps.
        ds_err = ds_err + 2 * LOG_EPS * grad_ent.abs()[:, None] * (1 + 2 * num_slots * w)
    # Through the Jacobian, with the sums over N (d query) and Q (d memory) rounded too.
    ds_q = (ds_err + max(num_slots, 1) ** 0.5 * u * grad_logits.abs()) / temperature
    ds_m = (ds_err + max(num_queries, 1) ** 0.5 * u * grad_logits.abs()) / temperature
    value_err = max(num_queries, 1) ** 0.5 * u * (a.t() @ grad_read.abs())
    if similarity == "dot":
        return ds_q @ memory.abs(), ds_m.t() @ query.abs() + value_err
    # Cosine: d(q^.k^)/dq = (I - q^ q^T) k^ / |q|, each element within |k^_c| + |q^_c|; the
    # projection's dot product over C rounds too.
    q_unit, m_unit = q_op.abs(), m_op.abs()
    unit_q_grad = grad_logits.abs() @ m_unit / temperature
    unit_m_grad = grad_logits.abs().t() @ q_unit / temperature
    query_err = (ds_q @ m_unit + q_unit * ds_q.sum(1, keepdim=True) + root_c * u * q_unit
                 * (q_unit * unit_q_grad).sum(1, keepdim=True)) / q_norm
    memory_err = (ds_m.t() @ q_unit + m_unit * ds_m.sum(0)[:, None] + root_c * u * m_unit
                  * (m_unit * unit_m_grad).sum(1, keepdim=True)) / m_norm
    return query_err, memory_err + value_err
