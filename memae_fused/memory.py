"""The memory modules on the fused op: FusedMemory (MemAE's, one query per feature position;
a drop-in for the released code's MemModule) and BlockMemory (DAAD's, one query per block of
the feature map)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from memae_fused.blocks import block_shape, from_blocks, to_blocks
from memae_fused.ops import check_arguments, memory_read


class MemoryOutput(dict):
    """The module's result: attributes `output`, `entropy`, `att`, and dict access
    (`res["output"]`, `res["att"]`) like the released MemModule's dict."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __init__(self, output, entropy, att):
        super().__init__(output=output, entropy=entropy, att=att)


class FusedMemory(nn.Module):
    """MemAE memory module over every position of a channel-first feature map.

    Args:
        num_slots: N, the number of memory items.
        dim: C, the feature channels (the channel dimension of the input).
        shrink_thres: hard-shrinkage threshold lambda; None picks 1/num_slots (the low end of
            the paper's [1/N, 3/N]); 0 disables shrinkage and renormalisation.
        similarity: "cosine" (the paper) or "dot" (the released code).
        temperature: logits are divided by it. Cosine logits lie in [-1, 1]; at temperature 1
            the softmax is nearly flat (every weight ~1/N) and any lambda >= ~2.7/N empties
            every row, so the default 0.05 spreads them over [-20, 20].
        backend: "auto", "reference", "triton", "cuda" or "cpp" (see memory_read).

    forward(x, return_att=False) takes x of shape (B, C), (B, C, L), (B, C, H, W) or
    (B, C, T, H, W); every position is one query. It returns a MemoryOutput with `output`
    (x's shape and dtype), `entropy` (the mean addressing entropy over all queries, a
    differentiable scalar: add alpha * entropy to the loss) and `att` ((B, N, *spatial) when
    asked for, else None).
    """

    def __init__(self, num_slots: int, dim: int, shrink_thres: Optional[float] = None,
                 similarity: str = "cosine", temperature: float = 0.05, backend: str = "auto"):
        super().__init__()
        if isinstance(num_slots, bool) or not isinstance(num_slots, int) or num_slots < 1:
            raise ValueError(f"num_slots must be a positive int, got {num_slots!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.num_slots, self.dim = num_slots, dim
        self.shrink_thres = 1.0 / num_slots if shrink_thres is None else shrink_thres
        self.similarity, self.temperature, self.backend = similarity, temperature, backend
        probe = torch.empty(1, dim)
        check_arguments(probe, probe, self.shrink_thres, similarity, temperature, backend)
        self.memory = nn.Parameter(torch.empty(num_slots, dim))
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.dim)
        nn.init.uniform_(self.memory, -bound, bound)

    @classmethod
    def from_released(cls, weight: torch.Tensor, shrink_thres: float = 0.0025, **kwargs):
        """A FusedMemory computing what the released MemAE code's MemModule computes (dot
        similarity, temperature 1), holding that module's `memory.weight` (N x C)."""
        kwargs.setdefault("similarity", "dot")
        kwargs.setdefault("temperature", 1.0)
        module = cls(weight.shape[0], weight.shape[1], shrink_thres=shrink_thres, **kwargs)
        with torch.no_grad():
            module.memory.copy_(weight)
        return module

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints of the released code's MemModule name the weight "<prefix>memory.weight"
        # (a MemoryUnit inside): accept that name so FusedMemory loads them unchanged.
        released = prefix + "memory.weight"
        if released in state_dict and prefix + "memory" not in state_dict:
            state_dict[prefix + "memory"] = state_dict.pop(released)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self):
        return (f"num_slots={self.num_slots}, dim={self.dim}, shrink_thres={self.shrink_thres:g}, "
                f"similarity={self.similarity!r}, temperature={self.temperature:g}, "
                f"backend={self.backend!r}")

    def forward(self, x: torch.Tensor, return_att: bool = False) -> MemoryOutput:
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.dim() > 5:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be (B, C), (B, C, L), (B, C, H, W) or (B, C, T, H, W), got {shape}")
        if x.shape[1] != self.dim:
            raise ValueError(f"x has {x.shape[1]} channels (dim 1) but the memory has dim={self.dim}")
        batch, spatial = x.shape[0], x.shape[2:]
        # Channel-last view: every position becomes one row of the (Q, C) query.
        query = x.movedim(1, -1).reshape(-1, self.dim)
        memory = self.memory.to(dtype=x.dtype)
        res = memory_read(query, memory, shrink_thres=self.shrink_thres,
                          similarity=self.similarity, temperature=self.temperature,
                          backend=self.backend, return_att=return_att)
        output = res.read.reshape(batch, *spatial, self.dim).movedim(-1, 1)
        entropy = res.entropy.mean() if res.entropy.numel() else res.entropy.sum()
        att = None
        if return_att:
            att = res.att.reshape(batch, *spatial, self.num_slots).movedim(-1, 1)
        return MemoryOutput(output, entropy, att)


