"""Training, exact resume, evaluation metrics on known cases, the CLI, and DDP with gloo."""

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from memae_fused.anomaly import cli
from memae_fused.anomaly.data import ArrayVideo, DataConfig, VideoDataset
from memae_fused.anomaly.evaluate import (addressing_stats, auroc, evaluate, regularity, roc_curve,
                                  video_errors)
from memae_fused.anomaly.models import AEOutput, ModelConfig, build_model
from memae_fused.anomaly.train import TrainConfig, load_model, read_checkpoint, train

TINY_SYNTHETIC = dict(size=32, radius=5, speed=2.5, frames_per_video=32, num_train_videos=2,
                      num_test_videos_per_kind=1, anomaly_frames=8, margin=6)


def tiny(variant="memae", epochs=2, **train_kw):
    return (ModelConfig(variant=variant, channels=(4, 8, 8), num_slots=16),
            DataConfig(source="synthetic", size=(32, 32), synthetic=TINY_SYNTHETIC),
            TrainConfig(**{**dict(epochs=epochs, batch_size=4, lr=3e-3, clip_len=8,
                                  clip_stride=4, progress=False), **train_kw}))


def quiet(*args):
    pass


def test_short_training_run(tmp_path):
    model_cfg, data_cfg, train_cfg = tiny(epochs=3)
    summary = train(model_cfg, data_cfg, train_cfg, tmp_path, log=quiet)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert log[-1]["recon"] < log[0]["recon"]
    assert all(r["entropy"] > 0 for r in log)
    model, ckpt = load_model(summary["checkpoint"])
    assert ckpt["epoch"] == 3 and not model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, summary["model"].state_dict()[name])


def test_resume_continues_exactly(tmp_path):
    model_cfg, data_cfg, train_cfg = tiny(epochs=2)
    straight = read_checkpoint(train(model_cfg, data_cfg, train_cfg, tmp_path / "a",
                                     log=quiet)["checkpoint"])
    _, _, one_epoch = tiny(epochs=1)
    train(model_cfg, data_cfg, one_epoch, tmp_path / "b", log=quiet)
    resumed = read_checkpoint(train(model_cfg, data_cfg, train_cfg, tmp_path / "b", resume=True,
                                    log=quiet)["checkpoint"])
    assert resumed["epoch"] == 2
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    for a, b in zip(straight["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight["history"][1]["loss"] == resumed["history"][1]["loss"]


def test_resume_rejects_changed_settings(tmp_path):
    model_cfg, data_cfg, train_cfg = tiny(epochs=1)
    train(model_cfg, data_cfg, train_cfg, tmp_path, log=quiet)
    _, _, other = tiny(epochs=2, lr=1e-4)
    with pytest.raises(ValueError, match="training settings differ"):
        train(model_cfg, data_cfg, other, tmp_path, resume=True, log=quiet)


def test_fp16_on_cpu_is_refused(tmp_path):
    model_cfg, data_cfg, train_cfg = tiny(epochs=1, amp="fp16", device="cpu")
    with pytest.raises(ValueError, match="fp16 autocast needs a CUDA device"):
        train(model_cfg, data_cfg, train_cfg, tmp_path, log=quiet)


def test_bf16_training_on_cpu(tmp_path):
    model_cfg, data_cfg, train_cfg = tiny(epochs=1, amp="bf16")
    summary = train(model_cfg, data_cfg, train_cfg, tmp_path, log=quiet)
    assert np.isfinite(summary["last_epoch"]["loss"])


# ----------------------------------------------------------------------------- metrics


def test_auroc_known_cases():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert auroc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert auroc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5
    # One positive tied with one of two negatives: (1 + 0.5) / 2.
    assert auroc([0.2, 0.5, 0.5], [0, 0, 1]) == pytest.approx(0.75)
    assert np.isnan(auroc([1, 2], [1, 1]))


def test_roc_curve_area_matches_auroc():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, 500).astype(float)  # many ties
    labels = rng.random(500) < 0.3 + scores / 40
    fpr, tpr = roc_curve(scores, labels)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)
    assert area == pytest.approx(auroc(scores, labels), abs=1e-12)


def test_regularity():
    e = np.array([np.nan, 2.0, 4.0, 3.0, np.nan])
    p = regularity(e)
    assert np.isnan(p[0]) and np.isnan(p[-1])
    assert p[1:4].tolist() == [1.0, 0.0, 0.5]
    assert regularity(np.array([np.nan, 5.0, 5.0]))[1:].tolist() == [1.0, 1.0]


class BlackReconstruction(torch.nn.Module):
    """A stand-in model that always reconstructs black frames, so a clip's error is its mean
    brightness in [0, 2]."""

    def __init__(self):
        super().__init__()
        self.config = ModelConfig(variant="ae")
        self.memory = None

    def forward(self, x, return_att=False):
        return AEOutput(torch.full_like(x, -1.0), x.new_zeros(()), None)


