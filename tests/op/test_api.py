"""memory_read and FusedMemory: API, shapes, dispatch and argument errors (reference backend)."""

import pytest
import torch

import memae_fused
import python_ref
from cases import draw_case
from memae_fused import FusedMemory, memory_read


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("shrink_factor", [0.0, 2.0])
def test_reference_backend_matches_python_ref(similarity, shrink_factor):
    query, memory, lam = draw_case(33, 21, 6, shrink_factor=shrink_factor, similarity=similarity)
    query.requires_grad_(True)
    memory.requires_grad_(True)
    got = memory_read(query, memory, shrink_thres=lam, similarity=similarity, temperature=0.1,
                      backend="reference", return_att=True)
    want = python_ref.memory_read(query, memory, shrink_thres=lam, similarity=similarity,
                                  temperature=0.1, return_att=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    gr, ge = torch.randn_like(got.read), torch.randn_like(got.entropy)
    g_got = torch.autograd.grad((got.read * gr).sum() + (got.entropy * ge).sum(), (query, memory))
    g_want = torch.autograd.grad((want.read * gr).sum() + (want.entropy * ge).sum(), (query, memory))
    for g, w in zip(g_got, g_want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 8), (3, 8, 5), (2, 8, 3, 4), (2, 8, 2, 3, 3)])
def test_fused_memory_shapes_match_mem_module(shape):
    mem = FusedMemory(17, 8, shrink_thres=0.03, similarity="dot", temperature=1.0,
                      backend="reference").double()
    ref = python_ref.MemModule(17, 8, shrink_thres=0.03, similarity="dot").double()
    ref.memory.weight.data.copy_(mem.memory.data)
    x = torch.randn(*shape, dtype=torch.float64)
    out, want = mem(x, return_att=True), ref(x)
    assert out.output.shape == x.shape and out["output"].shape == x.shape
    torch.testing.assert_close(out.output, want["output"])
    torch.testing.assert_close(out.entropy, want["entropy"])
    assert out.att.shape == (shape[0], 17, *shape[2:])
    torch.testing.assert_close(out.att, want["att"])
    assert mem(x).att is None


def test_fused_memory_gradients_and_non_contiguous_input():
    mem = FusedMemory(11, 4, backend="reference").double()
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64).permute(0, 3, 1, 2)  # channels-last view
    assert not x.is_contiguous()
    out = mem(x)
    (out.output.square().sum() + out.entropy).backward()
    assert mem.memory.grad is not None and torch.isfinite(mem.memory.grad).all()
    torch.testing.assert_close(mem(x.contiguous()).output, out.output)


def test_defaults_and_init():
    mem = FusedMemory(2000, 256)
    assert mem.memory.shape == (2000, 256)
    assert mem.shrink_thres == pytest.approx(1 / 2000)
    bound = 256 ** -0.5
    assert mem.memory.abs().max() <= bound and mem.memory.std() > bound / 3
    # The defaults address sparsely but not emptily at initialisation.
    out = mem(torch.randn(64, 256), return_att=True)
    nonzero = (out.att > 0).sum(1)
    assert (nonzero > 0).all() and (nonzero < 2000).all()
    assert "num_slots=2000" in repr(mem)


def test_state_dict_round_trip():
    a = FusedMemory(9, 5, shrink_thres=0.05, backend="reference")
    b = FusedMemory(9, 5, shrink_thres=0.05, backend="reference")
    b.load_state_dict(a.state_dict())
    assert list(a.state_dict()) == ["memory"]
    x = torch.randn(3, 5, 4)
    torch.testing.assert_close(a(x).output, b(x).output)


def test_empty_batch_gives_empty_results_and_zero_grads():
    query = torch.randn(0, 6, requires_grad=True)
    memory = torch.randn(4, 6, requires_grad=True)
    res = memory_read(query, memory, shrink_thres=0.1)
    assert res.read.shape == (0, 6) and res.entropy.shape == (0,)
    (res.read.sum() + res.entropy.sum()).backward()
    assert torch.equal(memory.grad, torch.zeros_like(memory))
    out = FusedMemory(4, 6, backend="reference")(torch.randn(0, 6, 3))
    assert out.output.shape == (0, 6, 3) and out.entropy.item() == 0


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(query=torch.randn(3, 4, 1)), ValueError, "query must be 2-D"),
        (dict(memory=torch.randn(5, 3)), ValueError, "channels"),
        (dict(memory=torch.randn(0, 4)), ValueError, "N = 0"),
        (dict(query=torch.ones(3, 4, dtype=torch.int64)), TypeError, "query must be a floating"),
        (dict(memory=torch.randn(5, 4, dtype=torch.float64)), TypeError, "memory is torch.float64"),
        (dict(shrink_thres=-0.1), ValueError, "shrink_thres must be >= 0"),
        (dict(shrink_thres=float("nan")), ValueError, "shrink_thres must be finite"),
        (dict(temperature=0.0), ValueError, "temperature must be > 0"),
        (dict(similarity="l2"), ValueError, "similarity must be one of"),
        (dict(backend="fast"), ValueError, "backend must be"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, exc, match):
    args = dict(query=torch.randn(3, 4), memory=torch.randn(5, 4), shrink_thres=0.1,
                similarity="cosine", temperature=1.0, backend="auto")
    args.update(kwargs)
    query, memory = args.pop("query"), args.pop("memory")
    with pytest.raises(exc, match=match):
        memory_read(query, memory, **args)


def test_unavailable_backend_says_why():
    if "cuda" not in memae_fused.available_backends("cpu"):
        with pytest.raises(RuntimeError, match="backend='cuda' is not available"):
            memory_read(torch.randn(3, 4), torch.randn(5, 4), shrink_thres=0.1, backend="cuda")


def test_fused_memory_rejects_bad_input():
    mem = FusedMemory(5, 4)
    with pytest.raises(ValueError, match="channels"):
        mem(torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match="x must be"):
        mem(torch.randn(4))
    with pytest.raises(ValueError, match="num_slots"):
        FusedMemory(0, 4)
    with pytest.raises(ValueError, match="similarity"):
        FusedMemory(5, 4, similarity="euclid")
