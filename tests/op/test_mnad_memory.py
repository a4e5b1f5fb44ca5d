"""MNADMemory against a plain float64 implementation of the formulas in the shared notes (the
authors' code): output, both losses, the updated items, the test-time update, items no query
picks, ties; the fused read against the eager one."""

import pytest
import torch

import memae_fused
from memae_fused import MNADMemory

CPU_BACKENDS = memae_fused.available_backends("cpu")


def plain_mnad(x, items):
    """(output, compactness, separateness, weights, updated items), written from the notes
    with explicit loops where the rule is per item."""
    b, c, h, w = x.shape
    q = x.permute(0, 2, 3, 1).reshape(-1, c)
    q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
    s = q @ items.t()
    w_mem = torch.softmax(s, dim=1)  # over the items, per query
    w_q = torch.softmax(s, dim=0)  # over the queries, per item
    read = w_mem @ items
    output = torch.cat([q, read], dim=1).reshape(b, h, w, 2 * c).permute(0, 3, 1, 2)
    order = torch.argsort(s, dim=1, descending=True, stable=True)
    top1, top2 = items[order[:, 0]], items[order[:, 1]]
    compactness = ((q - top1) ** 2).mean()
    # The triplet loss of PyTorch (and of the authors' code) adds 1e-6 inside the norm.
    d_pos = (q - top1 + 1e-6).norm(dim=1)
    d_neg = (q - top2 + 1e-6).norm(dim=1)
    separateness = torch.clamp(d_pos - d_neg + 1.0, min=0).mean()
    new_items = items.clone()
    for k in range(items.shape[0]):
        members = [n for n in range(q.shape[0]) if order[n, 0] == k]
        delta = torch.zeros(c, dtype=x.dtype)
        for n in members:
            delta += w_q[n, k] / w_q[:, k].max() * q[n]
        new_items[k] = items[k] + delta
    new_items = new_items / new_items.norm(dim=1, keepdim=True)
    return output, compactness, separateness, w_mem, new_items


def random_map(b, c, h, w, seed):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape,num_items", [((2, 16, 3, 5), 10), ((1, 7, 1, 1), 2), ((3, 32, 4, 4), 25)])
def test_matches_the_plain_formulas(backend, shape, num_items):
    torch.manual_seed(0)
    mem = MNADMemory(num_items, shape[1], backend=backend).double()
    x = random_map(*shape, seed=1).requires_grad_(True)
    before = mem.items.clone()
    want = plain_mnad(x.detach(), before)
    got = mem.train()(x, return_weights=True)
    for name, g, w in zip(("output", "compactness", "separateness", "weights"),
                          (got.output, got.compactness, got.separateness, got.weights), want[:4]):
        if name == "weights":
            w = w.reshape(shape[0], shape[2], shape[3], -1).permute(0, 3, 1, 2)
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=name)
    torch.testing.assert_close(mem.items, want[4], rtol=1e-10, atol=1e-12)
    # Gradients reach x through the losses and the query half of the output, not the items.
    (got.compactness + got.separateness + got.output.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert not mem.items.requires_grad and not any(True for _ in mem.parameters())


def test_update_only_when_training_and_asked():
    mem = MNADMemory(6, 8).double()
    x = random_map(2, 8, 2, 2, seed=2)
    items = mem.items.clone()
    mem.eval()(x)
    mem.train()(x, update=False)
    assert torch.equal(mem.items, items)
    # The test-time update: the rule on the given queries, in any mode.
    mem.eval()
    mem.update_with(x)
    torch.testing.assert_close(mem.items, plain_mnad(x, items)[4], rtol=1e-10, atol=1e-12)
    assert "items" in mem.state_dict()


def test_items_no_query_picks_stay_and_ties_take_the_first():
    mem = MNADMemory(4, 3).double()
    items = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], dtype=torch.float64)
    mem.items.copy_(items)
    # Both queries are closest to items 0 and 1 (a tie): the first wins; items 2, 3 are unused.
    x = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.0, 0.2]], dtype=torch.float64).reshape(2, 3, 1, 1)
    want = plain_mnad(x, items)
    out = mem.train()(x)
    torch.testing.assert_close(mem.items, want[4], rtol=1e-12, atol=1e-12)
    assert torch.equal(mem.items[1:], items[1:])
    assert not torch.equal(mem.items[0], items[0])
    torch.testing.assert_close(out.separateness, want[2], rtol=1e-12, atol=1e-12)


def test_fused_read_equals_eager():
    torch.manual_seed(3)
    x = torch.randn(2, 64, 6, 6)
    fused, eager = MNADMemory(10, 64, backend="auto"), MNADMemory(10, 64, backend="reference")
    eager.items.copy_(fused.items)
    a, b = fused.eval()(x), eager.eval()(x)
    torch.testing.assert_close(a.output, b.output, rtol=1e-5, atol=1e-6)


def test_initial_items_and_errors():
    mem = MNADMemory()
    assert mem.items.shape == (10, 512)
    torch.testing.assert_close(mem.items.norm(dim=1), torch.ones(10))
    assert (MNADMemory(10, 512).items >= 0).all()  # uniform [0, 1), then normalised
    with pytest.raises(ValueError, match="num_items must be an int >= 2"):
        MNADMemory(1, 8)
    with pytest.raises(ValueError, match=r"x must be \(B, 8, H, W\)"):
        MNADMemory(4, 8)(torch.zeros(2, 6, 3, 3))


def test_usage_balance_is_the_kl_divergence_from_uniform():
    mem = MNADMemory(4, 6).double()
    x = random_map(2, 6, 3, 3, seed=4)
    out = mem.eval()(x)
    w = plain_mnad(x, mem.items)[3]
    p = w.mean(dim=0)
    torch.testing.assert_close(out.usage_balance, (p * torch.log(p * 4)).sum(), rtol=1e-10, atol=1e-12)
    # All queries on one item: the term approaches log K.
    mem.items.copy_(torch.eye(4, 6, dtype=torch.float64))
    collapsed = torch.zeros(1, 6, 2, 2, dtype=torch.float64)
    collapsed[:, 0] = 50.0
    assert mem(collapsed).usage_balance < torch.log(torch.tensor(4.0))
