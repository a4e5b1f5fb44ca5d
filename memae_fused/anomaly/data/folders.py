"""Video data sets on disk: UCSD Ped1/Ped2 in their original layout, and the frames-folder
layout of Avenue and ShanghaiTech (frame images or video files)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from memae_fused.anomaly.data.video import (ImageFolderVideo, Size, Video, VideoDataset,
                                             VideoFileVideo, natural_key)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".avi", ".mp4", ".mov", ".mkv", ".webm"}


# UCSD Ped1/Ped2

def _image_files(folder: Path) -> List[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith(".")), key=natural_key)


def _numbered_dirs(folder: Path, prefix: str) -> List[Path]:
    pattern = re.compile(rf"{prefix}\d+$")
    return sorted((p for p in folder.iterdir() if p.is_dir() and pattern.match(p.name)),
                  key=natural_key)


def _frame_folder_video(folder: Path, size: Size, channels: int = 1) -> ImageFolderVideo:
    paths = _image_files(folder)
    if not paths:
        raise ValueError(f"video folder {folder} holds no image frames "
                         f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    return ImageFolderVideo(folder.name, paths, size, channels)


def _parse_ucsd_m_file(path: Path) -> List[List[Tuple[int, int]]]:
    """The `TestVideoFile{end+1}.gt_frame = [60:152, 170:180];` lines of UCSDped*.m, as
    1-based inclusive frame ranges per test video, in order."""
    spans = []
    for line in path.read_text(errors="replace").splitlines():
        match = re.search(r"gt_frame\s*=\s*\[([^\]]*)\]", line)
        if match:
            ranges = []
            for part in filter(None, (p.strip() for p in re.split(r"[,;]", match.group(1)))):
                bounds = part.split(":")
                if len(bounds) not in (1, 2) or not all(b.strip().isdigit() for b in bounds):
                    raise ValueError(f"{path}: cannot parse frame range {part!r} in {line.strip()!r}")
                ranges.append((int(bounds[0]), int(bounds[-1])))
            spans.append(ranges)
    return spans


def load_ucsd(root: Union[str, Path], size: Size = (256, 256), test: bool = True,
              with_labels: bool = True, channels: int = 1) -> VideoDataset:
    """UCSD Ped1/Ped2 as distributed: root/Train/Train001/001.tif ..., root/Test/Test001/...,
    pixel masks in root/Test/Test001_gt/ (a frame is anomalous if its mask has any non-zero
    pixel); test videos without a _gt folder take their frame ranges from the UCSDped*.m
    file in root/Test (Ped1 ships masks for only some videos). test=False loads the training
    videos only (Test/ is then not needed); with_labels=False loads the test videos without
    their labels (the data set's labels are then None). channels: 1 (grayscale, as UCSD is
    recorded) or 3 (the gray frames as RGB, for models built for colour)."""
    root = Path(root)
    layout = ("expected the UCSD layout: ROOT/Train/Train001/001.tif ..., "
              "ROOT/Test/Test001/001.tif ..., ROOT/Test/Test001_gt/001.bmp ...")
    for sub in ("Train", "Test") if test else ("Train",):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"{root / sub} is not a folder; {layout}")
    train_dirs = _numbered_dirs(root / "Train", "Train")
    if not train_dirs:
        raise FileNotFoundError(f"no Train### video folders under {root / 'Train'}; {layout}")
    train = [_frame_folder_video(d, size, channels) for d in train_dirs]
    if not test:
        return VideoDataset(root.name, train, [], [])
    test_dirs = _numbered_dirs(root / "Test", "Test")
    if not test_dirs:
        raise FileNotFoundError(f"no Test### video folders under {root / 'Test'}; {layout}")
    test = [_frame_folder_video(d, size, channels) for d in test_dirs]
    if not with_labels:
        return VideoDataset(root.name, train, test, None)
    m_files = sorted((root / "Test").glob("*.m"))
    m_spans = _parse_ucsd_m_file(m_files[0]) if m_files else None
    labels = []
    for index, video in enumerate(test):
        gt_dir = root / "Test" / f"{video.name}_gt"
        if gt_dir.is_dir():
            masks = ImageFolderVideo(gt_dir.name, _image_files(gt_dir), size)
            if len(masks) != len(video):
                raise ValueError(f"{gt_dir} has {len(masks)} masks but {video.name} has "
                                 f"{len(video)} frames")
            labels.append((masks.frames().reshape(len(masks), -1).max(axis=1) > 0).astype(np.uint8))
        elif m_spans is not None and index < len(m_spans):
            lab = np.zeros(len(video), np.uint8)
            for first, last in m_spans[index]:
                if not 1 <= first <= last <= len(video):
                    raise ValueError(f"{m_files[0]}: range {first}:{last} is outside "
                                     f"{video.name}'s {len(video)} frames")
                lab[first - 1:last] = 1
            labels.append(lab)
        else:
            raise FileNotFoundError(f"no labels for {video.name}: neither {gt_dir} nor a "
                                    f"gt_frame line for it in a UCSDped*.m file in {root / 'Test'} "
                                    "(both ship with the UCSD data set)")
    return VideoDataset(root.name, train, test, labels)


# Frames-folder layout (Avenue, ShanghaiTech)


def _split_videos(root: Path, split: str, size: Size, channels: int) -> List[Video]:
    """root/<split>/frames/<video>/<frame>.jpg, or video files in root/<split>/videos/ or
    root/<split>_videos/ (Avenue's original naming)."""
    frames_dir = root / split / "frames"
    if frames_dir.is_dir():
        dirs = sorted((d for d in frames_dir.iterdir() if d.is_dir() and not d.name.startswith(".")),
                      key=natural_key)
        if not dirs:
            raise FileNotFoundError(f"{frames_dir} holds no video folders")
        return [_frame_folder_video(d, size, channels) for d in dirs]
    for videos_dir in (root / split / "videos", root / f"{split}_videos"):
        if videos_dir.is_dir():
            files = sorted((p for p in videos_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES),
                           key=natural_key)
            if not files:
                raise FileNotFoundError(f"{videos_dir} holds no video files "
                                        f"({', '.join(sorted(VIDEO_SUFFIXES))})")
            return [VideoFileVideo(p.stem, p, size, channels) for p in files]
    raise FileNotFoundError(
        f"no {split} videos under {root}: expected {frames_dir}/<video>/<frame>.jpg, or video "
        f"files in {root / split / 'videos'} or {root / (split + '_videos')}")


def load_frames_folder(root: Union[str, Path], labels: Optional[Union[str, Path]] = None,
                       size: Size = (256, 256), test: bool = True,
                       with_labels: bool = True, channels: int = 1) -> VideoDataset:
    """The common layout of Avenue and ShanghaiTech: root/training/frames/01/0000.jpg ...,
    root/testing/frames/01/..., and a label file frame_labels_<name>.npy (one 0/1 entry per
    test frame, all test videos concatenated in sorted order; shape (1, F) or (F,)).
    `labels` defaults to the single frame_labels_*.npy in root. test=False loads the
    training videos only (no test videos or labels needed); with_labels=False loads the test
    videos without their labels (the data set's labels are then None). channels: 1
    (grayscale) or 3 (RGB)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    train = _split_videos(root, "training", size, channels)
    if not test:
        return VideoDataset(root.name, train, [], [])
    test = _split_videos(root, "testing", size, channels)
    if not with_labels:
        return VideoDataset(root.name, train, test, None)
    if labels is None:
        found = sorted(root.glob("frame_labels_*.npy"))
        if len(found) != 1:
            raise FileNotFoundError(
                f"expected exactly one frame_labels_<name>.npy in {root}, found "
                f"{[p.name for p in found] or 'none'}; pass the label file with --labels FILE")
        labels = found[0]
    labels = Path(labels)
    if not labels.is_file():
        raise FileNotFoundError(f"--labels: label file {labels} does not exist")
    try:
        array = np.load(labels)
    except (OSError, ValueError):
        raise ValueError(f"--labels: {labels} is not a NumPy .npy array (write one with "
                         "numpy.save)") from None
    if array.ndim not in (1, 2) or (array.ndim == 2 and array.shape[0] != 1):
        raise ValueError(f"--labels: {labels} has shape {array.shape}; expected (F,) or (1, F), "
                         "one entry per test frame")
    flat = array.reshape(-1)
    if not np.isin(flat, (0, 1)).all():
        raise ValueError(f"{labels} must hold only 0 and 1")
    lengths = [len(v) for v in test]
    if flat.size != sum(lengths):
        raise ValueError(f"{labels} has {flat.size} labels but the {len(test)} test videos "
                         f"have {sum(lengths)} frames")
    per_video = np.split(flat.astype(np.uint8), np.cumsum(lengths)[:-1])
    name = labels.stem[len("frame_labels_"):] if labels.stem.startswith("frame_labels_") else root.name
    return VideoDataset(name, train, test, per_video)
