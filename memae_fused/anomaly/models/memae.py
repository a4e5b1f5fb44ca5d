"""MemAE models: a convolutional autoencoder (3-D for video clips, 2-D for images) with the
fused memory between encoder and decoder, and the paper's ablations (plain AE, MemAE-nonSpar).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from memae_fused.memory import FusedMemory

VARIANTS = ("memae", "memae-nonspar", "ae")
ACTIVATIONS = ("leaky_relu", "relu")


@dataclass
class ModelConfig:
    """Architecture and memory settings.

    variant: "memae" (memory with shrinkage and entropy loss), "memae-nonspar" (memory with
        neither: shrink_thres and entropy_weight are taken as 0) or "ae" (no memory).
    dims: 3 for video clips (B, C, T, H, W), 2 for images (B, C, H, W).
    channels: encoder output channels per stride-2 stage (its length is the depth).
    decoder_channels: output channels of every decoder stage but the last (which outputs
        in_channels); None mirrors the encoder (reversed(channels[:-1])).
    kernel_sizes: encoder kernel per stage; None means 3 everywhere. Decoder kernels are 3.
    num_slots, shrink_thres (None: 1/num_slots), similarity, temperature: the memory
        (see FusedMemory).
    entropy_weight: alpha, the weight of the addressing entropy in the loss.
    """

    variant: str = "memae"
    dims: int = 3
    in_channels: int = 1
    channels: Tuple[int, ...] = (96, 128, 256, 256)
    decoder_channels: Optional[Tuple[int, ...]] = None
    kernel_sizes: Optional[Tuple[int, ...]] = None
    num_slots: int = 2000
    shrink_thres: Optional[float] = None
    similarity: str = "cosine"
    temperature: float = 0.05
    entropy_weight: float = 0.0002
    activation: str = "leaky_relu"
    backend: str = "auto"

    def __post_init__(self):
        self.channels = tuple(self.channels)
        if self.decoder_channels is not None:
            self.decoder_channels = tuple(self.decoder_channels)
        if self.kernel_sizes is not None:
            self.kernel_sizes = tuple(self.kernel_sizes)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.dims not in (2, 3):
            raise ValueError(f"dims must be 2 (images) or 3 (video clips), got {self.dims}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be a non-empty list of positive ints, got {self.channels}")
        depth = len(self.channels)
        if self.decoder_channels is not None and len(self.decoder_channels) != depth - 1:
            raise ValueError(f"decoder_channels needs {depth - 1} entries (one per decoder stage "
                             f"but the last), got {self.decoder_channels}")
        if self.kernel_sizes is not None and len(self.kernel_sizes) != depth:
            raise ValueError(f"kernel_sizes needs {depth} entries, got {self.kernel_sizes}")

    @property
    def uses_memory(self) -> bool:
        return self.variant != "ae"

    @property
    def effective_shrink_thres(self) -> Optional[float]:
        return 0.0 if self.variant == "memae-nonspar" else self.shrink_thres

    @property
    def effective_entropy_weight(self) -> float:
        return self.entropy_weight if self.variant == "memae" else 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(**d)


def video_config(**overrides) -> ModelConfig:
    """The paper's video model: 16-frame grayscale cuboids, N = 2000, C = 256."""
    return ModelConfig(**{**dict(dims=3, in_channels=1, channels=(96, 128, 256, 256),
                                 decoder_channels=(256, 128, 96), num_slots=2000), **overrides})


def mnist_config(**overrides) -> ModelConfig:
    """The paper's MNIST model (28 x 28 grayscale), N = 100."""
    return ModelConfig(**{**dict(dims=2, in_channels=1, channels=(16, 32, 64),
                                 decoder_channels=(64, 32), kernel_sizes=(1, 3, 3),
                                 num_slots=100), **overrides})


def cifar_config(**overrides) -> ModelConfig:
    """The paper's CIFAR-10 model (32 x 32 RGB), N = 500."""
    return ModelConfig(**{**dict(dims=2, in_channels=3, channels=(64, 128, 128, 256),
                                 decoder_channels=(256, 128, 128), num_slots=500), **overrides})


class AEOutput(NamedTuple):
    """recon: the reconstruction (input's shape); entropy: mean addressing entropy (0 without
    memory); att: (B, N, *feature positions) when asked for, else None."""

    recon: torch.Tensor
    entropy: torch.Tensor
    att: Optional[torch.Tensor]


def _activation(name: str) -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True) if name == "leaky_relu" else nn.ReLU(inplace=True)


class _DecoderStage(nn.Module):
    """Stride-2 transposed conv that restores the exact size of the matching encoder input."""

    def __init__(self, dims, in_ch, out_ch, activation: Optional[str]):
        super().__init__()
        conv = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
        norm = nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d
        self.conv = conv(in_ch, out_ch, 3, stride=2, padding=1)
        self.post = nn.Sequential(norm(out_ch), _activation(activation)) if activation else nn.Identity()

    def forward(self, x, size: Sequence[int]):
        return self.post(self.conv(x, output_size=list(size)))


class MemAE(nn.Module):
    """Encoder -> FusedMemory over every feature position -> decoder (or encoder -> decoder
    for the plain AE). Any input size works: each decoder stage restores the size of the
    matching encoder input."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        dims = config.dims
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        norm = nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d
        kernels = config.kernel_sizes or (3,) * len(config.channels)
        widths = (config.in_channels,) + config.channels
        self.encoder = nn.ModuleList(
            nn.Sequential(conv(cin, cout, k, stride=2, padding=k // 2), norm(cout),
                          _activation(config.activation))
            for cin, cout, k in zip(widths[:-1], widths[1:], kernels))
        dec_out = config.decoder_channels
        if dec_out is None:
            dec_out = tuple(reversed(config.channels[:-1]))
        dec_widths = (config.channels[-1],) + dec_out + (config.in_channels,)
        last = len(dec_widths) - 2
        self.decoder = nn.ModuleList(
            _DecoderStage(dims, cin, cout, None if i == last else config.activation)
            for i, (cin, cout) in enumerate(zip(dec_widths[:-1], dec_widths[1:])))
        self.memory = None
        if config.uses_memory:
            self.memory = FusedMemory(config.num_slots, config.channels[-1],
                                      shrink_thres=config.effective_shrink_thres,
                                      similarity=config.similarity,
                                      temperature=config.temperature, backend=config.backend)

    def forward(self, x: torch.Tensor, return_att: bool = False) -> AEOutput:
        if x.dim() != self.config.dims + 2 or x.shape[1] != self.config.in_channels:
            layout = "(B, C, T, H, W)" if self.config.dims == 3 else "(B, C, H, W)"
            raise ValueError(f"expected input {layout} with C = {self.config.in_channels}, "
                             f"got shape {tuple(x.shape)}")
        sizes = []
        h = x
        for stage in self.encoder:
            sizes.append(h.shape[2:])
            h = stage(h)
        att = None
        if self.memory is not None:
            mem = self.memory(h, return_att=return_att)
            h, entropy, att = mem.output, mem.entropy, mem.att
        else:
            entropy = h.new_zeros((), dtype=torch.float32)
        for stage, size in zip(self.decoder, reversed(sizes)):
            h = stage(h, size)
        return AEOutput(h, entropy, att)


def memae_loss(x: torch.Tensor, out: AEOutput, entropy_weight: float):
    """(total, reconstruction, entropy): mean squared error + alpha * mean addressing entropy,
    in float32 even under autocast."""
    recon = F.mse_loss(out.recon.float(), x.float())
    entropy = out.entropy.float()
    return recon + entropy_weight * entropy, recon, entropy
