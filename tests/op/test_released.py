"""memae_fused.released against python_ref configured as the released MemAE module (dot-product
addressing, temperature 1), used the way the released code and its copies use it: keyword
construction, the result dict, the training loop with EntropyLossEncap on 'att', both
checkpoint directions, ranks 2 to 5, and 'att' used as a tensor."""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import memae_fused
import python_ref
from cases import check_against_reference, safe_threshold, weights
from memae_fused import released
from memae_fused.released import (EntropyLoss, EntropyLossEncap, LazyAttention, MemModule,
                                  MemoryUnit, feature_map_permute, hard_shrink_relu)

CPU_BACKENDS = [b for b in ("cpp", "reference") if b in memae_fused.available_backends("cpu")]


def reference_entropy_loss(att):
    """The released entropy loss written out: channels last, -sum a log(a + 1e-12) per row,
    mean over rows."""
    rows = att.movedim(1, -1).reshape(-1, att.shape[1])
    return (-(rows * torch.log(rows + 1e-12)).sum(dim=1)).mean()


class ReleasedStyleAE(nn.Module):
    """A small 3-D conv autoencoder wired like the released AutoEncoderCov3DMem: the memory
    module is `mem_rep`, forward returns {'output', 'att'}."""

    def __init__(self, memory_module, channels=8):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv3d(1, channels, 3, stride=2, padding=1),
                                     nn.BatchNorm3d(channels), nn.LeakyReLU(0.2))
        self.mem_rep = memory_module
        self.decoder = nn.ConvTranspose3d(channels, 1, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x):
        f = self.encoder(x)
        res_mem = self.mem_rep(f)
        return {"output": self.decoder(res_mem["output"]), "att": res_mem["att"]}


def released_step(model, frames, entropy_loss_weight=0.0002):
    """The released training loop's step, as it is written there."""
    recon_res = model(frames)
    recon_frames = recon_res["output"]
    att_w = recon_res["att"]
    loss = nn.MSELoss()(recon_frames, frames)
    entropy_loss = EntropyLossEncap()(att_w)
    loss = loss + entropy_loss_weight * entropy_loss
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss, entropy_loss, grads


def reference_step(model, frames, entropy_loss_weight=0.0002):
    res = model(frames)
    loss = nn.MSELoss()(res["output"], frames)
    entropy_loss = reference_entropy_loss(res["att"])
    loss = loss + entropy_loss_weight * entropy_loss
    return loss, entropy_loss, torch.autograd.grad(loss, list(model.parameters()))


def paired_models(num_slots, channels, frames, backend, dtype=torch.float64, seed=0):
    """A model on memae_fused.released and the same one on python_ref, with a threshold near
    2/N that keeps a margin from every addressing weight of `frames`."""
    torch.manual_seed(seed)
    probe = ReleasedStyleAE(python_ref.MemModule(num_slots, channels, 0.0), channels).double()
    with torch.no_grad():
        feats = probe.encoder(frames.double())
    query = feats.movedim(1, -1).reshape(-1, channels)
    lam = safe_threshold(weights(query, probe.mem_rep.memory.weight.detach(), "dot", 1.0), 2.0 / num_slots)
    ours = ReleasedStyleAE(MemModule(mem_dim=num_slots, fea_dim=channels, shrink_thres=lam,
                                     device="cuda", backend=backend), channels)
    ref = ReleasedStyleAE(python_ref.MemModule(num_slots, channels, lam), channels)
    ours.load_state_dict(probe.state_dict(), strict=True)
    ref.load_state_dict(probe.state_dict(), strict=True)
    return ours.to(dtype), ref.to(dtype), lam


def test_released_signatures_defaults_and_attributes():
    mod = MemModule(mem_dim=2000, fea_dim=256, shrink_thres=0.0025, device="cuda")
    assert (mod.mem_dim, mod.fea_dim, mod.shrink_thres) == (2000, 256, 0.0025)
    unit = mod.memory
    assert isinstance(unit, MemoryUnit) and unit.weight.shape == (2000, 256) and unit.bias is None
    assert (unit.mem_dim, unit.fea_dim, unit.shrink_thres) == (2000, 256, 0.0025)
    assert MemModule(10, 4).shrink_thres == 0.0025 and MemoryUnit(10, 4).shrink_thres == 0.0025
    assert list(mod.state_dict()) == ["memory.weight"]
    bound = 1 / 256 ** 0.5
    assert unit.weight.abs().max() <= bound and unit.weight.std() > bound / 3  # uniform +-1/sqrt(C)
    positional = MemModule(20, 8, 0.01, "cpu")
    assert positional.shrink_thres == 0.01
    assert EntropyLoss().eps == 1e-12 and EntropyLossEncap().eps == 1e-12
    assert set(released.__all__) >= {"MemoryUnit", "MemModule", "hard_shrink_relu", "EntropyLoss",
                                     "EntropyLossEncap", "feature_map_permute"}


