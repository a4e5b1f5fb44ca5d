"""Cutting a feature map into blocks and putting it back: DAAD's block-wise memory queries.

A map x of shape (B, C, H, W) with division (r_c, r_h, r_w) has r_c * r_h * r_w blocks per
sample, each of c * h * w = (C / r_c)(H / r_h)(W / r_w) values. Block (b, l, i, j) — l over
channel groups, i over block rows, j over block columns — is the vector
x[b, l*c:(l+1)*c, i*h:(i+1)*h, j*w:(j+1)*w] flattened in (channel, row, column) order, and it
is row ((b * r_c + l) * r_h + i) * r_w + j of to_blocks' result.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch


def block_shape(shape: Sequence[int], division: Sequence[int]) -> Tuple[int, int, int]:
    """The block's (c, h, w) for a (C, H, W) map, or an error naming both."""
    if len(shape) != 3:
        raise ValueError(f"feature shape must be (C, H, W), got {tuple(shape)}")
    if len(division) != 3 or any(isinstance(r, bool) or not isinstance(r, int) or r < 1
                                 for r in division):
        raise ValueError(f"division must be three positive ints (r_c, r_h, r_w), got {tuple(division)}")
    if any(size % r for size, r in zip(shape, division)):
        raise ValueError(f"division (r_c, r_h, r_w) = {tuple(division)} does not divide the "
                         f"feature shape (C, H, W) = {tuple(shape)}")
    return tuple(size // r for size, r in zip(shape, division))


def to_blocks(x: torch.Tensor, division: Sequence[int]) -> torch.Tensor:
    """(B, C, H, W) -> (B * r_c * r_h * r_w, D) block queries, D = (C/r_c)(H/r_h)(W/r_w)."""
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    r_c, r_h, r_w = division
    c, h, w = block_shape(x.shape[1:], division)
    blocks = x.reshape(x.shape[0], r_c, c, r_h, h, r_w, w).permute(0, 1, 3, 5, 2, 4, 6)
    return blocks.reshape(-1, c * h * w)


def from_blocks(q: torch.Tensor, shape: Sequence[int], division: Sequence[int]) -> torch.Tensor:
    """The inverse of to_blocks: (B * r_c * r_h * r_w, D) -> `shape` = (B, C, H, W)."""
    if len(shape) != 4:
        raise ValueError(f"shape must be (B, C, H, W), got {tuple(shape)}")
    r_c, r_h, r_w = division
    c, h, w = block_shape(shape[1:], division)
    batch = shape[0]
    if q.dim() != 2 or q.shape != (batch * r_c * r_h * r_w, c * h * w):
        raise ValueError(f"q must be ({batch * r_c * r_h * r_w}, {c * h * w}) for shape "
                         f"{tuple(shape)} and division {tuple(division)}, got {tuple(q.shape)}")
    blocks = q.reshape(batch, r_c, r_h, r_w, c, h, w).permute(0, 1, 4, 2, 5, 3, 6)
    return blocks.reshape(*shape)
