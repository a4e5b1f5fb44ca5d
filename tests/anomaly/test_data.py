"""memae_fused.anomaly.data: the synthetic set, clips, and loaders on small folders written here."""

import shutil

import numpy as np
import pytest
import torch
from memae_fused.anomaly.data import (ANOMALY_KINDS, ClipDataset, DataConfig, SyntheticConfig,
                                      check_videos, detect_format, load_dataset,
                                      load_frames_folder, load_ucsd, synthetic_dataset)
from data_folders import make_frames_folder, make_ucsd, write_frames, write_video

SIZE = (24, 32)


# ----------------------------------------------------------------------------- synthetic


def centroid_steps(frames):
    ys, xs = np.mgrid[:frames.shape[1], :frames.shape[2]]
    w = frames.astype(np.float64)
    c = np.stack([(w * ys).sum((1, 2)), (w * xs).sum((1, 2))], 1) / w.sum((1, 2))[:, None]
    return np.linalg.norm(np.diff(c, axis=0), axis=1)


def test_synthetic_set_is_deterministic_and_labelled():
    cfg = SyntheticConfig(size=48, frames_per_video=40, num_train_videos=2,
                          num_test_videos_per_kind=2, anomaly_frames=10, margin=8, seed=3)
    a, b = synthetic_dataset(cfg), synthetic_dataset(cfg)
    assert len(a.train) == 2 and len(a.test) == 6
    assert a.kinds == [k for k in ANOMALY_KINDS for _ in range(2)]
    for va, vb in zip(a.train + a.test, b.train + b.test):
        assert np.array_equal(va.frames(), vb.frames())
        assert va.frames().shape == (40, 48, 48) and va.frames().dtype == np.uint8
    for lab in a.labels:
        idx = np.nonzero(lab)[0]
        assert len(idx) == 10 and idx[-1] - idx[0] == 9
        assert idx[0] >= 8 and idx[-1] < 40 - 8
    assert not np.array_equal(synthetic_dataset(SyntheticConfig(seed=4, size=48)).train[0].frames(),
                              synthetic_dataset(SyntheticConfig(seed=3, size=48)).train[0].frames())


@pytest.mark.parametrize("kind, shape, factor", [(k, *v) for k, v in ANOMALY_KINDS.items()])
def test_synthetic_anomalies_change_shape_and_speed(kind, shape, factor):
    # One object per video: its area tells the shape, its centroid steps the speed.
    cfg = SyntheticConfig(size=96, frames_per_video=60, max_objects=1, anomaly_frames=20,
                          margin=10, num_train_videos=1, num_test_videos_per_kind=1)
    data = synthetic_dataset(cfg)
    i = data.kinds.index(kind)
    frames, lab = data.test[i].frames(), data.labels[i].astype(bool)
    area = frames.astype(np.float64).sum((1, 2)) / 255
    r = cfg.radius
    assert np.allclose(area[~lab], np.pi * r * r, rtol=0.03)
    want_area = (2 * r) ** 2 if shape == "square" else np.pi * r * r
    assert np.allclose(area[lab], want_area, rtol=0.03)
    steps = centroid_steps(frames)
    inside = lab[:-1] & lab[1:]
    assert np.median(steps[~lab[:-1] & ~lab[1:]]) == pytest.approx(cfg.speed, rel=0.05)
    assert np.median(steps[inside]) == pytest.approx(cfg.speed * factor, rel=0.05)


def test_synthetic_config_errors():
    with pytest.raises(ValueError, match="frames_per_video"):
        SyntheticConfig(frames_per_video=20, anomaly_frames=10, margin=8)
    with pytest.raises(ValueError, match="no room"):
        SyntheticConfig(size=24)


