"""BlockMemory and memae_fused.blocks: the block order on a hand-made tensor, and the module
against to_blocks + python_ref.memory_read + from_blocks, forward and backward, on every CPU
backend, odd sizes and DAAD's long block queries."""

import pytest
import torch

import memae_fused
import python_ref
from cases import safe_threshold, weights
from memae_fused import BlockMemory
from memae_fused.blocks import from_blocks, to_blocks

CPU_BACKENDS = memae_fused.available_backends("cpu")


def test_block_order_on_a_hand_made_tensor():
    x = torch.arange(2 * 4 * 6 * 4, dtype=torch.float64).reshape(2, 4, 6, 4)
    division = (2, 3, 2)  # blocks of 2 channels x 2 rows x 2 columns
    q = to_blocks(x, division)
    assert q.shape == (2 * 2 * 3 * 2, 8)
    row = 0
    for b in range(2):
        for l in range(2):
            for i in range(3):
                for j in range(2):
                    block = x[b, 2 * l:2 * l + 2, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                    assert torch.equal(q[row], block.flatten()), (b, l, i, j)
                    row += 1
    # Channel, then row, then column inside a block: block (0, 0, 0, 0) starts x[0, 0, 0, 0],
    # x[0, 0, 0, 1], x[0, 0, 1, 0].
    assert q[0, :3].tolist() == [x[0, 0, 0, 0].item(), x[0, 0, 0, 1].item(), x[0, 0, 1, 0].item()]
    assert torch.equal(from_blocks(q, x.shape, division), x)


@pytest.mark.parametrize("shape,division", [((3, 5, 7, 9), (5, 1, 3)), ((1, 1, 1, 1), (1, 1, 1)),
                                            ((2, 6, 4, 10), (6, 4, 10)), ((2, 6, 4, 10), (1, 1, 1))])
def test_blocks_round_trip(shape, division):
    x = torch.randn(shape)
    q = to_blocks(x, division)
    assert q.shape[0] == shape[0] * division[0] * division[1] * division[2]
    assert torch.equal(from_blocks(q, shape, division), x)


def test_block_errors():
    with pytest.raises(ValueError, match=r"division \(r_c, r_h, r_w\) = \(1, 3, 1\) does not divide "
                                         r"the feature shape \(C, H, W\) = \(4, 8, 8\)"):
        to_blocks(torch.zeros(2, 4, 8, 8), (1, 3, 1))
    with pytest.raises(ValueError, match="x must be"):
        to_blocks(torch.zeros(4, 8, 8), (1, 1, 1))
    with pytest.raises(ValueError, match="three positive ints"):
        BlockMemory(10, (4, 8, 8), division=(0, 1, 1))
    with pytest.raises(ValueError, match="q must be"):
        from_blocks(torch.zeros(3, 5), (1, 4, 8, 8), (1, 2, 2))
    mem = BlockMemory(10, (4, 8, 8), division=(1, 2, 2))
    with pytest.raises(ValueError, match=r"x must be \(B, \*feature_shape\) = \(B, 4, 8, 8\)"):
        mem(torch.zeros(2, 4, 8, 6))


def reference_block_read(x, memory, division, **kwargs):
    res = python_ref.memory_read(to_blocks(x, division), memory, return_att=True, **kwargs)
    return from_blocks(res.read, x.shape, division), res.entropy.mean(), res.att


def check_block_memory(backend, batch, feature_shape, division, num_slots, *, similarity="cosine",
                       temperature=1.0, shrink_factor=0.0, seed=0, tol=1e-10):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *feature_shape, generator=gen, dtype=torch.float64)
    mem = BlockMemory(num_slots, feature_shape, division, similarity=similarity,
                      temperature=temperature, backend=backend).double()
    with torch.no_grad():
        mem.memory.copy_(torch.randn(mem.memory.shape, generator=gen, dtype=torch.float64))
    if shrink_factor:
        w = weights(to_blocks(x, division), mem.memory.detach(), similarity, temperature)
        mem.shrink_thres = safe_threshold(w, shrink_factor / num_slots)
    kwargs = dict(shrink_thres=mem.shrink_thres, similarity=similarity, temperature=temperature)
    grad_out = torch.randn(x.shape, generator=gen, dtype=torch.float64)

    x_got = x.clone().requires_grad_(True)
    got = mem(x_got, return_att=True)
    g_got = torch.autograd.grad((got.output * grad_out).sum() + 0.7 * got.entropy,
                                (x_got, mem.memory))
    x_want = x.clone().requires_grad_(True)
    memory_want = mem.memory.detach().clone().requires_grad_(True)
    out_want, entropy_want, att_want = reference_block_read(x_want, memory_want, division, **kwargs)
    g_want = torch.autograd.grad((out_want * grad_out).sum() + 0.7 * entropy_want,
                                 (x_want, memory_want))
    assert got.output.shape == x.shape
    r_c, r_h, r_w = division
    assert got.att.shape == (batch, num_slots, r_c, r_h, r_w)
    torch.testing.assert_close(got.att.movedim(1, -1).reshape(-1, num_slots), att_want,
                               rtol=tol, atol=tol)
    torch.testing.assert_close(got.output, out_want, rtol=tol, atol=tol)
    torch.testing.assert_close(got.entropy, entropy_want, rtol=tol, atol=tol)
    for name, g, w in zip(("grad_x", "grad_memory"), g_got, g_want):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol, msg=name)
    return mem


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("feature_shape,division", [((3, 5, 7), (1, 5, 7)), ((6, 10, 4), (3, 2, 2)),
                                                    ((5, 9, 9), (1, 3, 3))])
