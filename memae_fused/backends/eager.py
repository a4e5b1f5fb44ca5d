"""The "reference" backend: the memory read in eager PyTorch, differentiated by autograd.

It materialises the Q x N addressing tensors, so it is the slow, memory-hungry path; it is
kept for devices no fused kernel serves and to return the attention when asked for it.
The independent test oracle lives in the top-level python_ref package.
"""

from __future__ import annotations

import torch

EPS = 1e-12


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(EPS)


def attention(query, memory, shrink_thres: float, cosine: bool, temperature: float):
    """Addressing weights a (Q x N) after softmax, hard shrinkage and L1 renormalisation."""
    if cosine:
        query, memory = normalize_rows(query), normalize_rows(memory)
    w = torch.softmax(torch.mm(query, memory.t()) * (1.0 / temperature), dim=1)
    if shrink_thres == 0:
        return w
    shifted = w - shrink_thres
    h = torch.relu(shifted) * w / (shifted.abs() + EPS)
    return h / h.sum(dim=1, keepdim=True).clamp_min(EPS)


def memory_read_eager(query, memory, shrink_thres: float, cosine: bool, temperature: float):
    att = attention(query, memory, shrink_thres, cosine, temperature)
    read = torch.mm(att, memory)
    entropy = -(att * torch.log(att + EPS)).sum(dim=1)
    return read, entropy, att
