"""Data for the anomaly-detection models. Video: what a data set is (video.py), the embedded
synthetic set (synthetic.py), the on-disk layouts (folders.py). Images (images.py): MVTec-AD,
anomalib's Folder layout, the one-class protocol on digits / MNIST / CIFAR-10, an embedded
synthetic defect set. DataConfig / load_dataset and ImageDataConfig / load_image_dataset pick
one of them from a run's settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from memae_fused.anomaly.data.folders import load_frames_folder, load_ucsd
from memae_fused.anomaly.data.images import (ArrayImageSet, FileImageSet, ImageDataset, ImageSet,
                                              ImageTensors, check_images, cifar10_one_class,
                                              digits_one_class, load_image_folder, load_mvtec,
                                              mnist_one_class, synthetic_defects)
from memae_fused.anomaly.data.synthetic import ANOMALY_KINDS, SyntheticConfig, synthetic_dataset
from memae_fused.anomaly.data.video import (ArrayVideo, ClipDataset, ImageFolderVideo, Video,
                                             VideoDataset, VideoFileVideo, check_videos,
                                             frames_to_tensor)

__all__ = ["ANOMALY_KINDS", "COLOR_CHANNELS", "ONE_CLASS_SOURCES", "ArrayImageSet", "ArrayVideo", "ClipDataset", "DataConfig",
           "FileImageSet", "ImageDataConfig", "ImageDataset", "ImageFolderVideo", "ImageSet",
           "ImageTensors", "SyntheticConfig", "Video", "VideoDataset", "VideoFileVideo",
           "check_images", "check_videos", "cifar10_one_class", "data_config_from_dict",
           "detect_format", "digits_one_class", "frames_to_tensor", "image_source_kind",
           "load_dataset", "load_frames_folder", "load_image_dataset", "load_image_folder",
           "load_mvtec", "load_ucsd", "mnist_one_class", "synthetic_dataset", "synthetic_defects"]


# --color's words and the channels they read frames and images with.
COLOR_CHANNELS = {"gray": 1, "rgb": 3}


@dataclass
class DataConfig:
    """Where the data comes from: source "synthetic" or a folder; format "auto" picks UCSD
    (Train/ and Test/) or frames-folder (training/ and testing/) from the folder's contents.
    channels: 1 (frames read as grayscale) or 3 (RGB; folders only, the synthetic set is
    grayscale)."""

    source: str = "synthetic"
    format: str = "auto"
    labels: Optional[str] = None
    size: Tuple[int, int] = (256, 256)
    synthetic: Optional[Dict] = None
    channels: int = 1

    def __post_init__(self):
        if self.channels not in COLOR_CHANNELS.values():
            raise ValueError(f"--color: frames have 1 (gray) or 3 (rgb) channels, got {self.channels}")
        if self.channels == 3 and self.source == "synthetic":
            raise ValueError("--color rgb: the synthetic video set is grayscale; use a data folder")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        return cls(**{**d, "size": tuple(d["size"])})


# Image data sources: "digits" (scikit-learn's bundled handwritten digits, one class normal),
# "synthetic-defects" (the embedded MVTec-like set) and "<kind>:PATH" for data on disk.
IMAGE_SOURCES = ("digits", "synthetic-defects")
IMAGE_PREFIXES = ("mvtec", "folder", "mnist", "cifar10")
ONE_CLASS_SOURCES = ("digits", "mnist", "cifar10")


def image_source_kind(source: str) -> Optional[str]:
    """"digits", "synthetic-defects", "mvtec", "folder", "mnist" or "cifar10" for an image
    source, None for a video source."""
    if source in IMAGE_SOURCES:
        return source
    prefix, sep, _ = source.partition(":")
    return prefix if sep and prefix in IMAGE_PREFIXES else None


@dataclass
class ImageDataConfig:
    """An image data set: source "digits", "synthetic-defects", "mvtec:PATH" (a category
    folder, or the MVTec root with `category`), "folder:PATH" (anomalib's Folder layout:
    PATH/<normal_dir> for training, PATH/<abnormal_dir> and PATH/<normal_test_dir> for
    testing, optional PATH/<mask_dir>), "mnist:PATH" or "cifar10:PATH". One-class sources
    (digits, mnist, cifar10) need normal_class. channels: 1 (grayscale) or 3 (RGB); flips:
    random horizontal and vertical flips of the training images."""

    source: str = "digits"
    normal_class: Optional[int] = None
    category: Optional[str] = None
    size: Tuple[int, int] = (32, 32)
    channels: int = 1
    flips: bool = False
    seed: int = 0
    normal_dir: str = "normal"
    abnormal_dir: str = "abnormal"
    normal_test_dir: Optional[str] = "normal_test"
    mask_dir: Optional[str] = None
    kind: str = "image"  # tells a checkpoint's image data config from a video one

    def __post_init__(self):
        self.size = tuple(self.size)
        source_kind = image_source_kind(self.source)
        if source_kind is None:
            raise ValueError(f"--data: {self.source!r} is no image source ({', '.join(IMAGE_SOURCES)} "
                             f"or {', '.join(p + ':PATH' for p in IMAGE_PREFIXES)})")
        if source_kind in ONE_CLASS_SOURCES and self.normal_class is None:
            raise ValueError(f"--normal-class: {source_kind} is a one-class protocol; say which "
                             "class (0-9) is normal")
        if self.channels not in COLOR_CHANNELS.values():
            raise ValueError(f"--color: images have 1 (gray) or 3 (rgb) channels, got {self.channels}")

    @property
    def source_kind(self) -> str:
        return image_source_kind(self.source)

    @property
    def path(self) -> Optional[Path]:
        return Path(self.source.partition(":")[2]) if ":" in self.source else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ImageDataConfig":
        return cls(**{**d, "size": tuple(d["size"])})


def data_config_from_dict(d: dict):
    """DataConfig or ImageDataConfig, as a checkpoint stored it."""
    return ImageDataConfig.from_dict(d) if d.get("kind") == "image" else DataConfig.from_dict(d)


def load_image_dataset(cfg: ImageDataConfig) -> ImageDataset:
    """The image data set `cfg` names."""
    kind, size, channels = cfg.source_kind, tuple(cfg.size), cfg.channels
    if kind == "digits":
        return digits_one_class(cfg.normal_class, size=size, seed=cfg.seed, channels=channels)
    if kind == "synthetic-defects":
        if size[0] != size[1]:
            raise ValueError(f"--size: the synthetic defect set has square images, got {size}")
        return synthetic_defects(size=size[0], channels=channels, seed=cfg.seed)
    root = cfg.path
    if not root.exists():
        raise FileNotFoundError(f"--data: {root} does not exist")
    if kind == "mvtec":
        return load_mvtec(root, cfg.category, size=size, channels=channels)
    if kind == "folder":
        return load_image_folder(root / cfg.normal_dir, root / cfg.abnormal_dir,
                                 root / cfg.normal_test_dir if cfg.normal_test_dir else None,
                                 root / cfg.mask_dir if cfg.mask_dir else None, size=size,
                                 channels=channels, name=root.name)
    if kind == "mnist":
        return mnist_one_class(root, cfg.normal_class, size=size, channels=channels)
    return cifar10_one_class(root, cfg.normal_class, size=size, channels=channels)


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
        return load_ucsd(root, tuple(cfg.size), test=test, with_labels=with_labels,
                         channels=cfg.channels)
    if fmt == "frames":
        return load_frames_folder(root, cfg.labels, tuple(cfg.size), test=test,
                                  with_labels=with_labels, channels=cfg.channels)
    raise ValueError(f"format must be 'auto', 'ucsd' or 'frames', got {cfg.format!r}")
