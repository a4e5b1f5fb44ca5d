"""Reference memory read of MemAE (Gong et al., ICCV 2019), step by step.

For queries z (Q x C) and memory M (N x C):
  1. logits  s_ij = sim(z_i, m_j) / temperature, sim = cosine or dot product
  2. w = softmax_j(s)
  3. h = relu(w - lam) * w / (|w - lam| + 1e-12)        (skipped when lam == 0)
  4. a = h / max(sum_j h_j, 1e-12)                      (skipped when lam == 0)
  5. read_i = sum_j a_ij m_j
  6. entropy_i = -sum_j a_ij log(a_ij + 1e-12)
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

SHRINK_EPS = 1e-12
NORM_EPS = 1e-12
LOG_EPS = 1e-12


class MemoryReadRef(NamedTuple):
    read: torch.Tensor
    entropy: torch.Tensor
    att: Optional[torch.Tensor]


def addressing_logits(query, memory, similarity, temperature):
    if similarity == "cosine":
        query = query / query.norm(dim=1, keepdim=True).clamp_min(NORM_EPS)
        memory = memory / memory.norm(dim=1, keepdim=True).clamp_min(NORM_EPS)
    elif similarity != "dot":
        raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
    return (query @ memory.t()) / temperature


def addressing_weights(query, memory, *, shrink_thres, similarity="cosine", temperature=1.0):
    """The Q x N addressing weights a of steps 1-4."""
    w = torch.softmax(addressing_logits(query, memory, similarity, temperature), dim=1)
    if shrink_thres == 0:
        return w
    h = F.relu(w - shrink_thres) * w / (torch.abs(w - shrink_thres) + SHRINK_EPS)
    return h / h.sum(dim=1, keepdim=True).clamp_min(SHRINK_EPS)


def memory_read(query, memory, *, shrink_thres, similarity="cosine", temperature=1.0, return_att=False):
    """Reference memory read: query (Q, C), memory (N, C) -> read (Q, C), entropy (Q,)."""
    a = addressing_weights(
        query, memory, shrink_thres=shrink_thres, similarity=similarity, temperature=temperature
    )
    read = a @ memory
    entropy = -(a * torch.log(a + LOG_EPS)).sum(dim=1)
    return MemoryReadRef(read, entropy, a if return_att else None)


class MemoryUnit(nn.Module):
    """Like the released code's MemoryUnit: (Q, C) in, {'output', 'att'} out."""

    def __init__(self, mem_dim, fea_dim, shrink_thres=0.0025, similarity="dot", temperature=1.0):
        super().__init__()
        self.mem_dim, self.fea_dim = mem_dim, fea_dim
        self.shrink_thres, self.similarity, self.temperature = shrink_thres, similarity, temperature
        self.weight = nn.Parameter(torch.empty(mem_dim, fea_dim))
        stdv = 1.0 / math.sqrt(fea_dim)
        nn.init.uniform_(self.weight, -stdv, stdv)

    def forward(self, x):
        res = memory_read(
            x, self.weight, shrink_thres=self.shrink_thres, similarity=self.similarity,
            temperature=self.temperature, return_att=True,
        )
        return {"output": res.read, "att": res.att, "entropy": res.entropy}


class MemModule(nn.Module):
    """Like the released code's MemModule: channel-first (B, C, *spatial) in and out."""

    def __init__(self, mem_dim, fea_dim, shrink_thres=0.0025, similarity="dot", temperature=1.0):
        super().__init__()
        self.memory = MemoryUnit(mem_dim, fea_dim, shrink_thres, similarity, temperature)

    def forward(self, x):
        b, c = x.shape[:2]
        spatial = x.shape[2:]
        q = x.reshape(b, c, -1).transpose(1, 2).reshape(-1, c)
        y = self.memory(q)
        out = y["output"].reshape(b, -1, c).transpose(1, 2).reshape(b, c, *spatial)
        att = y["att"].reshape(b, -1, y["att"].shape[1]).transpose(1, 2)
        att = att.reshape(b, -1, *spatial)
        return {"output": out, "att": att, "entropy": y["entropy"].mean()}