def test_clip_dataset():
    data = synthetic_dataset(SyntheticConfig(size=32, radius=5, speed=2.5, frames_per_video=30,
                                             anomaly_frames=6, margin=8, num_train_videos=2))
    clips = ClipDataset(data.train, clip_len=8, stride=3)
    assert len(clips) == 2 * len(range(0, 30 - 8 + 1, 3))
    x = clips[len(clips) - 1]
    assert x.shape == (1, 8, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.max() > 0.9 and x.min() == -1
    vi, start = clips.index[-1]
    want = data.train[vi].frames(start, start + 8).astype(np.float32) / 127.5 - 1
    assert torch.allclose(x[0], torch.from_numpy(want))
    with pytest.raises(ValueError, match="no video has 40 frames"):
        ClipDataset(data.train, clip_len=40)


# ----------------------------------------------------------------------------- UCSD


def test_ucsd_loader(tmp_path):
    root = tmp_path / "UCSDped2"
    make_ucsd(root)
    data = load_ucsd(root, SIZE)
    assert [v.name for v in data.train] == ["Train001", "Train002"]
    assert [v.name for v in data.test] == ["Test001", "Test002"]
    assert [len(v) for v in data.train] == [5, 4]
    frames = data.test[1].frames(1, 3)
    assert frames.shape == (2, *SIZE) and frames.dtype == np.uint8 and (frames == 40).all()
    assert data.labels[0].tolist() == [0, 0, 1, 1, 0, 0]  # from the masks
    assert data.labels[1].tolist() == [1, 1, 0, 0, 0, 1, 1]  # from the .m file
    assert load_dataset(DataConfig(source=str(root), size=SIZE)).labels[1].tolist() == data.labels[1].tolist()


def test_ucsd_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Train is not a folder"):
        load_ucsd(tmp_path, SIZE)
    root = tmp_path / "ped"
    make_ucsd(root, with_m_file=False)
    with pytest.raises(FileNotFoundError, match="no labels for Test002"):
        load_ucsd(root, SIZE)
    (root / "Test" / "Test001_gt" / "005.bmp").unlink()
    (root / "Test" / "UCSDped2.m").write_text("TestVideoFile{end+1}.gt_frame = [3:4];\n"
                                              "TestVideoFile{end+1}.gt_frame = [5:9];\n")
    with pytest.raises(ValueError, match="5 masks but Test001 has 6 frames"):
        load_ucsd(root, SIZE)
    shutil.rmtree(root / "Test" / "Test001_gt")
    with pytest.raises(ValueError, match="outside Test002's 7 frames"):
        load_ucsd(root, SIZE)
    (root / "Train" / "Train003").mkdir()
    with pytest.raises(ValueError, match="holds no image frames"):
        load_ucsd(root, SIZE)


# ----------------------------------------------------------------------------- frames folder


def test_frames_folder_loader(tmp_path):
    root = tmp_path / "avenue"
    make_frames_folder(root)
    data = load_frames_folder(root, size=SIZE)
    assert data.name == "toy"
    assert [len(v) for v in data.train] == [5, 6] and [len(v) for v in data.test] == [4, 12]
    assert data.labels[0].tolist() == [0, 1, 1, 0]
    assert data.labels[1].tolist() == [0] * 6 + [1] * 6
    # JPEG is lossy: compare loosely, but the order must follow the frame numbers.
    means = data.test[1].frames().reshape(12, -1).mean(1)
    assert np.all(np.abs(means - np.arange(0, 120, 10)) < 3)
    auto = load_dataset(DataConfig(source=str(root), size=SIZE))
    assert [v.name for v in auto.test] == ["01", "02"]


def test_frames_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_frames_folder(tmp_path / "nope", size=SIZE)
    root = tmp_path / "shanghaitech"
    (root / "training").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no training videos"):
        load_frames_folder(root, size=SIZE)
    root = tmp_path / "a"
    make_frames_folder(root)
    np.save(root / "frame_labels_toy.npy", np.zeros(15, np.uint8))
    with pytest.raises(ValueError, match="has 15 labels but the 2 test videos have 16 frames"):
        load_frames_folder(root, size=SIZE)
    np.save(root / "frame_labels_other.npy", np.zeros(16, np.uint8))
    with pytest.raises(FileNotFoundError, match="exactly one frame_labels"):
        load_frames_folder(root, size=SIZE)
    assert load_frames_folder(root, root / "frame_labels_other.npy", SIZE).name == "other"
    np.save(root / "frame_labels_other.npy", np.full(16, 2, np.uint8))
    with pytest.raises(ValueError, match="only 0 and 1"):
        load_frames_folder(root, root / "frame_labels_other.npy", SIZE)
    with pytest.raises(FileNotFoundError, match="cannot tell the layout"):
        load_dataset(DataConfig(source=str(tmp_path)))


def test_video_files(tmp_path):
    # Avenue's original layout, found by format "auto": training_videos/01.avi, testing_videos/.
    root = tmp_path / "avenue"
    write_video(root / "training_videos" / "01.avi", [50] * 6)
    write_video(root / "testing_videos" / "01.avi", [100] * 5)
    write_video(root / "testing_videos" / "02.mp4", [200] * 3)
    np.save(root / "frame_labels_avenue.npy", np.array([0, 0, 1, 1, 0, 1, 0, 0], np.uint8))
    data = load_dataset(DataConfig(source=str(root), size=SIZE))
    assert [len(v) for v in data.train] == [6] and [len(v) for v in data.test] == [5, 3]
    frames = data.test[1].frames()
    assert frames.shape == (3, *SIZE) and abs(frames.mean() - 200) < 8
    assert data.labels[1].tolist() == [1, 0, 0]
    clips = ClipDataset(data.train, clip_len=4)
    assert len(clips) == 3 and clips[0].shape == (1, 4, *SIZE)
    (root / "training_videos" / "bad.avi").write_bytes(b"not a video")
    with pytest.raises(OSError, match="cannot decode video"):
        len(load_dataset(DataConfig(source=str(root), size=SIZE)).train[1])
    data = load_dataset(DataConfig(source=str(root), size=SIZE), test=False)
    problems = check_videos(data.train)
    assert len(problems) == 1 and problems[0].startswith(f"{root / 'training_videos' / 'bad.avi'}: ")


def test_rgb_frames_keep_their_colours(tmp_path):
    # Frames folder of coloured JPEGs and a video file: channels=3 keeps R, G, B apart (in
    # that order, up to compression), clips are (3, T, H, W); channels=1 reads the same
    # files as gray.
    colour = (200, 40, 90)
    root = tmp_path / "colour"
    write_frames(root / "training" / "frames" / "01", [colour] * 5)
    write_video(root / "testing" / "videos" / "01.avi", [colour] * 4)
    np.save(root / "frame_labels_colour.npy", np.array([0, 1, 1, 0], np.uint8))
    data = load_dataset(DataConfig(source=str(root), size=SIZE, channels=3))
    for video, tolerance in ((data.train[0], 3), (data.test[0], 12)):
        frames = video.frames()
        assert frames.shape == (len(video), *SIZE, 3) and frames.dtype == np.uint8
        assert np.abs(frames.reshape(-1, 3).mean(0) - colour).max() < tolerance
    clip = ClipDataset(data.train, clip_len=4)[0]
    assert clip.shape == (3, 4, *SIZE)
    expected = torch.tensor(colour, dtype=torch.float32) / 127.5 - 1
    assert torch.allclose(clip.mean((1, 2, 3)), expected, atol=3 / 127.5)
    gray = load_dataset(DataConfig(source=str(root), size=SIZE), test=False).train[0].frames()
    luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    assert gray.shape == (5, *SIZE) and abs(gray.mean() - luma) < 3
    # UCSD is recorded in gray: read as RGB, its three channels are equal.
    make_ucsd(tmp_path / "ucsd")
    frames = load_ucsd(tmp_path / "ucsd", SIZE, channels=3).test[0].frames()
    assert frames.shape == (6, *SIZE, 3) and (frames == frames[..., :1]).all()
    with pytest.raises(ValueError, match="--color rgb: the synthetic video set is grayscale"):
        DataConfig(channels=3)
    with pytest.raises(ValueError, match="--color"):
        DataConfig(source=str(root), channels=2)


# ----------------------------------------------------------------------------- training only, checks


def test_layouts_are_detected(tmp_path):
    for folders, layout in ((("Train", "Test"), "ucsd"), (("Train",), "ucsd"),
                            (("training", "testing"), "frames"),
                            (("training_videos", "testing_videos"), "frames")):
        root = tmp_path / "_".join(folders)
        for folder in folders:
            (root / folder).mkdir(parents=True)
        assert detect_format(root) == layout
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="see --data-format"):
        detect_format(tmp_path / "empty")


