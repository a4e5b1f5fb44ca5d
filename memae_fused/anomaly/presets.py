"""Run settings: the presets and the (model, data, training) configs of one run.

Video: "small" trains in minutes on a laptop CPU; "paper" is the paper's video model and
training. Images: one preset per kind of data set (IMAGE_PRESETS).
"""

from __future__ import annotations

from typing import Optional, Sequence

from memae_fused.anomaly.data import COLOR_CHANNELS, DataConfig, ImageDataConfig, image_source_kind
from memae_fused.anomaly.models import MNAD_VARIANTS, DAADConfig, MNADConfig, ModelConfig
from memae_fused.anomaly.train import TrainConfig

PRESETS = {
    "small": dict(size=(64, 64), channels=(16, 32, 64, 64), decoder_channels=None,
                  num_slots=200, epochs=20, batch_size=8, lr=1e-3, clip_stride=2,
                  mnad=dict(channels=(16, 32, 64, 128), num_items=10, lr=1e-3),
                  synthetic=dict(size=64, frames_per_video=96, num_train_videos=16,
                                 num_test_videos_per_kind=3)),
    "paper": dict(size=(256, 256), channels=(96, 128, 256, 256), decoder_channels=(256, 128, 96),
                  num_slots=2000, epochs=60, batch_size=12, lr=1e-4, clip_stride=1,
                  # MNAD's own: widths 64-128-256, 10 items x 512, Adam 2e-4, batch 4
                  mnad=dict(channels=(64, 128, 256, 512), num_items=10, lr=2e-4, batch_size=4),
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
                progress: bool = True, use_memory: bool = True, usage_weight: float = 0.0,
                color: str = "gray"):
    """(model config, DataConfig, TrainConfig) of a video run: the preset's values,
    overridden by every option that is not None. `size` is (H, W) or one number for square
    frames. MNAD models take their clip length from the variant (5 frames for prediction,
    1 for reconstruction), four `channels` (three stages and the memory's dim), `num_slots`
    items, and a cosine learning-rate schedule. color "gray" or "rgb": how frames are read
    (rgb models take 3 input channels)."""
    base = PRESETS[preset]
    if color not in COLOR_CHANNELS:
        raise ValueError(f"--color: 'gray' or 'rgb', got {color!r}")
    in_channels = COLOR_CHANNELS[color]

    def pick(value, key):
        return base[key] if value is None else value

    frame_size = tuple(pick(size, "size"))
    frame_size = (frame_size[0], frame_size[0]) if len(frame_size) == 1 else frame_size
    synthetic = dict(base["synthetic"]) if data == "synthetic" else None
    if synthetic is not None and size is not None:
        if frame_size[0] != frame_size[1]:
            raise ValueError("--size: the synthetic set has square frames, give one number")
        synthetic["size"] = frame_size[0]
    data_cfg = DataConfig(source=data, format=data_format, labels=labels, size=frame_size,
                          synthetic=synthetic, channels=in_channels)
    if model in MNAD_VARIANTS:
        if frame_size[0] % 8 or frame_size[1] % 8:
            raise ValueError(f"--size: MNAD's frames must be divisible by 8 (three poolings), "
                             f"got {frame_size[0]}x{frame_size[1]}")
        mnad = base["mnad"]
        widths = tuple(channels or mnad["channels"])
        if len(widths) != 4:
            raise ValueError(f"--channels: MNAD takes four widths (three encoder stages and the "
                             f"memory's dim), got {widths}")
        model_cfg = MNADConfig(variant=model, in_channels=in_channels, channels=widths[:3],
                               feature_dim=widths[3], num_items=num_slots or mnad["num_items"],
                               use_memory=use_memory, usage_weight=usage_weight, backend=backend)
        train_cfg = TrainConfig(epochs=pick(epochs, "epochs"),
                                batch_size=batch_size or mnad.get("batch_size", base["batch_size"]),
                                lr=lr or mnad["lr"], clip_len=model_cfg.clip_len,
                                clip_stride=pick(clip_stride, "clip_stride"), amp=amp,
                                num_workers=workers, seed=seed, device=device, progress=progress,
                                schedule="cosine")
        return model_cfg, data_cfg, train_cfg
    if not use_memory:
        raise ValueError("--no-memory applies to the MNAD models; for MemAE take --model ae")
    decoder = decoder_channels
    if decoder is None and channels is None:
        decoder = base["decoder_channels"]
    model_cfg = ModelConfig(variant=model, dims=3, in_channels=in_channels,
                            channels=pick(channels, "channels"), decoder_channels=decoder,
                            num_slots=pick(num_slots, "num_slots"), shrink_thres=shrink_thres,
                            similarity=similarity, temperature=temperature,
                            entropy_weight=entropy_weight, backend=backend)
    train_cfg = TrainConfig(epochs=pick(epochs, "epochs"), batch_size=pick(batch_size, "batch_size"),
                            lr=pick(lr, "lr"), clip_len=clip_len,
                            clip_stride=pick(clip_stride, "clip_stride"), amp=amp,
                            num_workers=workers, seed=seed, device=device, progress=progress)
    return model_cfg, data_cfg, train_cfg



# Image runs: settings per kind of data set. "one-class" covers digits, MNIST and CIFAR-10
# (the MemAE paper's protocol; digits and MNIST are resized to 32 x 32 so that every model,
# DAAD included, takes them); "defects" covers MVTec-AD, anomalib folders and the synthetic
# defect set (256 x 256 RGB as DAAD and anomalib; the synthetic set is 64 x 64).
IMAGE_PRESETS = {
    "digits": dict(size=(32, 32), channels=1, memae=dict(channels=(16, 32, 64), kernel_sizes=(1, 3, 3),
                                                         decoder_channels=(64, 32), num_slots=100),
                   daad=dict(channels=(16, 32, 64), division=(1, 4, 4), num_slots=100),
                   epochs=60, batch_size=32, lr=1e-3, score="mean"),
    "mnist": dict(size=(32, 32), channels=1, memae=dict(channels=(16, 32, 64), kernel_sizes=(1, 3, 3),
                                                        decoder_channels=(64, 32), num_slots=100),
                  daad=dict(channels=(16, 32, 64), division=(1, 4, 4), num_slots=100),
                  epochs=60, batch_size=64, lr=1e-3, score="mean"),
    "cifar10": dict(size=(32, 32), channels=3, memae=dict(channels=(64, 128, 128, 256),
                                                          decoder_channels=(256, 128, 128), num_slots=500),
                    daad=dict(channels=(32, 64, 128), division=(1, 4, 4), num_slots=500),
                    epochs=60, batch_size=64, lr=1e-3, score="mean"),
    "synthetic-defects": dict(size=(64, 64), channels=3, memae=dict(channels=(16, 32, 64, 64), num_slots=200),
                              daad=dict(channels=(16, 32, 64), division=(1, 4, 4), num_slots=100),
                              epochs=40, batch_size=8, lr=1e-3, score="max"),
    "defects": dict(size=(256, 256), channels=3, memae=dict(channels=(32, 64, 128, 256), num_slots=500),
                    daad=dict(channels=(32, 64, 128, 256), division=(1, 8, 8), num_slots=500),
                    epochs=100, batch_size=8, lr=1e-4, score="max"),
}


def image_preset(source_kind: str) -> dict:
    return IMAGE_PRESETS.get(source_kind, IMAGE_PRESETS["defects"])


def image_run_configs(*, data: str, model: str = "memae", normal_class: Optional[int] = None,
                      category: Optional[str] = None, size: Optional[Sequence[int]] = None,
                      color: Optional[str] = None, flips: bool = False,
                      normal_dir: str = "normal", abnormal_dir: str = "abnormal",
                      normal_test_dir: Optional[str] = "normal_test", mask_dir: Optional[str] = None,
                      channels: Optional[Sequence[int]] = None,
                      decoder_channels: Optional[Sequence[int]] = None,
                      num_slots: Optional[int] = None, shrink_thres: Optional[float] = None,
                      similarity: Optional[str] = None, temperature: Optional[float] = None,
                      entropy_weight: float = 0.0002, division: Optional[Sequence[int]] = None,
                      backend: str = "auto", epochs: Optional[int] = None,
                      batch_size: Optional[int] = None, lr: Optional[float] = None,
                      amp: str = "none", workers: int = 0, seed: int = 0, device: str = "auto",
                      progress: bool = True):
    """(model config, ImageDataConfig, TrainConfig) of an image run: the data kind's preset
    (IMAGE_PRESETS), overridden by every option that is not None. The data split is fixed
    (seed 0); `seed` seeds the training."""
    base = image_preset(image_source_kind(data) or "defects")
    frame_size = tuple(size) if size is not None else base["size"]
    frame_size = (frame_size[0], frame_size[0]) if len(frame_size) == 1 else frame_size
    image_channels = base["channels"] if color is None else COLOR_CHANNELS[color]
    data_cfg = ImageDataConfig(source=data, normal_class=normal_class, category=category,
                               size=frame_size, channels=image_channels, flips=flips,
                               normal_dir=normal_dir, abnormal_dir=abnormal_dir,
                               normal_test_dir=normal_test_dir, mask_dir=mask_dir)
    if model == "daad":
        arch = base["daad"]
        model_cfg = DAADConfig(in_channels=image_channels, image_size=frame_size,
                               channels=channels or arch["channels"],
                               division=division or arch["division"],
                               num_slots=num_slots or arch["num_slots"],
                               similarity=similarity or "cosine",
                               temperature=1.0 if temperature is None else temperature,
                               shrink_thres=shrink_thres or 0.0, backend=backend)
    else:
        arch = base["memae"]
        own_arch = channels is None
        model_cfg = ModelConfig(variant=model, dims=2, in_channels=image_channels,
                                channels=channels or arch["channels"],
                                decoder_channels=(decoder_channels if decoder_channels is not None
                                                  else None if not own_arch else arch.get("decoder_channels")),
                                kernel_sizes=arch.get("kernel_sizes") if own_arch else None,
                                num_slots=num_slots or arch["num_slots"], shrink_thres=shrink_thres,
                                similarity=similarity or "cosine",
                                temperature=0.05 if temperature is None else temperature,
                                entropy_weight=entropy_weight, backend=backend)
    train_cfg = TrainConfig(epochs=epochs or base["epochs"], batch_size=batch_size or base["batch_size"],
                            lr=lr or base["lr"], clip_len=1, clip_stride=1, amp=amp,
                            num_workers=workers, seed=seed, device=device, progress=progress)
    return model_cfg, data_cfg, train_cfg