def test_star_import_gives_the_released_names():
    namespace = {}
    exec("from memae_fused.released import *", namespace)
    for name in ("MemoryUnit", "MemModule", "hard_shrink_relu", "EntropyLoss", "EntropyLossEncap",
                 "feature_map_permute"):
        assert name in namespace


def test_hard_shrink_relu_is_the_released_formula():
    w = torch.rand(50, 30, dtype=torch.float64)
    lam = 0.3
    want = torch.clamp(w - lam, min=0) * w / ((w - lam).abs() + 1e-12)
    torch.testing.assert_close(hard_shrink_relu(w, lambd=lam), want, rtol=0, atol=0)
    torch.testing.assert_close(hard_shrink_relu(w), w * w / (w.abs() + 1e-12))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_released_training_loop_float64_matches_reference(backend):
    frames = torch.randn(2, 1, 8, 12, 12, dtype=torch.float64)
    ours, ref, _ = paired_models(40, 8, frames, backend)
    loss, entropy, grads = released_step(ours, frames)
    ref_loss, ref_entropy, ref_grads = reference_step(ref, frames)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=0)
    torch.testing.assert_close(entropy, ref_entropy, rtol=1e-10, atol=0)
    assert entropy > 0.1  # the addressing is spread, so the entropy term is exercised
    # Absolute slack on the scale of all gradients: the conv bias before BatchNorm has a
    # gradient of pure rounding noise.
    scale = max(r.abs().max().item() for r in ref_grads)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10 * scale)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_released_training_loop_float32_matches_reference(backend):
    frames = torch.randn(2, 1, 8, 12, 12, dtype=torch.float64)
    ours, ref, _ = paired_models(40, 8, frames, backend, dtype=torch.float32, seed=1)
    eager = ReleasedStyleAE(python_ref.MemModule(40, 8, ref.mem_rep.memory.shrink_thres), 8)
    eager.load_state_dict(ref.state_dict())
    loss, entropy, grads = released_step(ours, frames.float())
    want_loss, want_entropy, want_grads = reference_step(ref.double(), frames)
    eager_loss, eager_entropy, eager_grads = reference_step(eager, frames.float())
    check_against_reference("loss", loss, want_loss.detach(), eager_loss)
    check_against_reference("entropy", entropy, want_entropy.detach(), eager_entropy)
    for i, (g, w, e) in enumerate(zip(grads, want_grads, eager_grads)):
        check_against_reference(f"grad {i}", g, w, e)


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "reference"])
def test_released_loop_never_builds_a_q_by_n_tensor(backend):
    num_slots, channels = 500, 4
    mod = MemModule(mem_dim=num_slots, fea_dim=channels, shrink_thres=0.0025, backend=backend)
    x = torch.randn(2, channels, 4, 8, 8, requires_grad=True)
    queries = 2 * 4 * 8 * 8
    with LargestTensor() as seen:
        res = mod(x)
        loss = (res["output"] - x).square().mean() + 0.0002 * EntropyLossEncap()(res["att"])
        loss.backward()
    assert not res["att"].is_materialized
    assert seen.largest < queries * num_slots / 10, seen.largest
    # The same loop on the reference builds them.
    ref = python_ref.MemModule(num_slots, channels, 0.0025)
    with LargestTensor() as seen_ref:
        reference_entropy_loss(ref(x)["att"]).backward()
    assert seen_ref.largest >= queries * num_slots