def test_training_needs_neither_test_videos_nor_labels(tmp_path):
    root = tmp_path / "ped"
    make_ucsd(root)
    shutil.rmtree(root / "Test")
    data = load_dataset(DataConfig(source=str(root), size=SIZE), test=False)
    assert [len(v) for v in data.train] == [5, 4] and data.test == [] and data.labels == []
    with pytest.raises(FileNotFoundError, match="Test is not a folder"):
        load_dataset(DataConfig(source=str(root), size=SIZE))
    root = tmp_path / "avenue"
    make_frames_folder(root)
    (root / "frame_labels_toy.npy").unlink()
    shutil.rmtree(root / "testing")
    assert len(load_frames_folder(root, size=SIZE, test=False).train) == 2
    write_frames(root / "testing" / "frames" / "01", [30] * 4)
    with pytest.raises(FileNotFoundError, match="with --labels FILE"):
        load_frames_folder(root, size=SIZE)
    with pytest.raises(FileNotFoundError, match="--labels: label file .*nope.npy does not exist"):
        load_frames_folder(root, root / "nope.npy", SIZE)
    (root / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="--labels: .*bad.npy is not a NumPy .npy array"):
        load_frames_folder(root, root / "bad.npy", SIZE)
    np.save(root / "bad.npy", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"has shape \(2, 2\); expected \(F,\) or \(1, F\)"):
        load_frames_folder(root, root / "bad.npy", SIZE)


def test_check_finds_every_unreadable_frame(tmp_path):
    root = tmp_path / "avenue"
    make_frames_folder(root)
    data = load_frames_folder(root, size=SIZE)
    assert check_videos(data.train + data.test) == []
    garbage = root / "training" / "frames" / "01" / "0002.jpg"
    garbage.write_bytes(b"not an image")
    truncated = root / "testing" / "frames" / "02" / "7.jpg"
    truncated.write_bytes(truncated.read_bytes()[:40])
    problems = check_videos(data.train + data.test)
    assert len(problems) == 2
    assert problems[0].startswith(f"{garbage}: ") and problems[1].startswith(f"{truncated}: ")
    assert data.test[1].frame_name(0) == "0.jpg" and data.train[0].frame_name(4) == "0004.jpg"
