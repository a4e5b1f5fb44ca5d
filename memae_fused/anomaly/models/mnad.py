"""MNAD's models (Park et al., CVPR 2020) with the authors' block layout: an encoder of three
pooled stages to `feature_dim` channels at 1/8 of the resolution, MNADMemory on every
feature position (the decoder sees the normalised query concatenated with its read), and a
decoder of transposed convolutions.

- prediction (`mnad-pred`): 4 frames stacked on channels in, the 5th predicted; U-Net skips
  from the three pre-pool features bypass the memory;
- reconstruction (`mnad-recon`): one frame in and out, no skips.

use_memory=False drops the memory (the decoder sees the query alone): the "without memory"
arm of the reproducibility study.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from memae_fused.memory import MNADMemory

MNAD_VARIANTS = ("mnad-pred", "mnad-recon")
INPUT_FRAMES = {"mnad-pred": 4, "mnad-recon": 1}


@dataclass
class MNADConfig:
    """variant: "mnad-pred" or "mnad-recon"; in_channels: channels of one frame; channels:
    widths of the three pooled encoder stages (the authors': 64, 128, 256) and feature_dim
    the memory's (512); num_items: memory items (10); compactness_weight and
    separateness_weight: lambda_c, lambda_s of the loss (prediction 0.1 / 0.1,
    reconstruction 0.01 / 0.01 when None); use_memory: False for the no-memory ablation;
    usage_weight: the weight of an optional usage-balancing term (KL divergence of the mean
    addressing from uniform), this project's form of the fix the MNAD reproducibility study
    (RC2020) found against all queries collapsing onto one item; 0 (off) as in MNAD."""

    variant: str = "mnad-pred"
    in_channels: int = 1
    channels: Tuple[int, int, int] = (64, 128, 256)
    feature_dim: int = 512
    num_items: int = 10
    compactness_weight: Optional[float] = None
    separateness_weight: Optional[float] = None
    use_memory: bool = True
    usage_weight: float = 0.0
    backend: str = "auto"

    def __post_init__(self):
        self.channels = tuple(self.channels)
        if self.usage_weight < 0:
            raise ValueError(f"usage_weight must be >= 0, got {self.usage_weight}")
        if self.variant not in MNAD_VARIANTS:
            raise ValueError(f"variant must be one of {MNAD_VARIANTS}, got {self.variant!r}")
        if len(self.channels) != 3 or min(self.channels) < 1:
            raise ValueError(f"channels must be three positive widths, got {self.channels}")

    @property
    def input_frames(self) -> int:
        return INPUT_FRAMES[self.variant]

    @property
    def clip_len(self) -> int:
        """Frames per training sample: the inputs and, for prediction, the target."""
        return self.input_frames + (1 if self.variant == "mnad-pred" else 0)

    @property
    def loss_weights(self) -> Tuple[float, float]:
        default = 0.1 if self.variant == "mnad-pred" else 0.01
        if not self.use_memory:
            return 0.0, 0.0
        return (default if self.compactness_weight is None else self.compactness_weight,
                default if self.separateness_weight is None else self.separateness_weight)

    effective_entropy_weight = 0.0  # MNAD's loss has no entropy term

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MNADConfig":
        return cls(**d)


class MNADOutput(NamedTuple):
    """recon: the predicted (or reconstructed) frame (B, C, H, W); target: the frame it should
    be; compactness, separateness: the memory's losses (0 without memory); queries: the
    encoder's features (B, feature_dim, h, w), for the test-time update; weights: (B, K, h, w)
    when asked for; usage_balance: see MNADConfig.usage_weight (None without memory)."""

    recon: torch.Tensor
    target: torch.Tensor
    compactness: torch.Tensor
    separateness: torch.Tensor
    queries: torch.Tensor
    weights: Optional[torch.Tensor]
    usage_balance: Optional[torch.Tensor] = None


def _basic(cin, cout, last_relu=True):
    layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
              nn.Conv2d(cout, cout, 3, padding=1)]
    if last_relu:
        layers += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _upsample(cin, cout):
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MNAD(nn.Module):
    def __init__(self, config: MNADConfig):
        super().__init__()
        self.config = config
        c1, c2, c3 = config.channels
        feat = config.feature_dim
        frames = config.input_frames * config.in_channels
        self.enc1, self.enc2, self.enc3 = _basic(frames, c1), _basic(c1, c2), _basic(c2, c3)
        self.enc4 = _basic(c3, feat, last_relu=False)
        self.memory = MNADMemory(config.num_items, feat, backend=config.backend) if config.use_memory else None
        skips = config.variant == "mnad-pred"
        self.skips = skips
        dec_in = 2 * feat if config.use_memory else feat
        self.dec4 = _basic(dec_in, feat)
        if skips:  # each upsampling halves the width; the skip doubles it back
            self.up3, self.dec3 = _upsample(feat, c3), _basic(2 * c3, c3)
            self.up2, self.dec2 = _upsample(c3, c2), _basic(2 * c2, c2)
            self.up1, head_in = _upsample(c2, c1), 2 * c1
        else:  # the authors' reconstruction decoder: upsamplings keep the width
            self.up3, self.dec3 = _upsample(feat, feat), _basic(feat, c3)
            self.up2, self.dec2 = _upsample(c3, c3), _basic(c3, c2)
            self.up1, head_in = _upsample(c2, c2), c2
        self.head = nn.Sequential(
            nn.Conv2d(head_in, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, config.in_channels, 3, padding=1), nn.Tanh())

    def split(self, x: torch.Tensor):
        """A clip (B, C, T, H, W) -> (input frames stacked on channels, target frame)."""
        cfg = self.config
        if x.dim() != 5 or x.shape[1] != cfg.in_channels or x.shape[2] != cfg.clip_len:
            raise ValueError(f"expected clips (B, {cfg.in_channels}, {cfg.clip_len}, H, W) for "
                             f"{cfg.variant}, got shape {tuple(x.shape)}")
        if any(s % 8 for s in x.shape[-2:]):
            raise ValueError(f"frame size {tuple(x.shape[-2:])} must be divisible by 8 (three poolings)")
        inputs = x[:, :, :cfg.input_frames]
        target = x[:, :, -1]
        return inputs.transpose(1, 2).reshape(x.shape[0], -1, *x.shape[-2:]), target

    def forward(self, x: torch.Tensor, update: bool = True, return_weights: bool = False) -> MNADOutput:
        inputs, target = self.split(x)
        s1 = self.enc1(inputs)
        s2 = self.enc2(F.max_pool2d(s1, 2))
        s3 = self.enc3(F.max_pool2d(s2, 2))
        features = self.enc4(F.max_pool2d(s3, 2))
        zero = features.new_zeros(())
        weights = balance = None
        if self.memory is not None:
            mem = self.memory(features, update=update, return_weights=return_weights)
            h, compactness, separateness, weights = mem.output, mem.compactness, mem.separateness, mem.weights
            balance = mem.usage_balance
        else:
            h, compactness, separateness = F.normalize(features, dim=1), zero, zero
        h = self.up3(self.dec4(h))
        h = self.dec3(torch.cat([h, s3], 1) if self.skips else h)
        h = self.up2(h)
        h = self.dec2(torch.cat([h, s2], 1) if self.skips else h)
        h = self.up1(h)
        recon = self.head(torch.cat([h, s1], 1) if self.skips else h)
        return MNADOutput(recon, target, compactness, separateness, features, weights, balance)


def mnad_loss(out: MNADOutput, config: MNADConfig):
    """(total, terms): L_pixel + lambda_c * compactness + lambda_s * separateness (+ the
    usage term when its weight is set), in float32."""
    pixel = F.mse_loss(out.recon.float(), out.target.float())
    lam_c, lam_s = config.loss_weights
    compact, separate = out.compactness.float(), out.separateness.float()
    total = pixel + lam_c * compact + lam_s * separate
    terms = {"recon": pixel, "compactness": compact, "separateness": separate}
    if config.usage_weight and out.usage_balance is not None:
        terms["usage_balance"] = out.usage_balance.float()
        total = total + config.usage_weight * terms["usage_balance"]
    return total, terms