@pytest.mark.parametrize("shape", [(5, 6), (3, 6, 7), (2, 6, 4, 5), (2, 6, 3, 4, 5)],
                         ids=["rank2", "rank3", "rank4", "rank5"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_ranks_2_to_5_match_reference(shape, backend):
    torch.manual_seed(3)
    x = torch.randn(*shape, dtype=torch.float64)
    ref = python_ref.MemModule(30, 6, 0.0).double()
    query = x.movedim(1, -1).reshape(-1, 6)
    lam = safe_threshold(weights(query, ref.memory.weight.detach(), "dot", 1.0), 2.0 / 30)
    ref.memory.shrink_thres = lam
    ours = MemModule(30, 6, lam, backend=backend).double()
    ours.load_state_dict(ref.state_dict())
    got, want = ours(x), ref(x)
    assert got["output"].shape == x.shape
    assert got["att"].shape == (shape[0], 30, *shape[2:]) == want["att"].shape
    torch.testing.assert_close(got["output"], want["output"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got["att"], want["att"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(EntropyLossEncap()(got["att"]), reference_entropy_loss(want["att"]),
                               rtol=1e-10, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_memory_unit_on_flat_queries(backend):
    torch.manual_seed(4)
    unit = MemoryUnit(25, 6, 0.0, backend=backend).double()
    ref = python_ref.MemoryUnit(25, 6, 0.0).double()
    ref.load_state_dict(unit.state_dict())
    x = torch.randn(40, 6, dtype=torch.float64)
    got, want = unit(x), ref(x)
    assert list(got) == ["output", "att"] and got["att"].shape == (40, 25)
    torch.testing.assert_close(got["output"], want["output"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(EntropyLoss()(got["att"]), want["entropy"].mean(), rtol=1e-10,
                               atol=0)
    torch.testing.assert_close(got["att"], want["att"], rtol=1e-10, atol=1e-12)


def test_att_as_a_tensor_materialises_once_and_is_differentiable():
    torch.manual_seed(5)
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    ours = MemModule(20, 6, 0.0).double()
    ref = python_ref.MemModule(20, 6, 0.0).double()
    ref.load_state_dict(ours.state_dict())
    att = ours(x)["att"]
    assert isinstance(att, torch.Tensor) and isinstance(att, LazyAttention)
    # Metadata without computing anything.
    assert att.shape == (2, 20, 3, 4) and att.dim() == 4 and att.size(1) == 20
    assert att.dtype == torch.float64 and att.device.type == "cpu" and att.numel() == 480
    assert not att.is_materialized
    # Indexing, arithmetic, numpy: computed once, the released module's values.
    want = ref(x)["att"]
    torch.testing.assert_close(att[0, :, 1, 2], want[0, :, 1, 2], rtol=1e-10, atol=1e-12)
    assert att.is_materialized
    assert att.detach().cpu().numpy().shape == (2, 20, 3, 4)
    # A loss of one's own on it, and a copy's entropy loss: gradients as through the released att.
    (grad_ours,) = torch.autograd.grad(reference_entropy_loss(att) + att[:, 3].sum(), x)
    (grad_ref,) = torch.autograd.grad(reference_entropy_loss(want) + want[:, 3].sum(), x)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=1e-10, atol=1e-12)
    assert feature_map_permute(att).shape == (24, 20)


def test_att_under_no_grad_carries_no_graph():
    mod = MemModule(20, 6)
    x = torch.randn(2, 6, 3, 4, requires_grad=True)
    with torch.no_grad():
        att = mod(x)["att"]
    assert not att.materialize().requires_grad  # even though it is computed outside no_grad


def test_entropy_loss_with_another_eps_uses_the_weights():
    mod = MemModule(20, 6, 0.0).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    att = mod(x)["att"]
    got = EntropyLossEncap(eps=1e-6)(att)
    assert att.is_materialized
    rows = att.materialize().movedim(1, -1).reshape(-1, 20)
    torch.testing.assert_close(got, (-(rows * torch.log(rows + 1e-6)).sum(1)).mean())


def test_checkpoints_load_strictly_in_both_directions():
    ref = ReleasedStyleAE(python_ref.MemModule(30, 8, 0.0025))
    ours = ReleasedStyleAE(MemModule(mem_dim=30, fea_dim=8, shrink_thres=0.0025))
    ours.load_state_dict(ref.state_dict(), strict=True)
    torch.testing.assert_close(ours.mem_rep.memory.weight, ref.mem_rep.memory.weight)
    other = ReleasedStyleAE(python_ref.MemModule(30, 8, 0.0025))
    other.load_state_dict(ours.state_dict(), strict=True)
    assert "mem_rep.memory.weight" in ours.state_dict()


def test_backend_keyword_and_environment(monkeypatch):
    assert MemModule(10, 4, backend="reference").memory.backend == "reference"
    monkeypatch.setenv(released.BACKEND_ENV, "reference")
    assert MemModule(10, 4).memory.backend == "reference"
    assert MemModule(10, 4, backend="auto").memory.backend == "auto"
    monkeypatch.setenv(released.BACKEND_ENV, "fastest")
    with pytest.raises(ValueError, match="backend"):
        MemModule(10, 4)


def test_bad_input_names_the_problem():
    mod = MemModule(10, 4)
    with pytest.raises(ValueError, match="fea_dim=4"):
        mod(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="rank|got"):
        mod(torch.randn(4))
    with pytest.raises(ValueError, match="fea_dim"):
        MemoryUnit(10, 4)(torch.randn(2, 4, 3))
