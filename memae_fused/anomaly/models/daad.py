"""DAAD (Hou et al., "Divide-and-Assemble", ICCV 2021): a U-Net-style encoder-decoder whose
every skip connection, and the bottleneck, passes through a block-wise memory of its own.

Encoder stage s (s = 1..L) halves the resolution; its output f_s goes through BlockMemory
M_s (f_s cut into r_c x r_h x r_w blocks, each block one query). The decoder starts from
M_L(f_L) and at every scale below concatenates the upsampled features with M_s(f_s), so
the decoder sees only what the memories can assemble: there is no path around them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import nn

from memae_fused.memory import BlockMemory
from memae_fused.anomaly.models.memae import AEOutput

DAAD_VARIANTS = ("daad",)


@dataclass
class DAADConfig:
    """in_channels: 1 (grayscale) or 3 (RGB); image_size: (H, W) of the inputs (the block
    memories are sized for it); channels: the encoder width of each of the L scales;
    division: (r_c, r_h, r_w) for every scale, capped where a scale is smaller: a scale of
    height H_s takes r_h' = gcd(r_h, H_s) (likewise r_c, r_w), so (1, 8, 8) stays (1, 8, 8)
    at 16 x 16 and becomes (1, 4, 4) at 4 x 4; num_slots: N of every scale's memory;
    similarity, temperature, shrink_thres, backend: the memories' (DAAD: cosine, 1, 0)."""

    variant: str = "daad"
    in_channels: int = 3
    image_size: Tuple[int, int] = (256, 256)
    channels: Tuple[int, ...] = (32, 64, 128, 256)
    division: Tuple[int, int, int] = (1, 8, 8)
    num_slots: int = 500
    similarity: str = "cosine"
    temperature: float = 1.0
    shrink_thres: float = 0.0
    backend: str = "auto"

    def __post_init__(self):
        self.image_size, self.channels = tuple(self.image_size), tuple(self.channels)
        self.division = tuple(self.division)
        if self.variant not in DAAD_VARIANTS:
            raise ValueError(f"variant must be one of {DAAD_VARIANTS}, got {self.variant!r}")
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be a non-empty list of positive ints, got {self.channels}")
        factor = 2 ** len(self.channels)
        if any(s % factor for s in self.image_size):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^{len(self.channels)} "
                             f"= {factor} (one halving per scale of channels={self.channels})")

    @property
    def entropy_weight(self) -> float:
        return 0.0  # DAAD's loss has no entropy term

    effective_entropy_weight = entropy_weight

    def scale_shapes(self) -> List[Tuple[int, int, int]]:
        """(C, H, W) of every scale's features, finest first."""
        h, w = self.image_size
        return [(c, h >> (s + 1), w >> (s + 1)) for s, c in enumerate(self.channels)]

    def scale_divisions(self) -> List[Tuple[int, int, int]]:
        return [tuple(math.gcd(r, size) for r, size in zip(self.division, shape))
                for shape in self.scale_shapes()]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DAADConfig":
        return cls(**d)


def _conv_block(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(0.2, inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(0.2, inplace=True))


class DAAD(nn.Module):
    def __init__(self, config: DAADConfig):
        super().__init__()
        self.config = config
        widths = (config.in_channels,) + config.channels
        self.encoder = nn.ModuleList(_conv_block(cin, cout, 2) for cin, cout in zip(widths[:-1], widths[1:]))
        self.memories = nn.ModuleList(
            BlockMemory(config.num_slots, shape, division, similarity=config.similarity,
                        temperature=config.temperature, shrink_thres=config.shrink_thres,
                        backend=config.backend)
            for shape, division in zip(config.scale_shapes(), config.scale_divisions()))
        # Decoder step s (coarsest first): upsample scale s + 1 to scale s, concatenate with
        # M_s(f_s), fuse; a last upsampling returns to the input size.
        chans = config.channels
        self.up = nn.ModuleList(nn.ConvTranspose2d(chans[s + 1], chans[s], 4, stride=2, padding=1)
                                for s in range(len(chans) - 1))
        self.fuse = nn.ModuleList(_conv_block(2 * chans[s], chans[s], 1) for s in range(len(chans) - 1))
        self.head = nn.Sequential(nn.ConvTranspose2d(chans[0], chans[0], 4, stride=2, padding=1),
                                  nn.LeakyReLU(0.2, inplace=True),
                                  nn.Conv2d(chans[0], config.in_channels, 3, padding=1), nn.Tanh())

    def forward(self, x: torch.Tensor, return_att: bool = False) -> AEOutput:
        expected = (self.config.in_channels, *self.config.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected input (B, {', '.join(map(str, expected))}), got shape {tuple(x.shape)}")
        features = []
        h = x
        for stage in self.encoder:
            h = stage(h)
            features.append(h)
        reads = [memory(f, return_att=return_att) for memory, f in zip(self.memories, features)]
        h = reads[-1].output
        for s in reversed(range(len(self.up))):
            h = self.fuse[s](torch.cat([self.up[s](h), reads[s].output], dim=1))
        entropy = torch.stack([r.entropy.float() for r in reads]).mean()
        att = [r.att for r in reads] if return_att else None
        return AEOutput(self.head(h), entropy, att)
