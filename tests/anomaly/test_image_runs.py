"""Image runs end to end through the memae-fused command on data written here: the one-class
protocol on the bundled digits, an MVTec-layout folder and an anomalib Folder layout with
DAAD and MemAE, evaluation metrics on a known case, the one-class benchmark's table."""

import json

import numpy as np
import pytest
import torch

from data_folders import make_folder, make_mvtec, write_image
from memae_fused.anomaly import cli
from memae_fused.anomaly.data import ArrayImageSet, ImageDataset
from memae_fused.anomaly.evaluate_images import evaluate_images
from memae_fused.anomaly.models import ModelConfig
from memae_fused.anomaly.train import read_checkpoint

TINY = ["--epochs", "1", "--batch-size", "4", "--no-progress"]


def run(argv, capsys):
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def ok(argv, capsys):
    status, out, err = run(argv, capsys)
    assert status == 0, err
    return out


def results_of(folder):
    return json.loads((folder / "eval" / "results.json").read_text())


@pytest.mark.parametrize("model", ["memae", "daad"])
def test_digits_one_class_run(tmp_path, capsys, model):
    out = tmp_path / model
    stdout = ok(["train", "--data", "digits", "--normal-class", "3", "--model", model, "--out", out,
                 *TINY], capsys)
    assert "on digits-3: 128 images of 32x32" in stdout
    ok(["evaluate", "--checkpoint", out / "checkpoint.pt", "--no-plots"], capsys)
    results = results_of(out)
    assert results["test_images"] == 540 and results["anomalous_images"] == 540 - 55
    assert results["image_score"] == "mean"  # the MemAE paper's reconstruction error
    for key in ("image_auroc", "image_auroc_max", "image_auroc_mean"):
        assert 0 <= results[key] <= 1
    assert set(results["auroc_by_kind"]) == {str(k) for k in range(10) if k != 3}
    assert "pixel_auroc" not in results
    # A resume takes the run's own settings, the normal class and model included; the run's
    # own values given again are no conflict.
    ok(["train", "--out", out, "--resume", "--epochs", "2", "--no-progress"], capsys)
    if model == "daad":
        ok(["train", "--out", out, "--resume", "--epochs", "2", "--division", "1,4,4"], capsys)
    assert read_checkpoint(out / "checkpoint.pt")["data_config"]["normal_class"] == 3


def test_mvtec_folder_with_daad_and_memae(tmp_path, capsys):
    make_mvtec(tmp_path / "mvtec")
    status, stdout, err = run(["check-data", "--data", f"mvtec:{tmp_path / 'mvtec'}", "--category",
                               "bottle", "--size", "32"], capsys)
    assert status == 0 and "3 training images, 5 test images (3 anomalous; masks" in stdout, err
    for model in ("daad", "memae"):
        out = tmp_path / model
        ok(["train", "--data", f"mvtec:{tmp_path / 'mvtec' / 'bottle'}", "--size", "32",
            "--model", model, "--out", out, *TINY], capsys)
        stdout = ok(["evaluate", "--checkpoint", out / "checkpoint.pt"], capsys)
        results = results_of(out)
        assert results["image_score"] == "max"  # anomalib's
        assert 0 <= results["pixel_auroc"] <= 1 and 0 <= results["aupro"] <= 1
        assert set(results["auroc_by_kind"]) == {"crack", "broken"}
        assert "pixel AUROC" in stdout and (out / "eval" / "overlays.png").stat().st_size > 0
    assert tuple(read_checkpoint(tmp_path / "daad" / "checkpoint.pt")["model_config"]["division"]) == (1, 8, 8)


def test_color_reaches_the_loader(tmp_path, capsys):
    out = tmp_path / "rgb"
    ok(["train", "--data", "digits", "--normal-class", "2", "--color", "rgb", "--out", out, *TINY], capsys)
    assert read_checkpoint(out / "checkpoint.pt")["model_config"]["in_channels"] == 3


def test_folder_layout_run(tmp_path, capsys):
    root = make_folder(tmp_path / "parts")
    out = tmp_path / "run"
    ok(["train", "--data", f"folder:{root}", "--model", "ae", "--normal-dir", "good", "--abnormal-dir", "bad",
        "--normal-test-dir", "good_test", "--mask-dir", "masks", "--color", "gray", "--size", "16",
        "--flips", "--out", out, *TINY], capsys)
    ok(["evaluate", "--checkpoint", out / "checkpoint.pt", "--no-plots", "--image-score", "mean"], capsys)
    results = results_of(out)
    assert results["test_images"] == 4 and results["image_score"] == "mean" and "aupro" in results


