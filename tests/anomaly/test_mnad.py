"""MNAD's models, loss, training and scoring: shapes and the authors' layout, the loss
weights, items moved only by the rule, a short training run of each variant, the cosine
schedule, the score and the test-time update on a known case, and the command line."""

import json
import math

import numpy as np
import pytest
import torch

from memae_fused.anomaly import cli
from memae_fused.anomaly.data import ArrayVideo, DataConfig, VideoDataset
from memae_fused.anomaly.evaluate_mnad import evaluate_mnad, weighted_error
from memae_fused.anomaly.models import MNADConfig, build_model, loss_terms
from memae_fused.anomaly.models.mnad import MNADOutput
from memae_fused.anomaly.train import TrainConfig, epoch_lr, read_checkpoint, train
from data_folders import write_frames

TINY_SYNTHETIC = dict(size=32, radius=5, speed=2.5, frames_per_video=24, num_train_videos=2,
                      num_test_videos_per_kind=1, anomaly_frames=8, margin=6)


def tiny(variant, **kw):
    return MNADConfig(variant=variant, channels=(4, 8, 8), feature_dim=16, num_items=5, **kw)


@pytest.mark.parametrize("variant", ["mnad-pred", "mnad-recon"])
@pytest.mark.parametrize("use_memory", [True, False])
def test_shapes_and_outputs(variant, use_memory):
    config = tiny(variant, use_memory=use_memory, in_channels=3)
    model = build_model(config).train()
    x = torch.rand(2, 3, config.clip_len, 24, 40) * 2 - 1
    out = model(x, return_weights=True)
    assert out.recon.shape == out.target.shape == (2, 3, 24, 40)
    assert torch.equal(out.target, x[:, :, -1]) and out.recon.abs().max() <= 1
    assert out.queries.shape == (2, 16, 3, 5)
    assert (out.weights is not None) == use_memory
    if use_memory:
        assert out.weights.shape == (2, 5, 3, 5) and out.separateness > 0
    else:
        assert out.compactness == 0 and out.separateness == 0
    with pytest.raises(ValueError, match=f"expected clips \\(B, 3, {config.clip_len}, H, W\\)"):
        model(torch.zeros(2, 3, config.clip_len + 1, 24, 40))
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.zeros(2, 3, config.clip_len, 20, 40))


def test_the_authors_layout():
    pred, recon = build_model(MNADConfig("mnad-pred")), build_model(MNADConfig("mnad-recon"))
    assert pred.enc1[0].in_channels == 4 and recon.enc1[0].in_channels == 1
    assert pred.memory.items.shape == recon.memory.items.shape == (10, 512)
    assert pred.dec4[0].in_channels == 1024 and pred.dec3[0].in_channels == 512  # 256 + skip
    assert recon.up3[0].out_channels == 512 and recon.dec3[0].in_channels == 512  # no skips
    assert pred.head[0].in_channels == recon.head[0].in_channels == 128
    assert MNADConfig("mnad-pred").loss_weights == (0.1, 0.1)
    assert MNADConfig("mnad-recon").loss_weights == (0.01, 0.01)
    assert MNADConfig("mnad-recon", use_memory=False).loss_weights == (0.0, 0.0)


def test_loss_is_pixel_plus_weighted_memory_terms():
    config = tiny("mnad-pred")
    model = build_model(config).train()
    x = torch.rand(3, 1, 5, 16, 16) * 2 - 1
    out = model(x, update=False)
    total, terms = loss_terms(config, x, out)
    pixel = ((out.recon - x[:, :, -1]) ** 2).mean()
    torch.testing.assert_close(terms["recon"], pixel)
    torch.testing.assert_close(total, pixel + 0.1 * out.compactness + 0.1 * out.separateness)


def tiny_run(variant, out_dir, epochs=2, **model_kw):
    model_cfg = tiny(variant, **model_kw)
    data_cfg = DataConfig(source="synthetic", size=(32, 32), synthetic=TINY_SYNTHETIC)
    train_cfg = TrainConfig(epochs=epochs, batch_size=4, lr=1e-3, clip_len=model_cfg.clip_len,
                            clip_stride=3, progress=False, schedule="cosine")
    return model_cfg, data_cfg, train_cfg, train(model_cfg, data_cfg, train_cfg, out_dir, log=lambda *a: None)