def test_errors_are_assigned_to_the_centre_frame():
    frames = (np.arange(10, dtype=np.uint8) * 20)[:, None, None].repeat(4, 1).repeat(4, 2)
    errors = video_errors(BlackReconstruction(), frames, clip_len=4, batch_size=3, device="cpu")
    # Clip s covers frames s..s+3 and is scored at frame s + 2.
    assert np.isnan(errors[:2]).all() and np.isnan(errors[-1:]).all()
    want = [(frames[s:s + 4].astype(float) / 127.5).mean() for s in range(7)]
    assert np.allclose(errors[2:9], want)


def test_evaluate_on_a_known_case(tmp_path):
    # Bright frames are the anomalous ones; with one-frame clips the error separates them.
    labels = [np.array([0, 0, 1, 1, 0, 0, 1, 0], np.uint8), np.array([0, 1, 0, 0, 0, 0], np.uint8),
              np.array([1, 0, 0, 0, 1], np.uint8)]
    rng = np.random.default_rng(0)
    videos = [ArrayVideo(f"v{i}", np.where(lab[:, None, None] > 0, 200, rng.integers(0, 50, (len(lab), 1, 1)))
                         .astype(np.uint8).repeat(8, 1).repeat(8, 2)) for i, lab in enumerate(labels)]
    data = VideoDataset("toy", videos[:1], videos, labels, kinds=["a", "b", "a"])
    results = evaluate(BlackReconstruction(), data, clip_len=1, out_dir=tmp_path, progress=False)
    assert results["auc"] == 1.0 and results["auc_raw_error"] == 1.0
    assert results["auc_by_kind"] == {"a": 1.0, "b": 1.0}
    assert results["frames"] == results["frames_scored"] == 19
    assert results["addressing"] is None
    assert json.loads((tmp_path / "results.json").read_text())["auc"] == 1.0
    for name in ("regularity.png", "roc.png", "examples.png", "scores.npz"):
        assert (tmp_path / name).stat().st_size > 0
    # Dark anomalies: the same separation, upside down.
    flipped = VideoDataset("toy", videos[:1], videos, [1 - l for l in labels])
    assert evaluate(BlackReconstruction(), flipped, 1, tmp_path, plots=False, progress=False)["auc"] == 0.0


def test_addressing_stats_are_sparse_but_not_empty():
    torch.manual_seed(0)
    model = build_model(ModelConfig(channels=(4, 8, 8), num_slots=40)).eval()
    stats = addressing_stats(model, torch.randn(3, 1, 8, 16, 16))
    assert stats["queries"] == 3 * 1 * 2 * 2 and stats["num_slots"] == 40
    assert 1 <= stats["nonzero_per_query_mean"] < 40
    assert stats["empty_row_fraction"] == 0.0
    assert 1 <= stats["slots_used"] <= 40 and 0 < stats["effective_slots"] <= stats["slots_used"]
    assert addressing_stats(build_model(ModelConfig(variant="ae", channels=(4,))),
                            torch.randn(1, 1, 2, 4, 4)) is None


# ----------------------------------------------------------------------------- CLI


def test_cli_resume_and_evaluate(tmp_path, capsys):
    model_cfg, data_cfg, train_cfg = tiny(epochs=1)
    train(model_cfg, data_cfg, train_cfg, tmp_path / "run", log=quiet)
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--resume", "--epochs", "2",
                     "--no-progress"]) == 0
    assert read_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 2
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"),
                     "--no-plots", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "memae on synthetic: frame-level AUROC" in out
    assert "non-zero weights per query" in out
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert set(results["auc_by_kind"]) == {"spatial", "temporal", "spatio-temporal"}
    assert results["trained_epochs"] == 2


def test_cli_train_options():
    args = cli.build_parser().parse_args(
        ["train", "--out", "x", "--preset", "paper", "--model", "memae-nonspar", "--size", "128",
         "--num-slots", "500", "--similarity", "dot", "--temperature", "1", "--clip-len", "8"])
    model_cfg, data_cfg, train_cfg = cli.configs_from_args(args)
    assert model_cfg.channels == (96, 128, 256, 256) and model_cfg.decoder_channels == (256, 128, 96)
    assert model_cfg.num_slots == 500 and model_cfg.similarity == "dot"
    assert model_cfg.effective_shrink_thres == 0 and model_cfg.effective_entropy_weight == 0
    assert data_cfg.size == (128, 128) and data_cfg.synthetic["size"] == 128
    assert train_cfg.clip_len == 8 and train_cfg.lr == 1e-4


# ----------------------------------------------------------------------------- DDP


def _ddp_worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    model_cfg, data_cfg, train_cfg = tiny(epochs=1, device="cpu")
    summary = train(model_cfg, data_cfg, train_cfg, out_dir, log=quiet)
    torch.save(summary["model"].state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))


def test_ddp_gloo_two_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    ckpt = read_checkpoint(tmp_path / "checkpoint.pt")
    for name, value in rank0.items():
        if name.endswith("num_batches_tracked") or "running_" in name:
            continue  # BatchNorm statistics are per process
        assert torch.equal(value, rank1[name]), name
        assert torch.equal(value, ckpt["model"][name]), name
    assert ckpt["epoch"] == 1
    init = build_model(tiny()[0])
    assert not torch.equal(rank0["memory.memory"], init.memory.memory.detach())
