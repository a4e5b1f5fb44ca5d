"""Videos as the models see them: frame sequences (in memory, image files or video files),
a data set of normal training and labelled test videos, and the clips cut from them.

Frames are kept as uint8 at the requested size, grayscale (T, H, W) or RGB (T, H, W, 3);
clips handed to models are float32 (C, T, H, W) in [-1, 1], C = 1 or 3.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

Size = Tuple[int, int]  # (height, width)


def natural_key(path: Union[Path, str]):
    """Sort key that puts 2.jpg before 10.jpg (zero-padded names sort as usual)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", Path(path).name)]


class Video:
    """A named sequence of grayscale or RGB frames."""

    name: str

    def __len__(self) -> int:
        raise NotImplementedError

    def frames(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """uint8 (stop - start, H, W), or (stop - start, H, W, 3) for RGB."""
        raise NotImplementedError

    def frame_name(self, index: int) -> str:
        """How the data set names frame `index` (0-based): its file name where it has one."""
        return f"index {index}"

    def check(self, decode: bool = False) -> List[str]:
        """Problems a look at the files finds (unreadable files, no frames), one line each:
        a cheap one (headers, first frame), or with decode=True a full decode."""
        return [] if len(self) else [f"{self.name}: no frames"]


class ArrayVideo(Video):
    def __init__(self, name: str, frames: np.ndarray):
        rgb = frames.ndim == 4 and frames.shape[-1] == 3
        if not (frames.ndim == 3 or rgb) or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W) or (T, H, W, 3), got "
                             f"{frames.dtype} {frames.shape}")
        self.name, self._frames = name, frames

    def __len__(self):
        return len(self._frames)

    def frames(self, start=0, stop=None):
        return self._frames[start:stop]


def _to_array(image, size: Size, channels: int = 1) -> np.ndarray:
    """A PIL image as uint8 (H, W) (channels 1) or (H, W, 3) (channels 3) at `size`."""
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


class ImageFolderVideo(Video):
    """Frames stored as image files, read (and resized) on demand."""

    def __init__(self, name: str, paths: Sequence[Path], size: Size, channels: int = 1):
        self.name, self.paths, self.size, self.channels = name, list(paths), size, channels

    def __len__(self):
        return len(self.paths)

    def frames(self, start=0, stop=None):
        from PIL import Image

        out = []
        for path in self.paths[start:stop]:
            try:
                with Image.open(path) as image:
                    out.append(_to_array(image, self.size, self.channels))
            except OSError as exc:
                raise OSError(f"cannot read frame {path}: {exc}") from exc
        if out:
            return np.stack(out)
        return np.zeros((0, *self.size) + ((3,) if self.channels == 3 else ()), np.uint8)

    def frame_name(self, index):
        return self.paths[index].name

    def check(self, decode=False):
        """Opens every frame's header (PIL's verify), or decodes every frame."""
        from PIL import Image

        problems = [] if self.paths else [f"{self.name}: no frames"]
        for path in self.paths:
            try:
                with Image.open(path) as image:
                    image.load() if decode else image.verify()
            except Exception as exc:  # PIL raises many types for a bad file
                problems.append(f"{path}: {type(exc).__name__}: {exc}")
        return problems


class VideoFileVideo(Video):
    """A video file (.avi, .mp4, ...) decoded with PyAV on first use and kept in memory
    (frames x H x W x channels bytes), since random clip access into a compressed stream is
    slow."""

    def __init__(self, name: str, path: Path, size: Size, channels: int = 1):
        self.name, self.path, self.size, self.channels = name, Path(path), size, channels
        self._frames: Optional[np.ndarray] = None

    def _decoded(self) -> np.ndarray:
        if self._frames is None:
            import av

            try:
                with av.open(str(self.path)) as container:
                    frames = [_to_array(f.to_image(), self.size, self.channels)
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

    def check(self, decode=False):
        """Opens the container and decodes its first frame (the rest is read on first use),
        or every frame."""
        import av

        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    return [f"{self.path}: no video stream"]
                frames = container.decode(video=0)
                next(frames)
                if decode:
                    for _ in frames:
                        pass
        except StopIteration:
            return [f"{self.path}: no frames"]
        except Exception as exc:  # PyAV raises its own and OSError types for a bad file
            return [f"{self.path}: {type(exc).__name__}: {exc}"]
        return []

    def __getstate__(self):
        # DataLoader workers decode their own copy rather than receive a pickled one.
        return {**self.__dict__, "_frames": None}


@dataclass
class VideoDataset:
    """Training videos (all normal) and test videos with per-frame labels (1 = anomalous;
    None when the test videos were loaded without them). kinds: the anomaly type of every
    test video, where known (the synthetic set)."""

    name: str
    train: List[Video]
    test: List[Video]
    labels: Optional[List[np.ndarray]]
    kinds: Optional[List[str]] = None

    def __post_init__(self):
        if self.labels is not None and len(self.labels) != len(self.test):
            raise ValueError(f"{len(self.test)} test videos but {len(self.labels)} label arrays")


class ClipDataset(torch.utils.data.Dataset):
    """Every clip of clip_len consecutive frames (starts `stride` apart) of the given videos,
    as float32 (C, clip_len, H, W) in [-1, 1]. `too_short` names the videos shorter than a
    clip (they give none), with their frame counts."""

    def __init__(self, videos: Sequence[Video], clip_len: int, stride: int = 1):
        if clip_len < 1 or stride < 1:
            raise ValueError(f"clip_len and stride must be >= 1, got {clip_len}, {stride}")
        self.videos, self.clip_len = list(videos), clip_len
        self.too_short = [f"{v.name} ({len(v)} frames)" for v in self.videos if len(v) < clip_len]
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


def check_videos(videos: Sequence[Video], decode: bool = False) -> List[str]:
    """Every problem Video.check finds in these videos."""
    return [problem for video in videos for problem in video.check(decode)]


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W) -> float32 (1, T, H, W) in [-1, 1]; RGB (T, H, W, 3) -> (3, T, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(127.5).sub_(1.0)
    return x.permute(3, 0, 1, 2).contiguous() if x.dim() == 4 else x.unsqueeze(0)