def test_image_errors_are_one_line(tmp_path, capsys):
    make_mvtec(tmp_path / "mvtec")
    write_image(tmp_path / "mvtec" / "bottle" / "train" / "good" / "broken.png", 10).write_bytes(b"junk")
    cases = [
        (["train", "--data", "digits", "--out", tmp_path / "r"], "--normal-class"),
        (["train", "--data", "digits", "--normal-class", "12", "--out", tmp_path / "r"], "--normal-class"),
        (["train", "--data", "synthetic", "--normal-class", "1", "--out", tmp_path / "r"],
         "--normal-class applies to image data"),
        (["train", "--data", "synthetic", "--model", "daad", "--out", tmp_path / "r"],
         "--model daad applies to image data"),
        (["train", "--data", f"mvtec:{tmp_path / 'nope'}", "--out", tmp_path / "r"], "does not exist"),
        (["train", "--data", f"mvtec:{tmp_path / 'mvtec' / 'bottle'}", "--size", "32", "--out",
          tmp_path / "r"], "broken.png"),
        (["train", "--data", "digits", "--normal-class", "1", "--model", "daad", "--size", "36",
          "--out", tmp_path / "r"], "divisible by 2^3"),
        (["one-class", "--models", "memae,vae", "--out", tmp_path / "r"], "--models: vae"),
        (["one-class", "--data", "synthetic-defects", "--out", tmp_path / "r"], "no one-class set"),
        (["one-class", "--classes", "3,12", "--out", tmp_path / "r"], "--classes: the one-class sets"),
        (["train", "--data", "digits", "--normal-class", "1", "--clip-len", "4", "--out", tmp_path / "r"],
         "--clip-len does not apply"),
        (["train", "--data", "digits", "--normal-class", "1", "--full", "--out", tmp_path / "r"],
         "--preset / --full does not apply"),
        (["train", "--data", "digits", "--normal-class", "1", "--division", "1,2,2", "--out",
          tmp_path / "r"], "--division does not apply to --model memae"),
        (["train", "--data", "digits", "--normal-class", "1", "--model", "mnad-pred", "--out",
          tmp_path / "r"], "--model mnad-pred does not apply to image data"),
        (["train", "--data", "synthetic-defects", "--size", "64x32", "--out", tmp_path / "r"],
         "square images"),
        (["train", "--data", "mvtec:", "--out", tmp_path / "r"], "names no folder"),
    ]
    for argv, fragment in cases:
        status, _, err = run(argv, capsys)
        lines = err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and fragment in lines[0], (argv, err)
        assert not (tmp_path / "r").exists()


def test_one_class_benchmark_table(tmp_path, capsys):
    stdout = ok(["one-class", "--models", "memae-nonspar,daad", "--classes", "0,7", "--seeds", "0-1",
                 "--epochs", "1", "--out", tmp_path / "bench", "--no-progress"], capsys)
    assert "| normal class | memae-nonspar | daad |" in stdout
    summary = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert len(summary["per_run"]) == 2 * 2 * 2 and summary["classes"] == [0, 7]
    for model in ("memae-nonspar", "daad"):
        per_class = summary["auroc"][model]
        runs = [r["auroc"] for r in summary["per_run"] if r["model"] == model and r["class"] == 7]
        assert per_class["7"] == pytest.approx(np.mean(runs))
        assert summary["mean_auroc"][model] == pytest.approx(np.mean(list(per_class.values())))
    table = (tmp_path / "bench" / "table.md").read_text().splitlines()
    assert table[0] == "| normal class | memae-nonspar | daad |" and table[-1].startswith("| mean |")
    assert (tmp_path / "bench" / "daad" / "seed1" / "class7" / "eval" / "results.json").is_file()


class Darkness(torch.nn.Module):
    """Reconstructs every image as black, so the anomaly map is each pixel's brightness."""

    def __init__(self):
        super().__init__()
        self.config = ModelConfig(variant="ae", dims=2, channels=(1,))

    def forward(self, x):
        return type("Out", (), {"recon": torch.full_like(x, -1.0)})()


def test_image_metrics_on_a_known_case(tmp_path):
    # Normal images are dark; anomalous ones carry a bright square where their mask is.
    images = np.full((6, 8, 8, 1), 10, np.uint8)
    masks = [None, None, None] + [np.zeros((8, 8), np.uint8) for _ in range(3)]
    for i, (top, left) in zip(range(3, 6), ((0, 0), (4, 4), (2, 5))):
        images[i, top:top + 3, left:left + 3] = 250
        masks[i][top:top + 3, left:left + 3] = 1
    data = ImageDataset("toy", ArrayImageSet(None, images[:3]), ArrayImageSet(None, images),
                        np.array([0, 0, 0, 1, 1, 1], np.uint8), masks, ["good"] * 3 + ["square"] * 3)
    results = evaluate_images(Darkness(), data, tmp_path, plots=True)
    assert results["image_auroc"] == results["image_auroc_mean"] == 1.0
    assert results["pixel_auroc"] == 1.0 and results["aupro"] == 1.0
    assert results["auroc_by_kind"] == {"square": 1.0}
    assert (tmp_path / "overlays.png").is_file() and (tmp_path / "roc.png").is_file()
