"""Safety of the op and module inside other people's models (issue 7): property tests of
every backend against python_ref, NaN containment, compile/export/autocast, determinism and
loading the released code's checkpoints."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

import memae_fused
import python_ref
from cases import check_against_reference, draw_case, eager_in_orders, fused_rounding
from memae_fused import FusedMemory, memory_read
from op_checks import assert_within, online_entropy_slack

CPU_BACKENDS = memae_fused.available_backends("cpu")
# (backend, device): every backend on every device present; on a GPU the property test below
# also runs the Triton and CUDA kernels on CUDA tensors.
DEVICE_BACKENDS = [(b, "cpu") for b in CPU_BACKENDS] + (
    [(b, "cuda") for b in memae_fused.available_backends("cuda") if b != "reference"]
    if torch.cuda.is_available() else [])


def read_and_grads(fn, query, memory, grad_read, grad_ent, **kwargs):
    query = query.clone().requires_grad_(True)
    memory = memory.clone().requires_grad_(True)
    res = fn(query, memory, **kwargs)
    loss = (res.read * grad_read).sum() + (res.entropy * grad_ent).sum()
    return (res.read, res.entropy, *torch.autograd.grad(loss, (query, memory)))


@pytest.mark.parametrize("backend,device", DEVICE_BACKENDS, ids=lambda x: x)
@settings(max_examples=20, deadline=None)
@given(
    q=st.integers(1, 40), n=st.integers(1, 90), c=st.integers(1, 48),
    similarity=st.sampled_from(["cosine", "dot"]),
    shrink_factor=st.sampled_from([0.0, 0.7, 1.5, 3.0]),
    temperature=st.floats(0.05, 2.0),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    seed=st.integers(0, 2**31 - 1),
)
def test_every_backend_agrees_with_reference(backend, device, q, n, c, similarity,
                                             shrink_factor, temperature, dtype, seed):
    if n == 1:
        shrink_factor = min(shrink_factor, 0.5)
    query, memory, lam = draw_case(q, n, c, shrink_factor=shrink_factor, similarity=similarity,
                                   temperature=temperature, seed=seed)
    query, memory = query.to(dtype), memory.to(dtype)
    gen = torch.Generator().manual_seed(seed)
    grad_read = torch.randn(q, c, generator=gen, dtype=torch.float64)
    grad_ent = torch.randn(q, generator=gen, dtype=torch.float64)
    kwargs = dict(shrink_thres=lam, similarity=similarity, temperature=temperature)
    want = read_and_grads(python_ref.memory_read, query.double(), memory.double(), grad_read,
                          grad_ent, **kwargs)
    got = read_and_grads(lambda *a, **k: memory_read(*a, backend=backend, **k),
                         query.to(device), memory.to(device), grad_read.to(device, dtype),
                         grad_ent.to(device, dtype), **kwargs)
    got = [t.cpu() for t in got]
    eager = eager_in_orders(
        lambda *inputs: read_and_grads(python_ref.memory_read, *inputs, **kwargs),
        query, memory, grad_read.to(dtype), grad_ent.to(dtype))
    slack = dict(zip(("grad_query", "grad_memory"), fused_rounding(
        query, memory, grad_read.to(dtype), grad_ent.to(dtype), shrink_thres=lam,
        similarity=similarity, temperature=temperature, dtype=dtype)))
    for name, w, g, e in zip(("read", "entropy", "grad_query", "grad_memory"), want, got, eager):
        assert g.dtype == dtype and torch.isfinite(g).all(), name
        if dtype == torch.float64:
            allowed = 1e-8 * w.abs() + 1e-10 + slack.get(name, 0.0)
            if name == "entropy":
                allowed = allowed + online_entropy_slack(n, lam)
            assert_within(g, w, allowed, name)
        else:
            check_against_reference(name, g, w, e, slack=slack.get(name))


# Triton's interpreter computes the bad row in NumPy, which warns about the NaN it makes.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_query_row_stays_in_its_row(backend, bad):
    query, memory, lam = draw_case(12, 40, 8, shrink_factor=1.5)
    query[5, 3] = bad
    query.requires_grad_(True)
    res = memory_read(query, memory, shrink_thres=lam, temperature=0.1, backend=backend)
    assert torch.isnan(res.read[5]).all() and torch.isnan(res.entropy[5])
    clean = torch.ones(12, dtype=torch.bool)
    clean[5] = False
    assert torch.isfinite(res.read[clean]).all() and torch.isfinite(res.entropy[clean]).all()
    want = python_ref.memory_read(query.detach()[clean], memory, shrink_thres=lam,
                                  temperature=0.1)
    torch.testing.assert_close(res.read[clean], want.read, rtol=1e-9, atol=1e-11)
    (res.read[clean].sum() + res.entropy[clean].sum()).backward()
    assert torch.isfinite(query.grad[clean]).all()
    # The bad row reaches the memory's gradient (a sum over all queries): visibly, as NaN.
    memory = memory.clone().requires_grad_(True)
    res = memory_read(query.detach(), memory, shrink_thres=lam, temperature=0.1, backend=backend)
    (res.read.sum() + res.entropy.sum()).backward()
    assert torch.isnan(memory.grad).any()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("ndim", [4, 5])
def test_channels_last_input_matches_contiguous(backend, ndim):
    mem = FusedMemory(23, 6, backend=backend).double()
    shape = (2, 6, 3, 5) if ndim == 4 else (2, 6, 2, 3, 5)
    fmt = torch.channels_last if ndim == 4 else torch.channels_last_3d
    x = torch.randn(shape, dtype=torch.float64).to(memory_format=fmt)
    assert not x.is_contiguous()
    x.requires_grad_(True)
    out = mem(x)
    (out.output.square().sum() + out.entropy).backward()
    grads = x.grad.clone(), mem.memory.grad.clone()
    x_contig = x.detach().contiguous().requires_grad_(True)
    mem.memory.grad = None
    want = mem(x_contig)
    (want.output.square().sum() + want.entropy).backward()
    torch.testing.assert_close(out.output, want.output, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0], x_contig.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[1], mem.memory.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_repeated_runs_are_bitwise_identical(backend):
    query, memory, lam = draw_case(50, 70, 16, shrink_factor=2.0)
    runs = [read_and_grads(lambda *a, **k: memory_read(*a, backend=backend, **k), query, memory,
                           torch.ones(50, 16, dtype=torch.float64),
                           torch.ones(50, dtype=torch.float64), shrink_thres=lam,
                           temperature=0.1) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_released_checkpoint_loads_into_fused_memory():
    released = python_ref.MemModule(30, 8, shrink_thres=0.0025).double()
    state = released.state_dict()
    assert list(state) == ["memory.weight"]  # the released naming
    fused = FusedMemory(30, 8, shrink_thres=0.0025, similarity="dot", temperature=1.0).double()
    fused.load_state_dict(state)
    x = torch.randn(2, 8, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(fused(x).output, released(x)["output"])
    # Nested, as in a released autoencoder holding the module as `mem_rep`.
    outer = torch.nn.Module()
    outer.mem_rep = FusedMemory(30, 8).double()
    outer.load_state_dict({"mem_rep.memory.weight": state["memory.weight"]})
    torch.testing.assert_close(outer.mem_rep.memory, state["memory.weight"])
    built = FusedMemory.from_released(state["memory.weight"])
    torch.testing.assert_close(built(x).output, released(x)["output"])


class TinyModel(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.enc = torch.nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.mem = FusedMemory(20, 8, backend=backend)
        self.dec = torch.nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1)

    def forward(self, x):
        res = self.mem(self.enc(x))
        return self.dec(res.output), res.entropy


def test_compile_fullgraph_model():
    model = TinyModel("auto")
    x = torch.randn(2, 1, 8, 8)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y, ent = compiled(x)
    y_ref, ent_ref = model(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    (y.sum() + ent).backward()
    assert model.mem.memory.grad is not None


def test_export_model():
    model = TinyModel("auto").eval()
    x = torch.randn(2, 1, 8, 8)
    exported = torch.export.export(model, (x,))
    y, ent = exported.module()(x)
    y_ref, ent_ref = model(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ent, ent_ref, rtol=1e-5, atol=1e-6)


def test_autocast_bf16_runs_in_bf16():
    model = TinyModel("auto")
    x = torch.randn(2, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, ent = model(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all() and torch.isfinite(ent)
    (y.float().sum() + ent.float()).backward()
    assert model.mem.memory.grad.dtype == torch.float32
    assert torch.isfinite(model.mem.memory.grad).all()


def test_triton_ops_pass_opcheck():
    if "triton" not in CPU_BACKENDS:
        pytest.skip("Triton interpreter not enabled")
    from memae_fused.backends import triton as triton_kernels  # noqa: F401  (registers the ops)

    query, memory, lam = draw_case(9, 20, 8, shrink_factor=2.0)
    query.requires_grad_(True)
    memory.requires_grad_(True)
    for save_y in (False, True):  # the forward_y plan's forward saves Y
        torch.library.opcheck(torch.ops.memae_fused.triton_memory_read_fwd.default,
                              (query, memory, lam, True, 0.1, save_y),
                              test_utils=("test_schema", "test_autograd_registration",
                                          "test_faketensor"))