class BlockMemory(nn.Module):
    """DAAD's block-wise memory (Hou et al., ICCV 2021) over a (B, C, H, W) feature map.

    The map is cut into r_c x r_h x r_w blocks (memae_fused.blocks.to_blocks gives the
    order), each block flattened into one query of dimension D = (C/r_c)(H/r_h)(W/r_w) that
    addresses this module's memory (num_slots x D) through memory_read; the reads are put
    back in place. Few queries (B * r_c * r_h * r_w) of long D: on a 64 x 64 x 64 map at
    r_h = r_w = 8, r_c = 1 each of the B * 64 queries has D = 4096.

    Args:
        num_slots: N, the memory items.
        feature_shape: (C, H, W) of the maps it will see.
        division: (r_c, r_h, r_w); each must divide its dimension.
        similarity, temperature, shrink_thres, backend: as memory_read's. The defaults follow
            DAAD: cosine similarity, softmax at temperature 1, no shrinkage.

    forward(x, return_att=False) returns a MemoryOutput with `output` (x's shape and
    dtype), `entropy` (the mean addressing entropy over the blocks) and `att`
    ((B, N, r_c, r_h, r_w) when asked for, else None).
    """

    def __init__(self, num_slots: int, feature_shape: Sequence[int],
                 division: Sequence[int] = (1, 8, 8), similarity: str = "cosine",
                 temperature: float = 1.0, shrink_thres: float = 0.0, backend: str = "auto"):
        super().__init__()
        if isinstance(num_slots, bool) or not isinstance(num_slots, int) or num_slots < 1:
            raise ValueError(f"num_slots must be a positive int, got {num_slots!r}")
        self.feature_shape, self.division = tuple(feature_shape), tuple(division)
        self.block_shape = block_shape(self.feature_shape, self.division)
        self.num_slots = num_slots
        self.dim = math.prod(self.block_shape)
        self.shrink_thres, self.similarity = shrink_thres, similarity
        self.temperature, self.backend = temperature, backend
        probe = torch.empty(1, self.dim)
        check_arguments(probe, probe, shrink_thres, similarity, temperature, backend)
        self.memory = nn.Parameter(torch.empty(num_slots, self.dim))
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.dim)
        nn.init.uniform_(self.memory, -bound, bound)

    def extra_repr(self):
        return (f"num_slots={self.num_slots}, feature_shape={self.feature_shape}, "
                f"division={self.division}, dim={self.dim}, similarity={self.similarity!r}, "
                f"temperature={self.temperature:g}, shrink_thres={self.shrink_thres:g}, "
                f"backend={self.backend!r}")

    def forward(self, x: torch.Tensor, return_att: bool = False) -> MemoryOutput:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != self.feature_shape:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be (B, *feature_shape) = (B, {', '.join(map(str, self.feature_shape))}), "
                             f"got {shape}")
        query = to_blocks(x, self.division)
        res = memory_read(query, self.memory.to(dtype=x.dtype), shrink_thres=self.shrink_thres,
                          similarity=self.similarity, temperature=self.temperature,
                          backend=self.backend, return_att=return_att)
        output = from_blocks(res.read, x.shape, self.division)
        entropy = res.entropy.mean() if res.entropy.numel() else res.entropy.sum()
        att = None
        if return_att:
            att = res.att.reshape(x.shape[0], *self.division, self.num_slots).movedim(-1, 1)
        return MemoryOutput(output, entropy, att)
