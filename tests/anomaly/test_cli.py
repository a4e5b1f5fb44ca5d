"""The memae-fused command on small data folders written here: one-line errors and exit
status 2, --resume's checks, runs that are never overwritten, check-data, Ctrl-C."""

import argparse
import json
import shutil

import numpy as np
import pytest
import torch

from data_folders import make_frames_folder, make_ucsd, write_video
from memae_fused import backends
from memae_fused.anomaly import cli, train as train_module
from memae_fused.anomaly.train import read_checkpoint

# Seconds per run on a 2-core CPU: 16x16 frames, a two-stage encoder, N = 8.
TINY = ["--size", "16", "--channels", "4,8", "--num-slots", "8", "--epochs", "1",
        "--batch-size", "2", "--clip-len", "4", "--clip-stride", "2", "--no-progress"]


@pytest.fixture
def avenue(tmp_path):
    root = tmp_path / "avenue"
    make_frames_folder(root)
    return root


def run(argv, capsys):
    """(exit status, stdout, stderr) of memae-fused with these arguments."""
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own exits
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status, err, *fragments):
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memae-fused: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def train_tiny(data, out, capsys, *extra):
    status, stdout, err = run(["train", "--data", data, "--out", out, *TINY, *extra], capsys)
    assert status == 0, err
    return stdout


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("argv, fragments", [
    (["train", "--out", "{tmp}/r", "--data", "{tmp}/nope"], ["--data", "nope does not exist"]),
    (["train", "--out", "{tmp}/r", "--data", "{tmp}"], ["cannot tell the layout", "--data-format"]),
    (["train", "--out", "{tmp}/r", "--data", "{tmp}/avenue", "--data-format", "ucsd"],
     ["Train is not a folder"]),
    (["train", "--out", "{tmp}/r", "--lr", "abc"], ["argument --lr: invalid float value: 'abc'"]),
    (["train", "--out", "{tmp}/r", "--size", "0"], ["argument --size"]),
    (["train", "--out", "{tmp}/r", "--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
    (["train"], ["--out"]),
    (["train", "--out", "{tmp}/r", "--amp", "fp16", "--device", "cpu"], ["--amp fp16 needs a CUDA device"]),
    (["train", "--out", "{tmp}/r", "--device", "gpu7"], ["--device: 'gpu7' is not a device"]),
    (["train", "--out", "{tmp}/r", "--backend", "cuda", "--device", "cpu"], ["--backend"]),
    (["train", "--out", "{tmp}/r", "--epochs", "0"], ["argument --epochs: must be >= 1, got 0"]),
    (["evaluate", "--checkpoint", "{tmp}/missing.pt"], ["missing.pt does not exist"]),
    (["evaluate", "--checkpoint", "{tmp}/avenue/frame_labels_toy.npy"], ["cannot read checkpoint"]),
    (["check-data", "--data", "{tmp}/nope"], ["nope does not exist"]),
    (["evaluate", "--checkpoint", "x.pt", "--batch-size", "-1"], ["argument --batch-size: must be >= 1"]),
    (["evaluate", "--checkpoint", "x.pt", "--batch-size", "0"], ["argument --batch-size: must be >= 1"]),
    (["train", "--out", "{tmp}/r", "--size", "32x"], ["argument --size"]),
    (["train", "--out", "{tmp}/r", "--channels", "4,,8"], ["argument --channels"]),
    (["train", "--out", "{tmp}/r", "--entropy-weight", "-1"], ["argument --entropy-weight: must be >= 0"]),
    (["train", "--out", "{tmp}/r", "--shrink-thres", "2"], ["argument --shrink-thres: must be >= 0 and < 1.0"]),
    (["train", "--out", "{tmp}/r", "--lr", "0"], ["argument --lr: must be > 0"]),
    (["train", "--out", "{tmp}/avenue/frame_labels_toy.npy"], ["frame_labels_toy.npy is a file"]),
])
def test_expected_errors_are_one_line(tmp_path, avenue, capsys, argv, fragments):
    status, _, err = run([a.format(tmp=tmp_path) for a in argv], capsys)
    assert_one_line_error(status, err, *fragments)
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists() and (tmp_path / "avenue" / "frame_labels_toy.npy").is_file()


def test_debug_shows_the_traceback(tmp_path, capsys):
    status, _, err = run(["train", "--out", tmp_path / "r", "--data", tmp_path / "nope", "--debug"], capsys)
    assert status == 2 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("memae-fused: error: --data")


def test_internal_errors_keep_their_traceback(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "train", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["train", "--out", str(tmp_path / "r")])


def test_every_option_has_help():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == {"train", "evaluate", "check-data", "one-class", "demo"}
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.option_strings)
    train_help = subparsers.choices["train"].format_help()
    for backend in backends.BACKENDS:
        assert backend in train_help
    evaluate_size = next(a for a in subparsers.choices["evaluate"]._actions if a.dest == "size")
    assert "preset" not in evaluate_size.help and "checkpoint" in evaluate_size.help


def test_full_is_the_paper_preset():
    args = cli.build_parser().parse_args(["train", "--full", "--out", "x"])
    model_cfg, data_cfg, train_cfg = cli.configs_from_args(args)
    assert args.preset == "paper"
    assert model_cfg.channels == (96, 128, 256, 256) and model_cfg.num_slots == 2000
    assert data_cfg.size == (256, 256) and train_cfg.lr == 1e-4 and train_cfg.epochs == 60


def test_train_options():
    args = cli.build_parser().parse_args(
        ["train", "--out", "x", "--preset", "paper", "--model", "memae-nonspar", "--size", "128",
         "--num-slots", "500", "--similarity", "dot", "--temperature", "1", "--clip-len", "8"])
    model_cfg, data_cfg, train_cfg = cli.configs_from_args(args)
    assert model_cfg.channels == (96, 128, 256, 256) and model_cfg.decoder_channels == (256, 128, 96)
    assert model_cfg.num_slots == 500 and model_cfg.similarity == "dot"
    assert model_cfg.effective_shrink_thres == 0 and model_cfg.effective_entropy_weight == 0
    assert data_cfg.size == (128, 128) and data_cfg.synthetic["size"] == 128
    assert train_cfg.clip_len == 8 and train_cfg.lr == 1e-4


# ----------------------------------------------------------------------------- resume, overwrite


def test_resume_without_checkpoint_names_the_path(tmp_path, capsys):
    status, _, err = run(["train", "--out", tmp_path / "typo", "--resume", "--epochs", "100"], capsys)
    assert_one_line_error(status, err, f"--resume: no checkpoint at {tmp_path / 'typo' / 'checkpoint.pt'}")
    assert not (tmp_path / "typo").exists()


def test_resume_refuses_conflicting_options(avenue, tmp_path, capsys):
    out = tmp_path / "run"
    train_tiny(avenue, out, capsys)
    before = (out / "checkpoint.pt").read_bytes()
    status, _, err = run(["train", "--out", out, "--resume", "--lr", "0.5", "--model", "ae",
                          "--data", "synthetic", "--preset", "paper"], capsys)
    assert_one_line_error(status, err, "--lr: checkpoint 0.001, given 0.5",
                          "--model: checkpoint 'memae', given 'ae'",
                          f"--data: checkpoint {str(avenue)!r}, given 'synthetic'",
                          "--preset paper (num_slots): checkpoint 8, given 2000",
                          "only --epochs, --workers, --device and --no-progress may change")
    assert (out / "checkpoint.pt").read_bytes() == before
    # The run's own values, repeated, and the runtime options are no conflict.
    status, stdout, err = run(["train", "--out", out, "--resume", "--data", f"{avenue}/", *TINY[:-3],
                               "--epochs", "2", "--workers", "0", "--device", "cpu", "--no-progress"],
                              capsys)
    assert status == 0, err
    assert "resuming" in stdout and read_checkpoint(out / "checkpoint.pt")["epoch"] == 2
    status, _, err = run(["train", "--out", out, "--resume", "--overwrite"], capsys)
    assert_one_line_error(status, err, "--resume and --overwrite")
    status, stdout, err = run(["train", "--out", out, "--resume", "--epochs", "1"], capsys)
    assert status == 0 and "has 2 epochs already (--epochs 1)" in stdout, err


def test_relative_data_paths_hold_from_another_folder(avenue, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(avenue.parent)
    train_tiny("avenue", "run", capsys)
    assert read_checkpoint(tmp_path / "run" / "checkpoint.pt")["data_config"]["source"] == str(avenue)
    monkeypatch.chdir(tmp_path.parent)
    out = f"{tmp_path.name}/run"
    status, _, err = run(["train", "--out", out, "--resume", "--epochs", "2", "--data",
                          f"{tmp_path.name}/avenue", "--no-progress"], capsys)
    assert status == 0, err
    status, _, err = run(["evaluate", "--checkpoint", f"{out}/checkpoint.pt", "--no-plots",
                          "--no-progress"], capsys)
    assert status == 0, err


def test_an_existing_run_is_never_overwritten(avenue, tmp_path, capsys):
    out = tmp_path / "run"
    train_tiny(avenue, out, capsys, "--seed", "1")
    before = (out / "checkpoint.pt").read_bytes()
    status, _, err = run(["train", "--data", avenue, "--out", out, *TINY], capsys)
    assert_one_line_error(status, err, f"--out {out} already holds a run", "--resume", "--overwrite")
    assert (out / "checkpoint.pt").read_bytes() == before
    train_tiny(avenue, out, capsys, "--overwrite")
    assert read_checkpoint(out / "checkpoint.pt")["train_config"]["seed"] == 0
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 1


def test_demo_refuses_before_building_its_data(tmp_path, capsys, monkeypatch):
    """What training would refuse (fp16 on the CPU, a folder that holds a run) the demo
    refuses first, before its banner and before it builds the synthetic set."""
    from memae_fused.anomaly import demo

    def no_data(*args, **kwargs):
        raise AssertionError("the synthetic set was built")

    monkeypatch.setattr(demo, "load_dataset", no_data)
    status, out, err = run(["demo", "--out", tmp_path, "--device", "cpu", "--amp", "fp16"],
                           capsys)
    assert_one_line_error(status, err, "--amp fp16 needs a CUDA device")
    assert out == ""
    (tmp_path / "ae").mkdir()
    (tmp_path / "ae" / "train_log.jsonl").write_text("{}\n")
    status, out, err = run(["demo", "--out", tmp_path, "--device", "cpu"], capsys)
    assert_one_line_error(status, err, f"--out {tmp_path / 'ae'} already holds a run")
    assert out == ""


def test_checkpoint_writes_are_atomic(avenue, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    train_tiny(avenue, out, capsys)
    real_save = torch.save

    def save_then_fail(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        with open(path, "r+b") as f:
            f.truncate(100)
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", save_then_fail)
    status, _, err = run(["train", "--out", out, "--resume", "--epochs", "2", "--no-progress"], capsys)
    assert_one_line_error(status, err, "No space left on device")
    assert read_checkpoint(out / "checkpoint.pt")["epoch"] == 1


# ----------------------------------------------------------------------------- data


def test_training_needs_no_labels_but_evaluation_does(avenue, tmp_path, capsys):
    (avenue / "frame_labels_toy.npy").rename(tmp_path / "labels.npy")
    stdout = train_tiny(avenue, tmp_path / "run", capsys)
    assert "checkpoint: " in stdout
    ckpt = tmp_path / "run" / "checkpoint.pt"
    status, _, err = run(["evaluate", "--checkpoint", ckpt, "--no-plots", "--no-progress"], capsys)
    assert_one_line_error(status, err, "frame_labels_<name>.npy", "--labels")
    status, stdout, err = run(["evaluate", "--checkpoint", ckpt, "--data", avenue, "--labels",
                               tmp_path / "labels.npy", "--no-plots", "--no-progress"], capsys)
    assert status == 0, err
    assert json.loads((tmp_path / "run" / "eval" / "results.json").read_text())["frames"] == 16
    # UCSD without Test/: training works, evaluation says what is missing.
    ucsd = tmp_path / "UCSDped2"
    make_ucsd(ucsd)
    shutil.rmtree(ucsd / "Test")
    train_tiny(ucsd, tmp_path / "ucsd_run", capsys)
    status, _, err = run(["evaluate", "--checkpoint", tmp_path / "ucsd_run" / "checkpoint.pt",
                          "--no-plots"], capsys)
    assert_one_line_error(status, err, "Test is not a folder")


def test_memae_on_rgb_frames_and_evaluate_at_another_size(avenue, tmp_path, capsys):
    # --color rgb reads the frames folder in colour and builds a 3-channel MemAE; evaluate
    # keeps the channels, and --size alone (no --data) rescales the checkpoint's data.
    train_tiny(avenue, tmp_path / "run", capsys, "--color", "rgb")
    ckpt = tmp_path / "run" / "checkpoint.pt"
    assert read_checkpoint(ckpt)["model_config"]["in_channels"] == 3
    status, _, err = run(["evaluate", "--checkpoint", ckpt, "--no-progress"], capsys)
    assert status == 0, err
    assert (tmp_path / "run" / "eval" / "examples.png").is_file()
    assert json.loads((tmp_path / "run" / "eval" / "results.json").read_text())["color"] == "rgb"
    status, out, err = run(["check-data", "--data", avenue, "--color", "rgb", "--size", "24"],
                           capsys)
    assert status == 0 and "read as 24 x 24 rgb" in out, err
    status, _, err = run(["check-data", "--data", "synthetic", "--color", "rgb"], capsys)
    assert_one_line_error(status, err, "--color rgb: the synthetic video set is grayscale")
    status, _, err = run(["evaluate", "--checkpoint", ckpt, "--size", "24", "--out",
                          tmp_path / "eval24", "--no-plots", "--no-progress"], capsys)
    assert status == 0, err
    assert json.loads((tmp_path / "eval24" / "results.json").read_text())["frames"] == 16


def test_check_data_lists_every_unreadable_file_and_train_refuses_them(avenue, tmp_path, capsys):
    status, stdout, err = run(["check-data", "--data", avenue], capsys)
    assert status == 0, err
    assert "2 training videos, 11 readable frames" in stdout and "2 videos, 16 readable frames, 8 labelled anomalous" in stdout
    bad_train = avenue / "training" / "frames" / "02" / "0003.jpg"
    bad_train.write_bytes(b"not an image")
    bad_test = avenue / "testing" / "frames" / "01" / "0001.jpg"
    bad_test.write_bytes(bad_test.read_bytes()[:30])
    status, stdout, err = run(["check-data", "--data", avenue], capsys)
    assert_one_line_error(status, err, "2 problem(s)")
    assert str(bad_train) in stdout and str(bad_test) in stdout
    status, _, err = run(["train", "--data", avenue, "--out", tmp_path / "run", *TINY], capsys)
    assert_one_line_error(status, err, "1 unreadable training input(s)", str(bad_train))
    assert not (tmp_path / "run").exists()
    (avenue / "frame_labels_toy.npy").unlink()
    bad_train.unlink()
    status, stdout, err = run(["check-data", "--data", avenue], capsys)
    assert_one_line_error(status, err, "2 problem(s)")
    assert "needed by evaluate, not by train" in stdout and str(bad_test) in stdout
    assert "test set: 2 videos, 16 readable frames, no labels" in stdout


def test_check_data_decodes_every_file(tmp_path, capsys):
    ucsd = tmp_path / "UCSDped2"
    make_ucsd(ucsd)
    frame = ucsd / "Train" / "Train001" / "002.tif"
    frame.write_bytes(frame.read_bytes()[:300])  # a valid header, truncated pixels
    videos = tmp_path / "avenue"
    write_video(videos / "training_videos" / "01.avi", [50] * 6)
    for name in ("02.avi", "03.avi"):
        (videos / "training_videos" / name).write_bytes(b"not a video")
    write_video(videos / "testing_videos" / "01.avi", [100] * 5)
    np.save(videos / "frame_labels_avenue.npy", np.zeros(5, np.uint8))
    status, stdout, err = run(["check-data", "--data", ucsd], capsys)
    assert_one_line_error(status, err, "1 problem(s)")
    assert str(frame) in stdout
    status, stdout, err = run(["check-data", "--data", videos], capsys)
    assert_one_line_error(status, err, "3 problem(s)")
    assert "02.avi" in stdout and "03.avi" in stdout and "1 training videos" not in stdout
    assert "3 training videos, 6 readable frames" in stdout
    assert "no test frame is labelled anomalous, so AUROC is undefined" in stdout


def test_an_undefined_auroc_is_said_and_written_as_null(avenue, tmp_path, capsys):
    np.save(avenue / "frame_labels_toy.npy", np.zeros(16, np.uint8))
    train_tiny(avenue, tmp_path / "run", capsys)
    status, _, err = run(["evaluate", "--checkpoint", tmp_path / "run" / "checkpoint.pt",
                          "--no-plots", "--no-progress"], capsys)
    assert status == 0 and "warning: the AUROC is undefined" in err
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert results["auc"] is None


def test_backend_and_device_are_logged_and_recorded(avenue, tmp_path, capsys):
    backend = backends.resolve("auto", torch.device("cpu"))
    stdout = train_tiny(avenue, tmp_path / "run", capsys, "--device", "cpu")
    assert f"on cpu, amp=none, memory backend {backend} (auto)" in stdout
    record = json.loads((tmp_path / "run" / "train_log.jsonl").read_text())
    assert record["backend"] == backend and record["device"] == "cpu"
    status, _, err = run(["evaluate", "--checkpoint", tmp_path / "run" / "checkpoint.pt",
                          "--device", "cpu", "--no-plots", "--no-progress"], capsys)
    assert status == 0, err
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert results["backend"] == backend and results["device"] == "cpu"


# ----------------------------------------------------------------------------- Ctrl-C


def interrupt_on_save(monkeypatch, number):
    """Ctrl-C as checkpoint save `number` (1-based) begins."""
    real_save = train_module.save_checkpoint
    calls = []

    def save(state, path):
        calls.append(state["epoch"])
        if len(calls) == number:
            raise KeyboardInterrupt
        real_save(state, path)

    monkeypatch.setattr(train_module, "save_checkpoint", save)


def test_ctrl_c_says_how_to_resume(avenue, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    interrupt_on_save(monkeypatch, 3)
    status, _, err = run(["train", "--data", avenue, "--out", out, *TINY, "--epochs", "4"], capsys)
    assert status == 130 and "Traceback" not in err
    assert f"interrupted after epoch 2; resume with: memae-fused train --out {out} --resume" in err
    assert read_checkpoint(out / "checkpoint.pt")["epoch"] == 2
    monkeypatch.undo()
    status, _, err = run(["train", "--out", out, "--resume", "--no-progress"], capsys)
    assert status == 0, err
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]


def test_ctrl_c_before_the_first_checkpoint_leaves_no_folder(avenue, tmp_path, capsys, monkeypatch):
    interrupt_on_save(monkeypatch, 1)
    status, _, err = run(["train", "--data", avenue, "--out", tmp_path / "run", *TINY], capsys)
    assert status == 130 and "nothing saved" in err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- evaluate


def test_resume_then_evaluate_on_the_synthetic_set(tmp_path, capsys):
    out = tmp_path / "run"
    synthetic = ["--size", "32", "--channels", "4,8,8", "--num-slots", "16", "--batch-size", "4",
                 "--clip-len", "8", "--clip-stride", "8", "--no-progress"]
    status, _, err = run(["train", "--out", out, "--epochs", "1", *synthetic], capsys)
    assert status == 0, err
    status, stdout, err = run(["train", "--out", out, "--resume", "--epochs", "2", "--no-progress"], capsys)
    assert status == 0 and "resuming" in stdout, err
    status, stdout, err = run(["evaluate", "--checkpoint", out / "checkpoint.pt", "--no-plots",
                               "--no-progress"], capsys)
    assert status == 0, err
    assert "memae on synthetic: frame-level AUROC" in stdout and "non-zero weights per query" in stdout
    results = json.loads((out / "eval" / "results.json").read_text())
    assert set(results["auc_by_kind"]) == {"spatial", "temporal", "spatio-temporal"}
    assert results["trained_epochs"] == 2
    assert np.isfinite(results["auc"])
