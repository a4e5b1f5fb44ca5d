"""Video data: the embedded synthetic moving-shapes set, loaders for UCSD Ped1/Ped2 and the
frames-folder layout (Avenue, ShanghaiTech), video files, and clips for training.

Frames are kept as uint8 grayscale (T, H, W) at the requested size; clips handed to models
are float32 (1, T, H, W) in [-1, 1].
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".avi", ".mp4", ".mov", ".mkv", ".webm"}
Size = Tuple[int, int]  # (height, width)


def natural_key(path: Union[Path, str]):
    """Sort key that puts 2.jpg before 10.jpg (zero-padded names sort as usual)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", Path(path).name)]


class Video:
    """A named sequence of grayscale frames."""

    name: str

    def __len__(self) -> int:
        raise NotImplementedError

    def frames(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """uint8 (stop - start, H, W)."""
        raise NotImplementedError


class ArrayVideo(Video):
    def __init__(self, name: str, frames: np.ndarray):
        if frames.ndim != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W), got {frames.dtype} {frames.shape}")
        self.name, self._frames = name, frames

    def __len__(self):
        return len(self._frames)

    def frames(self, start=0, stop=None):
        return self._frames[start:stop]


def _to_gray(image, size: Size) -> np.ndarray:
    from PIL import Image

    if image.mode != "L":
        image = image.convert("L")
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


class ImageFolderVideo(Video):
    """Frames stored as image files, read (and resized) on demand."""

    def __init__(self, name: str, paths: Sequence[Path], size: Size):
        self.name, self.paths, self.size = name, list(paths), size

    def __len__(self):
        return len(self.paths)

    def frames(self, start=0, stop=None):
        from PIL import Image

        out = []
        for path in self.paths[start:stop]:
            try:
                with Image.open(path) as image:
                    out.append(_to_gray(image, self.size))
            except OSError as exc:
                raise OSError(f"cannot read frame {path}: {exc}") from exc
        return np.stack(out) if out else np.zeros((0, *self.size), np.uint8)


class VideoFileVideo(Video):
    """A video file (.avi, .mp4, ...) decoded with PyAV on first use and kept in memory
    (frames x H x W bytes), since random clip access into a compressed stream is slow."""

    def __init__(self, name: str, path: Path, size: Size):
        self.name, self.path, self.size = name, Path(path), size
        self._frames: Optional[np.ndarray] = None

    def _decoded(self) -> np.ndarray:
        if self._frames is None:
            import av

            try:
                with av.open(str(self.path)) as container:
                    frames = [_to_gray(f.to_image(), self.size)
                              for f in container.decode(video=0)]
            except (av.error.FFmpegError, ValueError, IndexError) as exc:
                raise OSError(f"cannot decode video {self.path}: {exc}") from exc
            if not frames:
                raise ValueError(f"video {self.path} has no frames")
            self._frames = np.stack(frames)
        return self._frames

    def __len__(self):
        return len(self._decoded())

    def frames(self, start=0, stop=None):
        return self._decoded()[start:stop]

    def __getstate__(self):
        # DataLoader workers decode their own copy rather than receive a pickled one.
        return {**self.__dict__, "_frames": None}


@dataclass
class VideoDataset:
    """Training videos (all normal) and test videos with per-frame labels (1 = anomalous).
    kinds: the anomaly type of every test video, where known (the synthetic set)."""

    name: str
    train: List[Video]
    test: List[Video]
    labels: List[np.ndarray]
    kinds: Optional[List[str]] = None

    def __post_init__(self):
        if len(self.labels) != len(self.test):
            raise ValueError(f"{len(self.test)} test videos but {len(self.labels)} label arrays")


class ClipDataset(torch.utils.data.Dataset):
    """Every clip of clip_len consecutive frames (starts `stride` apart) of the given videos,
    as float32 (1, clip_len, H, W) in [-1, 1]."""

    def __init__(self, videos: Sequence[Video], clip_len: int, stride: int = 1):
        if clip_len < 1 or stride < 1:
            raise ValueError(f"clip_len and stride must be >= 1, got {clip_len}, {stride}")
        self.videos, self.clip_len = list(videos), clip_len
        self.index = [(vi, s) for vi, v in enumerate(self.videos)
                      for s in range(0, len(v) - clip_len + 1, stride)]
        if not self.index:
            longest = max((len(v) for v in self.videos), default=0)
            raise ValueError(f"no video has {clip_len} frames (longest: {longest})")

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        vi, start = self.index[i]
        return frames_to_tensor(self.videos[vi].frames(start, start + self.clip_len))


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W) -> float32 (1, T, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).float().div_(127.5).sub_(1.0).unsqueeze(0)


# ----------------------------------------------------------------------------- synthetic

ANOMALY_KINDS = {  # kind: (shape, speed multiplier) during the anomalous span
    "spatial": ("square", 1),
    "temporal": ("circle", 2),
    "spatio-temporal": ("square", 2),
}


