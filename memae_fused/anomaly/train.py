"""Training: Adam on MSE + alpha * entropy over clips of the normal training videos (or the
normal training images of an image set), with per-epoch checkpoints that resume exactly,
autocast, and DistributedDataParallel under torchrun.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from memae_fused import backends
from memae_fused.anomaly.data import (ClipDataset, DataConfig, ImageDataConfig, ImageTensors,
                                      VideoDataset, check_images, check_videos, load_dataset,
                                      load_image_dataset)
from memae_fused.anomaly.models import (DAADConfig, MemAE, ModelConfig, build_model, loss_terms,
                                       model_config_from_dict)
from memae_fused.memory import block_memory_backend

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SCHEDULES = ("constant", "cosine")
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class TrainConfig:
    """epochs: total epochs (a resumed run continues up to it); clip_stride: frames between
    the starts of training clips; amp: "none", "bf16" or "fp16" autocast (fp16 needs a GPU);
    device: "auto" (the local GPU if any), "cpu", "cuda" or "cuda:N"; schedule: "constant"
    or "cosine" (annealed to 0 over the epochs)."""

    epochs: int = 60
    batch_size: int = 12
    lr: float = 1e-4
    clip_len: int = 16
    clip_stride: int = 1
    amp: str = "none"
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    schedule: str = "constant"

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {tuple(AMP_DTYPES)}, got {self.amp!r}")
        for name in ("epochs", "batch_size", "clip_len", "clip_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**d)


# Settings that may change when resuming: they do not change what is computed.
RUNTIME_FIELDS = ("epochs", "num_workers", "device", "progress")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch sees no CUDA GPU on this machine")
    return device


def autocast(device: torch.device, amp: str):
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    if dtype is torch.float16 and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
    return torch.autocast(device.type, dtype=dtype)


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this call initialised the process group and must destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _distributed_setup(device: torch.device) -> DistributedContext:
    """torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; NCCL on GPUs, gloo on the CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistributedContext()
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(dist.get_rank(), dist.get_world_size(),
                              int(os.environ.get("LOCAL_RANK", "0")), owns)


def _checkpoint_state(model: MemAE, optimizer, scaler, epoch, model_cfg, data_cfg, train_cfg,
                      history) -> dict:
    return {
        "format": 1,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "model_config": model_cfg.to_dict(),
        "data_config": data_cfg.to_dict(),
        "train_config": train_cfg.to_dict(),
        "history": history,
    }


def save_checkpoint(state: dict, path: Path) -> None:
    # Write then rename, so an interrupted save never leaves a truncated checkpoint.
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch.load raises pickle's, zipfile's and its own errors
        raise ValueError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(ckpt, dict) or "model_config" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint written by memae-fused train")
    return ckpt


def load_model(path, device="cpu"):
    """(model in eval mode on device, checkpoint dict) from a checkpoint written by train."""
    ckpt = read_checkpoint(path)
    model = build_model(model_config_from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def _check_resumable(ckpt: dict, model_cfg, data_cfg, train_cfg, path: Path) -> None:
    mismatched = []
    if ckpt["model_config"] != model_cfg.to_dict():
        mismatched.append("model")
    if ckpt["data_config"] != data_cfg.to_dict():
        mismatched.append("data")
    # Through TrainConfig, so that a field added since the checkpoint takes its default.
    saved = {k: v for k, v in TrainConfig.from_dict(ckpt["train_config"]).to_dict().items()
             if k not in RUNTIME_FIELDS}
    given = {k: v for k, v in train_cfg.to_dict().items() if k not in RUNTIME_FIELDS}
    if saved != given:
        mismatched.append("training")
    if mismatched:
        raise ValueError(f"cannot resume from {path}: its {' and '.join(mismatched)} settings "
                         "differ from the ones given (only epochs, workers, device and progress "
                         "may change); start a new --out folder to train with new settings")


def memory_backend(model_cfg: ModelConfig, device: torch.device) -> str:
    """The memory backend the model's reads run on for `device` ("none" without memory; a
    comma-separated list where DAAD's scales take different ones)."""
    if model_cfg.variant == "ae" or not getattr(model_cfg, "use_memory", True):
        return "none"
    names = [model_cfg.backend]
    if isinstance(model_cfg, DAADConfig):
        names = [block_memory_backend(model_cfg.backend, model_cfg.num_slots, math.prod(shape) // math.prod(division))
                 for shape, division in zip(model_cfg.scale_shapes(), model_cfg.scale_divisions())]
    try:
        return ",".join(dict.fromkeys(backends.resolve(name, device) for name in names))
    except RuntimeError as exc:
        raise ValueError(f"--backend: {exc}") from None


def _match_grad_strides(model: torch.nn.Module) -> None:
    # A convolution's backward can return a weight gradient whose size-1 dims have other
    # strides than the weight's (ConvTranspose3d with one output channel); DDP then warns
    # "Grad strides do not match bucket view strides" and copies it into the bucket each step.
    for p in model.parameters():
        p.register_hook(lambda g, p=p: g if g.stride() == p.stride() else
                        torch.empty_like(p).copy_(g))


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during train(): `epoch` is the last epoch in `checkpoint` (None when no
    checkpoint was written)."""

    def __init__(self, epoch: Optional[int], checkpoint: Optional[Path]):
        super().__init__(epoch, checkpoint)
        self.epoch, self.checkpoint = epoch, checkpoint


def _write_log(path: Path, records) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def existing_run(out_dir: Path) -> Optional[Path]:
    """The file that makes out_dir hold a run already (checkpoint or training log), or None."""
    for name in (CHECKPOINT_NAME, "train_log.jsonl"):
        if (out_dir / name).exists():
            return out_dir / name
    return None


def refuse_existing_run(out_dir: Path, overwrite: bool) -> None:
    """The error for an out_dir that already holds a run, unless overwrite."""
    found = existing_run(out_dir)
    if found is not None and not overwrite:
        raise FileExistsError(f"--out {out_dir} already holds a run ({found.name}); "
                              "continue it with --resume, or pass --overwrite to replace it")


def epoch_lr(train_cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of an epoch: constant, or cosine-annealed from lr to 0 over the
    run's epochs (MNAD's schedule; set per epoch, so a resumed run follows it exactly)."""
    if train_cfg.schedule == "cosine":
        return train_cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / train_cfg.epochs))
    return train_cfg.lr


