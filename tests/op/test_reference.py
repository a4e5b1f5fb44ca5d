"""python_ref against the formulas, written out element by element with math in float64."""

import math

import pytest
import torch

import python_ref
from cases import draw, draw_case, weights


def formula(query, memory, lam, similarity, temperature):
    """The op of the foundation issue, one scalar at a time (slow, small sizes only)."""
    q, c = query.shape
    n = memory.shape[0]
    z = query.tolist()
    m = memory.tolist()

    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / max(norm, 1e-12) for x in v]

    zk = [unit(v) for v in z] if similarity == "cosine" else z
    mk = [unit(v) for v in m] if similarity == "cosine" else m
    reads, ents = [], []
    for i in range(q):
        s = [sum(zk[i][k] * mk[j][k] for k in range(c)) / temperature for j in range(n)]
        top = max(s)
        e = [math.exp(x - top) for x in s]
        w = [x / sum(e) for x in e]
        if lam == 0:
            a = w
        else:
            h = [max(x - lam, 0.0) * x / (abs(x - lam) + 1e-12) for x in w]
            a = [x / max(sum(h), 1e-12) for x in h]
        reads.append([sum(a[j] * m[j][k] for j in range(n)) for k in range(c)])
        ents.append(-sum(x * math.log(x + 1e-12) for x in a))
    return torch.tensor(reads, dtype=torch.float64), torch.tensor(ents, dtype=torch.float64)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("q,n,c", [(1, 1, 1), (5, 7, 3), (13, 30, 8), (4, 61, 17)])
@pytest.mark.parametrize("shrink_factor", [0.0, 1.0, 2.5])
@pytest.mark.parametrize("temperature", [1.0, 0.07])
def test_matches_formula(similarity, q, n, c, shrink_factor, temperature):
    query, memory, lam = draw_case(q, n, c, shrink_factor=shrink_factor, similarity=similarity,
                                   temperature=temperature)
    res = python_ref.memory_read(query, memory, shrink_thres=lam, similarity=similarity,
                                 temperature=temperature, return_att=True)
    read, ent = formula(query, memory, lam, similarity, temperature)
    torch.testing.assert_close(res.read, read, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.entropy, ent, rtol=1e-10, atol=1e-12)
    assert res.att.shape == (q, n)
    torch.testing.assert_close(res.att @ memory, res.read, rtol=1e-12, atol=1e-12)


def test_zero_query_and_memory_rows():
    query, memory = draw(6, 9, 5, similarity="cosine")
    query[2] = 0
    memory[4] = 0
    for sim in ("cosine", "dot"):
        res = python_ref.memory_read(query, memory, shrink_thres=0.05, similarity=sim,
                                     temperature=0.5, return_att=True)
        read, ent = formula(query, memory, 0.05, sim, 0.5)
        torch.testing.assert_close(res.read, read, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(res.entropy, ent, rtol=1e-10, atol=1e-12)
        # A zero query has all-equal logits: uniform weights 1/9 > 0.05 all kept.
        torch.testing.assert_close(res.att[2], torch.full((9,), 1 / 9, dtype=torch.float64))
        assert torch.isfinite(res.read).all() and torch.isfinite(res.entropy).all()


def test_all_rows_below_threshold_give_zero_not_nan():
    query, memory = draw(7, 50, 16, similarity="cosine")
    # Cosine at temperature 1: every weight is within e^{+-2} of 1/50 < 0.5.
    query.requires_grad_(True)
    memory.requires_grad_(True)
    res = python_ref.memory_read(query, memory, shrink_thres=0.5, similarity="cosine",
                                 temperature=1.0, return_att=True)
    assert torch.equal(res.att, torch.zeros_like(res.att))
    assert torch.equal(res.read, torch.zeros_like(res.read))
    assert torch.equal(res.entropy, torch.zeros_like(res.entropy))
    (res.read.sum() + res.entropy.sum()).backward()
    assert torch.equal(query.grad, torch.zeros_like(query))
    assert torch.equal(memory.grad, torch.zeros_like(memory))


def test_shrinkage_sparsifies_and_renormalises():
    query, memory, lam = draw_case(20, 40, 8, shrink_factor=1.5, temperature=0.1)
    w = weights(query, memory, "cosine", 0.1)
    a = python_ref.memory_read(query, memory, shrink_thres=lam, temperature=0.1,
                               return_att=True).att
    assert torch.equal(a > 0, w > lam)
    torch.testing.assert_close(a.sum(1), torch.ones(20, dtype=torch.float64))


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("shrink_factor", [0.0, 2.0])
def test_gradcheck(similarity, shrink_factor):
    query, memory, lam = draw_case(5, 12, 4, shrink_factor=shrink_factor, similarity=similarity,
                                   temperature=0.3)
    query.requires_grad_(True)
    memory.requires_grad_(True)

    def fn(q, m):
        res = python_ref.memory_read(q, m, shrink_thres=lam, similarity=similarity,
                                     temperature=0.3)
        return res.read, res.entropy

    assert torch.autograd.gradcheck(fn, (query, memory), eps=1e-7, atol=1e-6, rtol=1e-5)


def test_mem_module_layout_matches_flat_read():
    mod = python_ref.MemModule(10, 4, shrink_thres=0.02).double()
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    out = mod(x)
    flat = x.permute(0, 2, 3, 1).reshape(-1, 4)
    res = python_ref.memory_read(flat, mod.memory.weight, shrink_thres=0.02, similarity="dot",
                                 return_att=True)
    torch.testing.assert_close(out["output"].permute(0, 2, 3, 1).reshape(-1, 4), res.read)
    assert out["att"].shape == (2, 10, 3, 5)
    torch.testing.assert_close(out["entropy"], res.entropy.mean())