@pytest.mark.parametrize("variant", ["mnad-pred", "mnad-recon"])
def test_short_training_run(tmp_path, variant):
    torch.manual_seed(0)
    initial = build_model(tiny(variant)).memory.items.clone()
    model_cfg, _, train_cfg, summary = tiny_run(variant, tmp_path)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert {"loss", "recon", "compactness", "separateness"} <= set(log[0])
    model = summary["model"]
    # The items are a buffer the rule moved, not a parameter the optimiser saw.
    assert all(p.data_ptr() != model.memory.items.data_ptr() for p in model.parameters())
    assert not torch.allclose(model.memory.items, initial)
    torch.testing.assert_close(model.memory.items.norm(dim=1), torch.ones(5))
    ckpt = read_checkpoint(tmp_path / "checkpoint.pt")
    assert torch.equal(ckpt["model"]["memory.items"], model.memory.items)


def test_cosine_schedule():
    cfg = TrainConfig(epochs=4, lr=2e-4, schedule="cosine")
    assert [epoch_lr(cfg, e) for e in range(4)] == pytest.approx(
        [2e-4 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    assert epoch_lr(TrainConfig(lr=1e-3), 3) == 1e-3


class KnownPredictor(torch.nn.Module):
    """Predicts every frame exactly except those brighter than 0 (the anomalies), which it
    predicts 0.4 off; a memory whose test-time updates are counted."""

    def __init__(self):
        super().__init__()
        self.config = MNADConfig("mnad-pred", num_items=3)
        self.memory = torch.nn.Module()
        self.updates = []
        self.memory.update_with = lambda q: self.updates.append(q.shape)

    def forward(self, clip, update=True, return_weights=False):
        target = clip[:, :, -1]
        bright = target.mean() > 0
        recon = target + (0.4 if bright else 0.0)
        q = torch.zeros(1, 4, 2, 2)
        weights = torch.zeros(1, 3, 2, 2)
        weights[:, 1] = 1.0  # every query picks item 1
        return MNADOutput(recon, target, torch.tensor(0.0), torch.tensor(0.0), q, weights)


def test_score_and_test_time_update_on_a_known_case(tmp_path):
    frames = np.full((12, 8, 8), 40, np.uint8)
    frames[7:10] = 220  # bright = anomalous
    labels = np.zeros(12, np.uint8)
    labels[7:10] = 1
    data = VideoDataset("toy", [ArrayVideo("a", frames)], [ArrayVideo("a", frames)], [labels])
    model = KnownPredictor()
    results = evaluate_mnad(model, data, tmp_path, plots=False)
    assert results["frames_scored"] == 12 - 4  # the first four frames have no full window
    assert results["auc"] == 1.0 and results["auc_psnr_only"] == 1.0
    # Updates after every well-predicted frame (error 0 < 0.01), none after the anomalies.
    assert results["test_time_updates"] == 8 - 3 == len(model.updates)
    assert results["item_usage"] == {"queries_per_item": [0, 32, 0], "most_used_fraction": 1.0,
                                     "unused_items": 2}


def test_weighted_error():
    recon, target = torch.tensor([0.5, 0.2, 0.9]), torch.tensor([0.1, 0.2, 0.4])
    e = (recon - target) ** 2
    w = 1 - torch.exp(-e)
    assert weighted_error(recon, target) == pytest.approx(float((w * e).sum() / w.sum()))


def test_command_line(tmp_path, capsys):
    common = ["--size", "32", "--channels", "4,8,8,16", "--num-slots", "4", "--epochs", "1",
              "--batch-size", "4", "--no-progress"]
    assert cli.main(["train", "--model", "mnad-recon", "--no-memory", "--out", str(tmp_path / "r"),
                     *common]) == 0
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "r" / "checkpoint.pt"), "--no-plots",
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "mnad-recon (no memory) on synthetic: frame-level AUROC" in out
    results = json.loads((tmp_path / "r" / "eval" / "results.json").read_text())
    assert results["item_usage"] is None and results["use_memory"] is False
    assert cli.main(["train", "--out", str(tmp_path / "r"), "--resume", "--epochs", "2",
                     "--model", "mnad-pred"]) == 2
    assert "--model: checkpoint 'mnad-recon', given 'mnad-pred'" in capsys.readouterr().err
    assert cli.main(["train", "--model", "memae", "--no-memory", "--out", str(tmp_path / "x")]) == 2
    assert "--no-memory applies to the MNAD models" in capsys.readouterr().err


def test_command_line_on_rgb_frames(tmp_path, capsys):
    # MNAD reads colour (as the authors train it on Avenue and ShanghaiTech): a hand-made
    # frames folder of coloured frames, trained and evaluated through the command line.
    root = tmp_path / "colour"
    rng = np.random.default_rng(0)
    for split, name in (("training", "01"), ("testing", "01"), ("testing", "02")):
        write_frames(root / split / "frames" / name,
                     [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(8)])
    np.save(root / "frame_labels_colour.npy", np.array([0] * 8 + [0] * 5 + [1] * 3, np.uint8))
    run = tmp_path / "run"
    assert cli.main(["train", "--model", "mnad-pred", "--data", str(root), "--color", "rgb",
                     "--size", "32", "--channels", "4,8,8,16", "--num-slots", "4", "--epochs", "1",
                     "--batch-size", "2", "--out", str(run), "--no-progress"]) == 0
    ckpt = read_checkpoint(run / "checkpoint.pt")
    assert ckpt["model_config"]["in_channels"] == 3 and ckpt["data_config"]["channels"] == 3
    assert cli.main(["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--no-progress"]) == 0
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["frames_scored"] == 2 * (8 - 4) and (run / "eval" / "roc.png").is_file()
    assert results["color"] == "rgb" and results["frame_size"] == [32, 32]
    with np.load(run / "eval" / "scores.npz") as scores:
        assert sorted(scores.files) == sorted(f"{v}/{k}" for v in ("01", "02")
                                              for k in ("score", "psnr", "distance", "label"))
        assert np.isnan(scores["02/score"][:4]).all() and scores["02/label"][5:].all()
    capsys.readouterr()
    # Another size is said; one the model cannot take fails and leaves no folder behind.
    assert cli.main(["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--size", "40",
                     "--out", str(tmp_path / "e40"), "--no-plots", "--no-progress"]) == 0
    assert "note: evaluating at 40 x 40; the model was trained at 32 x 32" in capsys.readouterr().out
    assert json.loads((tmp_path / "e40" / "results.json").read_text())["frame_size"] == [40, 40]
    assert cli.main(["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--size", "36",
                     "--out", str(tmp_path / "e36"), "--no-plots", "--no-progress"]) == 2
    assert "divisible by 8" in capsys.readouterr().err and not (tmp_path / "e36").exists()
    assert cli.main(["train", "--out", str(run), "--resume", "--color", "gray"]) == 2
    assert "--color: checkpoint 'rgb', given 'gray'" in capsys.readouterr().err
    # MNAD's size rule is checked before anything is built.
    assert cli.main(["train", "--model", "mnad-pred", "--size", "36", "--out",
                     str(tmp_path / "y")]) == 2
    out, err = capsys.readouterr()
    assert "--size: MNAD's frames must be divisible by 8" in err and "training" not in out
    assert cli.main(["train", "--color", "rgb", "--out", str(tmp_path / "x")]) == 2
    assert "--color rgb: the synthetic video set is grayscale" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_usage_term_enters_the_loss_only_when_weighted():
    x = torch.rand(2, 1, 1, 16, 16) * 2 - 1
    for weight in (0.0, 0.5):
        config = tiny("mnad-recon", usage_weight=weight)
        out = build_model(config).train()(x, update=False)
        total, terms = loss_terms(config, x, out)
        base = terms["recon"] + 0.01 * terms["compactness"] + 0.01 * terms["separateness"]
        if weight:
            torch.testing.assert_close(total, base + weight * out.usage_balance)
        else:
            assert "usage_balance" not in terms
            torch.testing.assert_close(total, base)


def test_a_training_step_with_the_usage_term_and_the_update():
    config = tiny("mnad-pred", usage_weight=0.1)
    model = build_model(config).train()
    before = model.memory.items.clone()
    x = torch.rand(2, 1, 5, 16, 16) * 2 - 1
    total, terms = loss_terms(config, x, model(x))  # the forward updates the items
    total.backward()
    assert "usage_balance" in terms and not torch.equal(model.memory.items, before)
    assert model.enc4[0].weight.grad is not None
