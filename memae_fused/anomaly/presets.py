"""Run settings: the presets and the (model, data, training) configs of one run.

Video: "small" trains in minutes on a laptop CPU; "paper" is the paper's video model and
training. Images: one preset per kind of data set (IMAGE_PRESETS).
"""

from __future__ import annotations

from typing import Optional, Sequence

from memae_fused.anomaly.data import DataConfig
from memae_fused.anomaly.models import ModelConfig
from memae_fused.anomaly.train import TrainConfig

PRESETS = {
    "small": dict(size=(64, 64), channels=(16, 32, 64, 64), decoder_channels=None,
                  num_slots=200, epochs=20, batch_size=8, lr=1e-3, clip_stride=2,
                  synthetic=dict(size=64, frames_per_video=96, num_train_videos=16,
                                 num_test_videos_per_kind=3)),
    "paper": dict(size=(256, 256), channels=(96, 128, 256, 256), decoder_channels=(256, 128, 96),
                  num_slots=2000, epochs=60, batch_size=12, lr=1e-4, clip_stride=1,
                  synthetic=dict(size=256, frames_per_video=200, num_train_videos=32,
                                 num_test_videos_per_kind=6, max_objects=4,
                                 anomaly_frames=60, margin=20)),
}


def run_configs(*, preset: str = "small", data: str = "synthetic", data_format: str = "auto",
                labels: Optional[str] = None, size: Optional[Sequence[int]] = None,
                model: str = "memae", channels: Optional[Sequence[int]] = None,
                decoder_channels: Optional[Sequence[int]] = None, num_slots: Optional[int] = None,
                shrink_thres: Optional[float] = None, similarity: str = "cosine",
                temperature: float = 0.05, entropy_weight: float = 0.0002, backend: str = "auto",
                epochs: Optional[int] = None, batch_size: Optional[int] = None,
                lr: Optional[float] = None, clip_len: int = 16, clip_stride: Optional[int] = None,
                amp: str = "none", workers: int = 0, seed: int = 0, device: str = "auto",
                progress: bool = True):
    """(ModelConfig, DataConfig, TrainConfig) of a run: the preset's values, overridden by
    every option that is not None. `size` is (H, W) or one number for square frames."""
    base = PRESETS[preset]

    def pick(value, key):
        return base[key] if value is None else value

    frame_size = tuple(pick(size, "size"))
    frame_size = (frame_size[0], frame_size[0]) if len(frame_size) == 1 else frame_size
    synthetic = dict(base["synthetic"]) if data == "synthetic" else None
    if synthetic is not None and size is not None:
        if frame_size[0] != frame_size[1]:
            raise ValueError("--size: the synthetic set has square frames, give one number")
        synthetic["size"] = frame_size[0]
    decoder = decoder_channels
    if decoder is None and channels is None:
        decoder = base["decoder_channels"]
    model_cfg = ModelConfig(variant=model, dims=3, in_channels=1,
                            channels=pick(channels, "channels"), decoder_channels=decoder,
                            num_slots=pick(num_slots, "num_slots"), shrink_thres=shrink_thres,
                            similarity=similarity, temperature=temperature,
                            entropy_weight=entropy_weight, backend=backend)
    data_cfg = DataConfig(source=data, format=data_format, labels=labels, size=frame_size,
                          synthetic=synthetic)
    train_cfg = TrainConfig(epochs=pick(epochs, "epochs"), batch_size=pick(batch_size, "batch_size"),
                            lr=pick(lr, "lr"), clip_len=clip_len,
                            clip_stride=pick(clip_stride, "clip_stride"), amp=amp,
                            num_workers=workers, seed=seed, device=device, progress=progress)
    return model_cfg, data_cfg, train_cfg