def training_samples(data_cfg, train_cfg: TrainConfig, dataset=None):
    """(data set, training samples, what they are, problems): the training clips of a video
    set or the training images of an image set (loaded from data_cfg unless given), and every
    unreadable training file."""
    if isinstance(data_cfg, ImageDataConfig):
        dataset = dataset if dataset is not None else load_image_dataset(data_cfg)
        size = "x".join(map(str, data_cfg.size))
        return (dataset, ImageTensors(dataset.train, flips=data_cfg.flips),
                f"images of {size}" + (" (random flips)" if data_cfg.flips else ""),
                check_images(dataset.train))
    dataset = dataset if dataset is not None else load_dataset(data_cfg, test=False)
    problems = check_videos(dataset.train)
    clips = ClipDataset(dataset.train, train_cfg.clip_len, train_cfg.clip_stride) if not problems else []
    return dataset, clips, f"clips of {train_cfg.clip_len} frames", problems


def train(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig, out_dir,
          resume: bool = False, dataset: Optional[VideoDataset] = None, log=print,
          overwrite: bool = False) -> dict:
    """Train on dataset.train (loaded from data_cfg unless given; every training file is
    checked before the first step) and write out_dir/checkpoint.pt after every epoch and
    out_dir/train_log.jsonl. With resume=True, continue from out_dir's checkpoint; the result
    is the same as an uninterrupted run. Without it, an out_dir that already holds a run is
    refused unless overwrite=True (which replaces its checkpoint and log). A run folder this
    call created is removed again if it stops before the first checkpoint.
    Returns a summary: the trained model, checkpoint path, epochs, last epoch's losses
    (None when the checkpoint already had them all), memory backend, device, seconds."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out {out_dir} is a file, not a run folder")
    ckpt_path = out_dir / CHECKPOINT_NAME
    if resume and not ckpt_path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
    if not resume:
        refuse_existing_run(out_dir, overwrite)
    device = resolve_device(train_cfg.device)
    autocast(device, train_cfg.amp)  # refuses fp16 on the CPU before any work
    ctx = _distributed_setup(device)
    if device.type == "cuda" and ctx.world_size > 1:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    created = not out_dir.exists()
    saved_epoch = None  # the epoch in ckpt_path
    try:
        ckpt = None
        if resume:
            ckpt = read_checkpoint(ckpt_path)
            _check_resumable(ckpt, model_cfg, data_cfg, train_cfg, ckpt_path)
        backend = memory_backend(model_cfg, device)
        dataset, samples, what, problems = training_samples(data_cfg, train_cfg, dataset)
        if problems:
            shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            raise ValueError(f"{len(problems)} unreadable training input(s) (memae-fused "
                             f"check-data lists them all): {shown}")
        too_short = getattr(samples, "too_short", [])
        if too_short and ctx.is_main:
            shown = ", ".join(too_short[:10]) + (f" and {len(too_short) - 10} more"
                                                 if len(too_short) > 10 else "")
            log(f"warning: {len(too_short)} of {len(dataset.train)} training videos are "
                f"shorter than --clip-len {train_cfg.clip_len} and give no clips: {shown}")
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            if not resume:
                for name in (CHECKPOINT_NAME, "train_log.jsonl"):
                    (out_dir / name).unlink(missing_ok=True)

        torch.manual_seed(train_cfg.seed)
        model = build_model(model_cfg).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg.lr)
        scaler = torch.amp.GradScaler(device.type, enabled=train_cfg.amp == "fp16")
        start_epoch, history = 0, []
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            torch.set_rng_state(ckpt["torch_rng"])
            start_epoch, history = ckpt["epoch"], list(ckpt["history"])
            saved_epoch = start_epoch
            if ctx.is_main:
                # The log is the checkpoint's history: an epoch logged after it was saved
                # (a stop between the two) is trained and logged again.
                _write_log(out_dir / "train_log.jsonl", history)
                log(f"resuming {ckpt_path} after epoch {start_epoch}")

        # Seeded per epoch (seed + epoch), so a resumed run draws the same order.
        sampler = DistributedSampler(samples, num_replicas=ctx.world_size, rank=ctx.rank,
                                     shuffle=True, seed=train_cfg.seed)
        # Dropping a ragged last batch keeps BatchNorm away from one-sample batches.
        loader = DataLoader(samples, batch_size=train_cfg.batch_size, sampler=sampler,
                            num_workers=train_cfg.num_workers,
                            drop_last=len(sampler) > train_cfg.batch_size,
                            pin_memory=device.type == "cuda",
                            persistent_workers=train_cfg.num_workers > 0)
        net = model
        if ctx.world_size > 1:
            _match_grad_strides(model)
            net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

        if ctx.is_main and start_epoch < train_cfg.epochs:
            params = sum(p.numel() for p in model.parameters())
            log(f"training {model_cfg.variant} ({params:,} parameters) on "
                f"{dataset.name}: {len(samples)} {what}, "
                f"{len(loader)} batches of {train_cfg.batch_size} per epoch per process, "
                f"{ctx.world_size} process(es) on {device}, amp={train_cfg.amp}, memory "
                f"backend {backend}" + (" (auto)" if model_cfg.backend == "auto" and backend != "none" else ""))
        started = time.time()
        for epoch in range(start_epoch, train_cfg.epochs):
            sampler.set_epoch(epoch)
            for group in optimizer.param_groups:
                group["lr"] = epoch_lr(train_cfg, epoch)
            net.train()
            sums = None  # loss, then the model's loss terms, then the batch count
            epoch_start = time.time()
            bar = tqdm(loader, desc=f"{model_cfg.variant} epoch {epoch + 1}/{train_cfg.epochs}",
                       disable=None if train_cfg.progress and ctx.is_main else True,
                       leave=False, dynamic_ncols=True)  # None: off when not a terminal
            for x in bar:
                x = x.to(device, non_blocking=True)
                with autocast(device, train_cfg.amp):
                    out = net(x)
                    loss, terms = loss_terms(model_cfg, x, out)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                values = torch.tensor([loss.item(), *(t.item() for t in terms.values()), 1.0],
                                      dtype=torch.float64)
                sums = values if sums is None else sums + values
                bar.set_postfix(loss=f"{loss.item():.5f}")
            if sums is None:
                raise ValueError(f"no training batch in epoch {epoch + 1}: {len(samples)} samples")
            if ctx.world_size > 1:
                dist.all_reduce(sums)
            n = max(sums[-1].item(), 1.0)
            means = dict(zip(["loss", *terms], (sums[:-1] / n).tolist()))
            record = {"epoch": epoch + 1, **means, "seconds": time.time() - epoch_start,
                      "backend": backend, "device": str(device)}
            history.append(record)
            if ctx.is_main:
                log(f"{model_cfg.variant} epoch {epoch + 1}/{train_cfg.epochs}  " +
                    "  ".join(f"{name} {value:.5f}" for name, value in means.items()) +
                    f"  {record['seconds']:.1f} s")
                save_checkpoint(_checkpoint_state(model, optimizer, scaler, epoch + 1, model_cfg,
                                                  data_cfg, train_cfg, history), ckpt_path)
                saved_epoch = epoch + 1
                with open(out_dir / "train_log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
            saved_epoch = epoch + 1  # other ranks: rank 0 has saved it by the barrier below
            if ctx.world_size > 1:
                dist.barrier()
        return {"model": model, "checkpoint": str(ckpt_path), "epochs": train_cfg.epochs,
                "last_epoch": history[-1] if train_cfg.epochs > start_epoch else None,
                "start_epoch": start_epoch, "backend": backend, "device": str(device),
                "seconds": time.time() - started}
    except BaseException as exc:
        if created and ctx.is_main and out_dir.is_dir() and not ckpt_path.exists():
            # Created by this call and holding no checkpoint yet: remove what this call wrote,
            # and the folder if nothing else is in it.
            for name in (CHECKPOINT_NAME + ".tmp", "train_log.jsonl"):
                (out_dir / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, TrainingInterrupted):
            raise TrainingInterrupted(saved_epoch, ckpt_path if saved_epoch else None) from None
        raise
    finally:
        if ctx.owns_group:
            dist.destroy_process_group()
