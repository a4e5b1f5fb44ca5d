"""Data for the anomaly-detection models: what a data set is (video.py), the embedded
synthetic set (synthetic.py), the on-disk layouts (folders.py), and DataConfig / load_dataset,
which pick one of them from a run's settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from memae_fused.anomaly.data.folders import load_frames_folder, load_ucsd
from memae_fused.anomaly.data.synthetic import ANOMALY_KINDS, SyntheticConfig, synthetic_dataset
from memae_fused.anomaly.data.video import (ArrayVideo, ClipDataset, ImageFolderVideo, Video,
                                             VideoDataset, VideoFileVideo, check_videos,
                                             frames_to_tensor)

__all__ = ["ANOMALY_KINDS", "ArrayVideo", "ClipDataset", "DataConfig", "ImageFolderVideo",
           "SyntheticConfig", "Video", "VideoDataset", "VideoFileVideo", "check_videos",
           "detect_format", "frames_to_tensor", "load_dataset", "load_frames_folder", "load_ucsd",
           "synthetic_dataset"]


@dataclass
class DataConfig:
    """Where the data comes from: source "synthetic" or a folder; format "auto" picks UCSD
    (Train/ and Test/) or frames-folder (training/ and testing/) from the folder's contents."""

    source: str = "synthetic"
    format: str = "auto"
    labels: Optional[str] = None
    size: Tuple[int, int] = (256, 256)
    synthetic: Optional[Dict] = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        return cls(**{**d, "size": tuple(d["size"])})


def detect_format(root: Path) -> str:
    """'ucsd' (Train/ and Test/) or 'frames' (training/ and testing/, or Avenue's
    training_videos/ and testing_videos/) from a data folder's contents."""
    if (root / "Train").is_dir():
        return "ucsd"
    if (root / "training").is_dir() or (root / "training_videos").is_dir():
        return "frames"
    raise FileNotFoundError(
        f"cannot tell the layout of {root}: expected Train/ and Test/ (UCSD), training/ and "
        "testing/ (frames folder: Avenue, ShanghaiTech) or training_videos/ and "
        "testing_videos/ (Avenue's video files); see --data-format")


def load_dataset(cfg: DataConfig, test: bool = True, with_labels: bool = True) -> VideoDataset:
    """The data set `cfg` names; test=False loads the training videos only (training needs
    neither test videos nor labels), with_labels=False the test videos without labels."""
    if cfg.source == "synthetic":
        return synthetic_dataset(SyntheticConfig(**(cfg.synthetic or {})))
    root = Path(cfg.source)
    if not root.is_dir():
        raise FileNotFoundError(f"--data: data folder {root} does not exist (or pass 'synthetic')")
    fmt = detect_format(root) if cfg.format == "auto" else cfg.format
    if fmt == "ucsd":
        return load_ucsd(root, tuple(cfg.size), test=test, with_labels=with_labels)
    if fmt == "frames":
        return load_frames_folder(root, cfg.labels, tuple(cfg.size), test=test,
                                  with_labels=with_labels)
    raise ValueError(f"format must be 'auto', 'ucsd' or 'frames', got {cfg.format!r}")