@dataclass
class SyntheticConfig:
    """Moving shapes on a black background. Normal: circles of `radius` px moving `speed` px
    per frame, bouncing off the borders. In every test video one object turns anomalous for
    `anomaly_frames` frames: a square (half side = radius) at the same speed (spatial), a
    circle at twice the speed (temporal), or a square at twice the speed (spatio-temporal).
    Spans keep `margin` frames from the ends, so clips centred on them exist."""

    size: int = 64
    frames_per_video: int = 96
    num_train_videos: int = 16
    num_test_videos_per_kind: int = 3
    radius: float = 10.0
    speed: float = 5.0
    max_objects: int = 2
    anomaly_frames: int = 32
    margin: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.frames_per_video < self.anomaly_frames + 2 * self.margin:
            raise ValueError("frames_per_video must be >= anomaly_frames + 2 * margin")
        if self.size <= 2 * self.radius + 2 * self.speed:
            raise ValueError(f"size {self.size} leaves no room for shapes of radius {self.radius}")


def _render(size: int, objects) -> np.ndarray:
    """Anti-aliased shapes (one-pixel soft edge), union by maximum, as uint8."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    ys, xs = coords[:, None], coords[None, :]
    image = np.zeros((size, size), np.float32)
    for shape, (cy, cx), radius in objects:
        if shape == "circle":
            dist = np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2)
        else:
            dist = np.maximum(np.abs(ys - cy), np.abs(xs - cx))
        np.maximum(image, np.clip(radius + 0.5 - dist, 0.0, 1.0), out=image)
    return np.round(image * 255).astype(np.uint8)


def _moving_shapes(cfg: SyntheticConfig, rng: np.random.Generator, kind: Optional[str]):
    """One video: frames (T, H, W) uint8 and labels (T,)."""
    n_frames, size, r = cfg.frames_per_video, cfg.size, cfg.radius
    n_objects = int(rng.integers(1, cfg.max_objects + 1))
    pos = rng.uniform(r, size - r, size=(n_objects, 2))
    angle = rng.uniform(0, 2 * np.pi, size=n_objects)
    direction = np.stack([np.sin(angle), np.cos(angle)], axis=1)
    labels = np.zeros(n_frames, np.uint8)
    if kind is not None:
        start = int(rng.integers(cfg.margin, n_frames - cfg.margin - cfg.anomaly_frames + 1))
        labels[start:start + cfg.anomaly_frames] = 1
    frames = np.empty((n_frames, size, size), np.uint8)
    for t in range(n_frames):
        shapes, speeds = ["circle"] * n_objects, np.full(n_objects, cfg.speed)
        if labels[t]:
            shape, factor = ANOMALY_KINDS[kind]
            shapes[0], speeds[0] = shape, cfg.speed * factor
        frames[t] = _render(size, [(s, p, r) for s, p in zip(shapes, pos)])
        pos = pos + direction * speeds[:, None]
        # Reflect off the borders so objects stay fully inside the frame.
        low, high = pos < r, pos > size - r
        pos = np.where(low, 2 * r - pos, np.where(high, 2 * (size - r) - pos, pos))
        direction = np.where(low | high, -direction, direction)
    return frames, labels


def synthetic_dataset(cfg: SyntheticConfig = SyntheticConfig()) -> VideoDataset:
    """The embedded default data set, generated deterministically from cfg.seed."""
    rng = np.random.default_rng(cfg.seed)
    train = [ArrayVideo(f"train_{i:03d}", _moving_shapes(cfg, rng, None)[0])
             for i in range(cfg.num_train_videos)]
    test, labels, kinds = [], [], []
    for kind in ANOMALY_KINDS:
        for i in range(cfg.num_test_videos_per_kind):
            frames, lab = _moving_shapes(cfg, rng, kind)
            test.append(ArrayVideo(f"test_{kind}_{i:02d}", frames))
            labels.append(lab)
            kinds.append(kind)
    return VideoDataset("synthetic", train, test, labels, kinds)


# ----------------------------------------------------------------------------- UCSD


def _image_files(folder: Path) -> List[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith(".")), key=natural_key)


def _numbered_dirs(folder: Path, prefix: str) -> List[Path]:
    pattern = re.compile(rf"{prefix}\d+$")
    return sorted((p for p in folder.iterdir() if p.is_dir() and pattern.match(p.name)),
                  key=natural_key)


def _frame_folder_video(folder: Path, size: Size) -> ImageFolderVideo:
    paths = _image_files(folder)
    if not paths:
        raise ValueError(f"video folder {folder} holds no image frames "
                         f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    return ImageFolderVideo(folder.name, paths, size)


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


def load_ucsd(root: Union[str, Path], size: Size = (256, 256)) -> VideoDataset:
    """UCSD Ped1/Ped2 as distributed: root/Train/Train001/001.tif ..., root/Test/Test001/...,
    pixel masks in root/Test/Test001_gt/ (a frame is anomalous if its mask has any non-zero
    pixel); test videos without a _gt folder take their frame ranges from the UCSDped*.m
    file in root/Test (Ped1 ships masks for only some videos)."""
    root = Path(root)
    layout = ("expected the UCSD layout: ROOT/Train/Train001/001.tif ..., "
              "ROOT/Test/Test001/001.tif ..., ROOT/Test/Test001_gt/001.bmp ...")
    for sub in ("Train", "Test"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"{root / sub} is not a folder; {layout}")
    train_dirs = _numbered_dirs(root / "Train", "Train")
    test_dirs = _numbered_dirs(root / "Test", "Test")
    if not train_dirs or not test_dirs:
        raise FileNotFoundError(f"no Train### or Test### video folders under {root}; {layout}")
    train = [_frame_folder_video(d, size) for d in train_dirs]
    test = [_frame_folder_video(d, size) for d in test_dirs]
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
                                    f"gt_frame line for it in a UCSDped*.m file in {root / 'Test'}")
    return VideoDataset(root.name, train, test, labels)


# ----------------------------------------------------------------------------- frames folder


def _split_videos(root: Path, split: str, size: Size) -> List[Video]:
    """root/<split>/frames/<video>/<frame>.jpg, or video files in root/<split>/videos/ or
    root/<split>_videos/ (Avenue's original naming)."""
    frames_dir = root / split / "frames"
    if frames_dir.is_dir():
        dirs = sorted((d for d in frames_dir.iterdir() if d.is_dir() and not d.name.startswith(".")),
                      key=natural_key)
        if not dirs:
            raise FileNotFoundError(f"{frames_dir} holds no video folders")
        return [_frame_folder_video(d, size) for d in dirs]
    for videos_dir in (root / split / "videos", root / f"{split}_videos"):
        if videos_dir.is_dir():
            files = sorted((p for p in videos_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES),
                           key=natural_key)
            if not files:
                raise FileNotFoundError(f"{videos_dir} holds no video files "
                                        f"({', '.join(sorted(VIDEO_SUFFIXES))})")
            return [VideoFileVideo(p.stem, p, size) for p in files]
    raise FileNotFoundError(
        f"no {split} videos under {root}: expected {frames_dir}/<video>/<frame>.jpg, or video "
        f"files in {root / split / 'videos'} or {root / (split + '_videos')}")


def load_frames_folder(root: Union[str, Path], labels: Optional[Union[str, Path]] = None,
                       size: Size = (256, 256)) -> VideoDataset:
    """The common layout of Avenue and ShanghaiTech: root/training/frames/01/0000.jpg ...,
    root/testing/frames/01/..., and a label file frame_labels_<name>.npy (one 0/1 entry per
    test frame, all test videos concatenated in sorted order; shape (1, F) or (F,)).
    `labels` defaults to the single frame_labels_*.npy in root."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    train = _split_videos(root, "training", size)
    test = _split_videos(root, "testing", size)
    if labels is None:
        found = sorted(root.glob("frame_labels_*.npy"))
        if len(found) != 1:
            raise FileNotFoundError(
                f"expected exactly one frame_labels_<name>.npy in {root}, found "
                f"{[p.name for p in found] or 'none'}; pass the label file explicitly")
        labels = found[0]
    labels = Path(labels)
    flat = np.load(labels).reshape(-1)
    if not np.isin(flat, (0, 1)).all():
        raise ValueError(f"{labels} must hold only 0 and 1")
    lengths = [len(v) for v in test]
    if flat.size != sum(lengths):
        raise ValueError(f"{labels} has {flat.size} labels but the {len(test)} test videos "
                         f"have {sum(lengths)} frames")
    per_video = np.split(flat.astype(np.uint8), np.cumsum(lengths)[:-1])
    name = labels.stem[len("frame_labels_"):] if labels.stem.startswith("frame_labels_") else root.name
    return VideoDataset(name, train, test, per_video)


# ----------------------------------------------------------------------------- by spec


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


def load_dataset(cfg: DataConfig) -> VideoDataset:
    if cfg.source == "synthetic":
        return synthetic_dataset(SyntheticConfig(**(cfg.synthetic or {})))
    root = Path(cfg.source)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist (or pass 'synthetic')")
    fmt = cfg.format
    if fmt == "auto":
        if (root / "Train").is_dir() and (root / "Test").is_dir():
            fmt = "ucsd"
        elif (root / "training").is_dir() and (root / "testing").is_dir():
            fmt = "frames"
        else:
            raise FileNotFoundError(
                f"cannot tell the layout of {root}: expected Train/ and Test/ (UCSD) or "
                "training/ and testing/ (frames folder: Avenue, ShanghaiTech)")
    if fmt == "ucsd":
        return load_ucsd(root, tuple(cfg.size))
    if fmt == "frames":
        return load_frames_folder(root, cfg.labels, tuple(cfg.size))
    raise ValueError(f"format must be 'auto', 'ucsd' or 'frames', got {cfg.format!r}")
