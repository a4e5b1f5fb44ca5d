"""memory_read: the public op, its argument checks and backend dispatch."""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Optional

import torch

from memae_fused import backends
from memae_fused.backends.eager import attention

SIMILARITIES = ("cosine", "dot")


class MemoryReadResult(NamedTuple):
    """read: (Q, C) in the query's dtype; entropy: (Q,); att: (Q, N) when asked for, else None."""

    read: torch.Tensor
    entropy: torch.Tensor
    att: Optional[torch.Tensor]


def _check_number(name, value, *, positive):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if not positive and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def check_arguments(query, memory, shrink_thres, similarity, temperature, backend):
    for name, t in (("query", query), ("memory", memory)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if memory.shape[0] == 0:
        raise ValueError("memory must have at least one slot (N >= 1), got N = 0")
    if query.shape[1] != memory.shape[1]:
        raise ValueError(
            f"query has {query.shape[1]} channels but memory has dim {memory.shape[1]}: "
            "query must be (Q, C) and memory (N, C)"
        )
    if query.device != memory.device:
        raise ValueError(f"query is on {query.device} but memory is on {memory.device}")
    if query.dtype != memory.dtype:
        raise TypeError(
            f"query is {query.dtype} but memory is {memory.dtype}; cast one of them "
            "(FusedMemory casts its memory to the input's dtype)"
        )
    _check_number("shrink_thres", shrink_thres, positive=False)
    _check_number("temperature", temperature, positive=True)
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    if backend != "auto" and backend not in backends.BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {backends.BACKENDS}, got {backend!r}")


def memory_read(query, memory, *, shrink_thres, similarity="cosine", temperature=1.0,
                backend="auto", return_att=False) -> MemoryReadResult:
    """Fused MemAE memory read.

    query (Q, C) addresses memory (N, C): cosine or dot similarity divided by
    `temperature`, softmax over the N slots, hard shrinkage at `shrink_thres` (0 disables it)
    with L1 renormalisation, then the weighted read of the slots. Returns
    MemoryReadResult(read (Q, C), entropy (Q,), att), differentiable in query and memory.
    `att` (Q, N) is computed only when return_att=True, by a separate unfused pass, since
    the fused kernels never hold it. Inputs a backend's kernels cannot take (the Triton
    kernels on a GPU fit at most 512 channels, 256 in float64) run on the next backend in
    "auto"'s order, with a warning when that backend was asked for by name.
    """
    check_arguments(query, memory, shrink_thres, similarity, temperature, backend)
    name = backends.resolve(backend, query.device)
    reason = backends.input_reason(name, query)
    if reason is not None:
        # Only the Triton kernels refuse inputs (channels wider than their GPU tiles, such as
        # DAAD's block queries): the next backend that takes them runs instead.
        fallback = backends.fallback_after(name, query.device)
        if backend != "auto":
            warnings.warn(f"backend={backend!r} cannot take these inputs ({reason}); "
                          f"running them on backend={fallback!r}", stacklevel=2)
        name = fallback
    cosine = similarity == "cosine"
    if query.shape[0] == 0:
        # Empty batch: no kernel launch, but keep both inputs in the graph so that backward
        # gives zero gradients rather than none.
        read = (query + memory[:0]) * 0
        entropy = read.sum(dim=1)
    else:
        read, entropy = backends.get(name)(
            query, memory, float(shrink_thres), cosine, float(temperature)
        )
    att = attention(query, memory, float(shrink_thres), cosine, float(temperature)) if return_att else None
    return MemoryReadResult(read, entropy, att)
