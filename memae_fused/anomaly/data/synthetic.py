"""The embedded synthetic moving-shapes video set: normal training videos and test videos with
one spatial, temporal or spatio-temporal anomaly each, generated deterministically."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from memae_fused.anomaly.data.video import ArrayVideo, VideoDataset

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