def test_block_memory_matches_reference(backend, feature_shape, division):
    check_block_memory(backend, 3, feature_shape, division, 13)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_block_memory_options(backend):
    check_block_memory(backend, 2, (4, 6, 6), (2, 3, 3), 17, similarity="dot", temperature=5.0,
                       shrink_factor=1.5, seed=1)
    check_block_memory(backend, 2, (4, 6, 6), (1, 2, 3), 9, temperature=0.1, shrink_factor=2.0,
                       seed=2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_long_block_queries(backend):
    # DAAD's shape at 64 x 64: r_h = r_w = 8, r_c = 1 makes queries of D = 64 * 8 * 8 = 4096.
    mem = check_block_memory(backend, 2, (64, 64, 64), (1, 8, 8), 50, temperature=0.1, seed=3,
                             tol=1e-9)
    assert mem.dim == 4096


def test_block_memory_defaults_follow_daad():
    mem = BlockMemory(500, (64, 256, 256))
    assert mem.division == (1, 8, 8) and mem.block_shape == (64, 32, 32) and mem.dim == 65536
    assert (mem.similarity, mem.temperature, mem.shrink_thres) == ("cosine", 1.0, 0.0)
    assert mem.memory.shape == (500, 65536)


def test_block_memory_float32_and_empty_batch():
    mem = BlockMemory(20, (8, 8, 8), (2, 2, 2))
    x = torch.randn(3, 8, 8, 8)
    out = mem(x)
    want, entropy, _ = reference_block_read(x.double(), mem.memory.detach().double(), (2, 2, 2),
                                            shrink_thres=0.0, similarity="cosine", temperature=1.0)
    assert out.output.dtype == torch.float32 and out.att is None
    torch.testing.assert_close(out.output.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.entropy.double(), entropy, rtol=1e-5, atol=1e-6)
    empty = mem(torch.randn(0, 8, 8, 8))
    assert empty.output.shape == (0, 8, 8, 8) and empty.entropy.item() == 0


def test_auto_takes_eager_pytorch_where_the_attention_is_small():
    assert BlockMemory(500, (64, 64, 64)).resolved_backend == "reference"  # N = 500 <= D = 4096
    assert BlockMemory(500, (16, 8, 8), (1, 4, 4)).resolved_backend == "auto"  # D = 64
    assert BlockMemory(500, (64, 64, 64), backend="cpp").resolved_backend == "cpp"
