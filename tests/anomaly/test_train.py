"""Training, exact resume, evaluation metrics on known cases, the CLI, and DDP with gloo."""

import contextlib
import json
import os
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from data_folders import make_ucsd
from memae_fused.anomaly.data import ArrayVideo, DataConfig, VideoDataset, load_dataset
from memae_fused.anomaly.evaluate import addressing_stats, evaluate, regularity, video_errors
from memae_fused.anomaly.metrics import auroc, roc_curve
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


def test_training_videos_shorter_than_a_clip_are_named(tmp_path):
    model_cfg, data_cfg, train_cfg = tiny(epochs=1)
    full = load_dataset(data_cfg, test=False)
    short = ArrayVideo("short_one", full.train[0].frames(0, 5))
    dataset = VideoDataset(name="mixed", train=[*full.train, short], test=[], labels=None)
    lines = []
    train(model_cfg, data_cfg, train_cfg, tmp_path, dataset=dataset, log=lines.append)
    warned = [line for line in lines if line.startswith("warning:")]
    assert warned == ["warning: 1 of 3 training videos are shorter than --clip-len 8 and give "
                      "no clips: short_one (5 frames)"]


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
    with pytest.raises(ValueError, match="--amp fp16 needs a CUDA device"):
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


def test_auroc_is_the_mann_whitney_statistic():
    # scikit-learn's AUROC against the rank statistic it equals (ties counted one half).
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(1)
    scores = rng.integers(0, 30, 400).astype(float)
    labels = rng.random(400) < 0.2 + scores / 60
    u = mannwhitneyu(scores[labels], scores[~labels]).statistic
    assert auroc(scores, labels) == pytest.approx(u / (labels.sum() * (~labels).sum()), abs=1e-12)


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


def test_example_plot_names_frames_as_the_files_do(tmp_path, monkeypatch):
    import matplotlib.figure

    root = tmp_path / "UCSDped2"
    make_ucsd(root)
    figures = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        figures[Path(path).name] = [(ax.get_ylabel(), ax.get_title()) for ax in fig.axes]
        real_savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    data = load_dataset(DataConfig(source=str(root), size=(8, 8)))
    evaluate(BlackReconstruction(), data, clip_len=1, out_dir=tmp_path / "eval", progress=False)
    labels = figures["examples.png"]
    # Test001's anomalous span starts at its file 002.tif; each error map has a colour bar.
    assert labels[0][0] == "Test001\nframe 002.tif"
    rows = [title for _, title in labels].count("input")
    assert rows == 2 and [title for _, title in labels[:3]] == ["input", "reconstruction", "|error|"]
    assert [ylabel for ylabel, _ in labels].count("per-pixel L2 error on [-1, 1]") == rows


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


# ----------------------------------------------------------------------------- DDP


def _ddp_worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    model_cfg, data_cfg, train_cfg = tiny(epochs=1, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(model_cfg, data_cfg, train_cfg, out_dir, log=quiet)
    torch.save(summary["model"].state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    with open(os.path.join(out_dir, f"warnings{rank}.txt"), "w") as f:
        f.write("\n".join(str(w.message) for w in caught))


def _ddp_cli_worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from memae_fused.anomaly import cli

    with open(os.path.join(out_dir, f"stdout{rank}.txt"), "w") as f, contextlib.redirect_stdout(f):
        status = cli.main(["train", "--out", os.path.join(out_dir, "run"), "--size", "32",
                           "--channels", "4,8", "--num-slots", "8", "--epochs", "1",
                           "--batch-size", "4", "--clip-len", "8", "--clip-stride", "16",
                           "--device", "cpu", "--no-progress"])
    assert status == 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gloo_two_processes(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
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
    for rank in (0, 1):
        assert "Grad strides do not match" not in (tmp_path / f"warnings{rank}.txt").read_text()


def test_ddp_cli_prints_from_rank_0_only(tmp_path):
    mp.spawn(_ddp_cli_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0 = (tmp_path / "stdout0.txt").read_text()
    assert rank0.count("checkpoint: ") == 1 and "2 process(es) on cpu" in rank0
    assert (tmp_path / "stdout1.txt").read_text() == ""
