"""memae_fused.anomaly.models: shapes, the paper's architectures, ablation variants, loss, autocast."""

import pytest
import torch

from memae_fused.anomaly.models import (DAAD, DAADConfig, MemAE, ModelConfig, build_model, cifar_config,
                                      memae_loss, model_config_from_dict,
                                      mnist_config, video_config)


def small(**kw):
    return ModelConfig(**{**dict(channels=(4, 8, 8), num_slots=20), **kw})


@pytest.mark.parametrize("shape", [(2, 1, 16, 32, 32), (2, 1, 10, 30, 20), (1, 1, 3, 7, 9)])
def test_video_model_reconstructs_any_size(shape):
    torch.manual_seed(0)
    model = build_model(small())
    out = model(torch.randn(shape), return_att=True)
    assert out.recon.shape == shape
    assert out.entropy.dim() == 0 and out.entropy.item() > 0
    assert out.att.shape[:2] == (shape[0], 20) and out.att.dim() == 5


def test_paper_architectures():
    video = MemAE(video_config())
    enc = [stage[0] for stage in video.encoder]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in enc] == [
        (1, 96, (3, 3, 3), (2, 2, 2)), (96, 128, (3, 3, 3), (2, 2, 2)),
        (128, 256, (3, 3, 3), (2, 2, 2)), (256, 256, (3, 3, 3), (2, 2, 2))]
    dec = [stage.conv for stage in video.decoder]
    assert [(c.in_channels, c.out_channels) for c in dec] == [(256, 256), (256, 128), (128, 96), (96, 1)]
    # BatchNorm + activation after every layer but the last.
    assert not isinstance(video.decoder[-1].post, torch.nn.Sequential)
    assert all(isinstance(s.post, torch.nn.Sequential) for s in video.decoder[:-1])
    assert video.memory.memory.shape == (2000, 256)
    assert video.memory.shrink_thres == pytest.approx(1 / 2000)

    mnist = MemAE(mnist_config())
    assert mnist(torch.randn(2, 1, 28, 28)).recon.shape == (2, 1, 28, 28)
    assert mnist.encoder[0][0].kernel_size == (1, 1)
    assert [s.conv.out_channels for s in mnist.decoder] == [64, 32, 1]
    assert mnist.memory.memory.shape == (100, 64)
    cifar = MemAE(cifar_config())
    assert cifar(torch.randn(2, 3, 32, 32)).recon.shape == (2, 3, 32, 32)
    assert cifar.memory.memory.shape == (500, 256)


def test_variants():
    x = torch.randn(2, 1, 8, 16, 16)
    ae = build_model(small(variant="ae"))
    assert ae.memory is None
    out = ae(x, return_att=True)
    assert out.entropy.item() == 0 and out.att is None
    nonspar = build_model(small(variant="memae-nonspar", shrink_thres=0.1))
    assert nonspar.memory.shrink_thres == 0
    assert nonspar.config.effective_entropy_weight == 0
    # Without shrinkage every slot keeps a (softmax) weight.
    assert (nonspar(x, return_att=True).att > 0).all()
    memae = build_model(small(temperature=0.5, similarity="dot", shrink_thres=0.02))
    assert memae.memory.similarity == "dot" and memae.memory.temperature == 0.5
    assert memae.config.effective_entropy_weight == 0.0002


def test_loss_and_gradients_reach_memory():
    torch.manual_seed(0)
    model = build_model(small(entropy_weight=0.5))
    x = torch.randn(2, 1, 8, 16, 16)
    out = model(x)
    total, recon, entropy = memae_loss(x, out, model.config.effective_entropy_weight)
    assert recon.item() == pytest.approx(((out.recon - x) ** 2).mean().item(), rel=1e-6)
    assert total.item() == pytest.approx(recon.item() + 0.5 * entropy.item(), rel=1e-6)
    total.backward()
    assert model.memory.memory.grad.abs().sum() > 0
    assert model.encoder[0][0].weight.grad.abs().sum() > 0


def test_attention_rows_are_sparse_and_normalised():
    torch.manual_seed(0)
    model = build_model(small(num_slots=50)).eval()
    att = model(torch.randn(2, 1, 8, 16, 16), return_att=True).att
    rows = att.movedim(1, -1).reshape(-1, 50)
    sums = rows.sum(1)
    assert torch.allclose(sums[sums > 0], torch.ones_like(sums[sums > 0]), atol=1e-5)
    assert ((rows > 0).sum(1) < 50).all()


def test_bf16_autocast_on_cpu():
    torch.manual_seed(0)
    model = build_model(small())
    x = torch.randn(2, 1, 8, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        total, _, _ = memae_loss(x, out, 0.0002)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()
    assert model.memory.memory.grad.dtype == torch.float32


@pytest.mark.parametrize("kw, match", [
    (dict(variant="vae"), "variant"), (dict(dims=1), "dims"), (dict(channels=()), "channels"),
    (dict(decoder_channels=(4,)), "decoder_channels"), (dict(kernel_sizes=(3,)), "kernel_sizes"),
    (dict(activation="gelu"), "activation"), (dict(similarity="l2"), "similarity"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        build_model(small(**kw))


def test_wrong_input_shape():
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        build_model(small())(torch.randn(2, 1, 16, 16))


def test_config_round_trip():
    cfg = video_config(num_slots=10)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_daad_has_a_block_memory_on_every_scale():
    config = DAADConfig(in_channels=3, image_size=(32, 48), channels=(8, 16, 32), division=(2, 8, 8),
                        num_slots=20)
    assert config.scale_shapes() == [(8, 16, 24), (16, 8, 12), (32, 4, 6)]
    # gcd(8, 12) = 4, gcd(8, 6) = 2: the division is capped where a scale is smaller.
    assert config.scale_divisions() == [(2, 8, 8), (2, 8, 4), (2, 4, 2)]
    model = build_model(config)
    assert isinstance(model, DAAD) and [m.dim for m in model.memories] == [4 * 2 * 3, 8 * 1 * 3, 16 * 1 * 3]
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    out = model(x, return_att=True)
    assert out.recon.shape == x.shape and out.recon.abs().max() <= 1
    assert [a.shape for a in out.att] == [(2, 20, 2, 8, 8), (2, 20, 2, 8, 4), (2, 20, 2, 4, 2)]
    memae_loss(x, out, config.effective_entropy_weight)[0].backward()
    for memory in model.memories:
        assert memory.memory.grad is not None and memory.memory.grad.abs().sum() > 0
    assert model_config_from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"expected input \(B, 3, 32, 48\)"):
        model(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="must be divisible by 2\\^3 = 8"):
        DAADConfig(image_size=(30, 32), channels=(8, 16, 32))
