"""The released MemAE code's memory module and entropy loss, on the fused op.

A drop-in for the authors' models/memory_module.py and models/entropy_loss.py
(donggong1/memae-anomaly-detection) and the many copies of them: the same public names,
signatures, defaults (dot-product addressing, no temperature, shrink_thres=0.0025, a `device`
argument that is accepted and ignored), attributes, result dicts and state-dict layout
(`memory.weight`). Replacing

    from models.memory_module import *
    from models.entropy_loss import *

with `from memae_fused.released import *` is the whole migration.

What changes is what is stored. The modules compute the read and the addressing entropy with
the fused kernels, which never hold the Q x N addressing weights. The `att` entry of their
result is a `LazyAttention`: a tensor whose shape, dtype and device are known at once and whose
values are computed (by an unfused eager pass, differentiable in the input and the memory) the
first time anything else asks for them. `EntropyLoss` and `EntropyLossEncap` recognise it and
return the fused kernel's entropy instead, so the released training loop

    recon_res = model(frames); att_w = recon_res['att']
    entropy_loss = EntropyLossEncap()(att_w)

never builds a Q x N tensor. Any other use of `att` (indexing, arithmetic, `.cpu()`, a loss of
your own, an entropy loss from a copy of the released file) materialises it once and pays the
released code's Q x N memory for as long as it is kept.

Backend: the `backend` keyword of MemoryUnit/MemModule, else the environment variable
MEMAE_FUSED_BACKEND, else "auto" (see memae_fused.memory_read).
"""

from __future__ import annotations

import math
import os
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_map_only

from memae_fused.backends.eager import attention
from memae_fused.ops import check_arguments, memory_read

__all__ = ["MemoryUnit", "MemModule", "hard_shrink_relu", "EntropyLoss", "EntropyLossEncap",
           "feature_map_permute", "LazyAttention"]

BACKEND_ENV = "MEMAE_FUSED_BACKEND"
# The released code's epsilon in the entropy's log; the fused kernels use the same.
ENTROPY_EPS = 1e-12


def _backend(backend: Optional[str]) -> str:
    return backend if backend is not None else os.environ.get(BACKEND_ENV, "auto")


def hard_shrink_relu(input, lambd=0, epsilon=1e-12):
    """The released ReLU form of hard shrinkage, for non-negative input:
    relu(x - lambd) * x / (|x - lambd| + epsilon)."""
    return (F.relu(input - lambd) * input) / (torch.abs(input - lambd) + epsilon)


# What a LazyAttention answers without computing its values.
_METADATA = {torch.Tensor.size, torch.Tensor.dim, torch.Tensor.numel, torch.Tensor.__len__,
             torch.Tensor.element_size, torch.Tensor.is_floating_point,
             torch.Tensor.shape.__get__, torch.Tensor.ndim.__get__, torch.Tensor.dtype.__get__,
             torch.Tensor.device.__get__, torch.Tensor.is_cuda.__get__,
             torch.Tensor.layout.__get__}


class LazyAttention(torch.Tensor):
    """Addressing weights computed on first use.

    Shape, dtype, device, size(), dim() and numel() come without computing anything. Any other
    operation computes the weights once (Q x N, with the graph to the query and the memory, so
    gradients flow as through the released module's `att`), caches them, and runs on them.
    `fused_entropy` holds the fused kernel's per-query entropy, which EntropyLoss and
    EntropyLossEncap use instead of the weights.
    """

    _compute: Callable[[], torch.Tensor]
    _value: Optional[torch.Tensor]
    fused_entropy: torch.Tensor

    @staticmethod
    def __new__(cls, compute, shape, dtype, device, fused_entropy):
        self = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=device)
        self._compute, self._value, self.fused_entropy = compute, None, fused_entropy
        return self

    def materialize(self) -> torch.Tensor:
        """The weights as a plain tensor (computed on the first call)."""
        if self._value is None:
            self._value = self._compute()
            self._compute = None  # drop the closure's references to the inputs
        return self._value

    @property
    def is_materialized(self) -> bool:
        return self._value is not None

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        args, kwargs = tree_map_only(LazyAttention, LazyAttention.materialize, (args, kwargs))
        return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        # Reached only by internals that skip __torch_function__; autograd has already run
        # above this level, so the values are enough.
        args, kwargs = tree_map_only(LazyAttention, lambda t: t.materialize().detach(),
                                     (args, kwargs or {}))
        return func(*args, **kwargs)


def _fused_entropy_of(x, eps) -> Optional[torch.Tensor]:
    if isinstance(x, LazyAttention) and eps == ENTROPY_EPS:
        return x.fused_entropy
    return None


def _lazy_att(query, memory, shrink_thres, entropy, layout: Callable[[torch.Tensor], torch.Tensor],
              shape):
    """The weights of this read as a LazyAttention of `shape` (`layout` turns (Q, N) weights
    into it). 16-bit inputs get float32 weights, as the released module's softmax gives them
    under autocast. The computation runs outside autocast and in the grad mode of the forward
    (no graph when it ran under torch.no_grad()), so the result does not depend on where the
    weights are first used."""
    dtype = torch.float32 if query.dtype.itemsize < 4 else query.dtype
    grad_enabled = torch.is_grad_enabled()

    def compute():
        with torch.autocast(query.device.type, enabled=False), torch.set_grad_enabled(grad_enabled):
            return layout(attention(query.to(dtype), memory.to(dtype), shrink_thres, False, 1.0))

    if torch.compiler.is_compiling():
        # A tensor subclass made inside a compiled graph is not supported: compute them now.
        return compute()
    return LazyAttention(compute, shape, dtype, query.device, entropy)


class MemoryUnit(nn.Module):
    """The released MemoryUnit: memory `weight` (mem_dim x fea_dim), dot-product addressing of
    (T, fea_dim) queries, softmax, hard shrinkage at shrink_thres (skipped when 0) with L1
    renormalisation; forward returns {'output': (T, fea_dim), 'att': (T, mem_dim)}."""

    def __init__(self, mem_dim, fea_dim, shrink_thres=0.0025, *, backend=None):
        super().__init__()
        self.mem_dim = mem_dim
        self.fea_dim = fea_dim
        self.weight = nn.Parameter(torch.empty(mem_dim, fea_dim))
        self.bias = None
        self.shrink_thres = shrink_thres
        self.backend = _backend(backend)
        probe = torch.empty(1, fea_dim)
        check_arguments(probe, probe, shrink_thres, "dot", 1.0, self.backend)
        self.reset_parameters()

    def reset_parameters(self):
        stdv = 1.0 / math.sqrt(self.weight.size(1))
        with torch.no_grad():
            self.weight.uniform_(-stdv, stdv)

    def forward(self, input):
        if not isinstance(input, torch.Tensor) or input.dim() != 2:
            shape = tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__
            raise ValueError(f"input must be (T, fea_dim={self.fea_dim}), got {shape}")
        weight = self.weight.to(dtype=input.dtype)
        res = memory_read(input, weight, shrink_thres=float(self.shrink_thres), similarity="dot",
                          temperature=1.0, backend=self.backend)
        att = _lazy_att(input, weight, float(self.shrink_thres), res.entropy, lambda a: a,
                        (input.shape[0], self.mem_dim))
        return {"output": res.read, "att": att}

    def extra_repr(self):
        return f"mem_dim={self.mem_dim}, fea_dim={self.fea_dim}, backend={self.backend!r}"


class MemModule(nn.Module):
    """The released MemModule: every position of a channel-first (N, C), (N, C, L),
    (N, C, H, W) or (N, C, T, H, W) feature map is one query of a MemoryUnit (attribute
    `memory`); forward returns {'output': input's shape, 'att': (N, mem_dim, *spatial)}.
    `device` is accepted and ignored, as the released module does."""

    def __init__(self, mem_dim, fea_dim, shrink_thres=0.0025, device="cuda", *, backend=None):
        super().__init__()
        self.mem_dim = mem_dim
        self.fea_dim = fea_dim
        self.shrink_thres = shrink_thres
        self.memory = MemoryUnit(self.mem_dim, self.fea_dim, self.shrink_thres, backend=backend)

    def forward(self, input):
        if not isinstance(input, torch.Tensor) or not 2 <= input.dim() <= 5:
            shape = tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__
            raise ValueError(f"input must be (N, C), (N, C, L), (N, C, H, W) or (N, C, T, H, W), "
                             f"got {shape}")
        if input.shape[1] != self.fea_dim:
            raise ValueError(f"input has {input.shape[1]} channels (dim 1) but fea_dim={self.fea_dim}")
        batch, spatial = input.shape[0], tuple(input.shape[2:])
        query = input.movedim(1, -1).reshape(-1, self.fea_dim)
        unit = self.memory
        weight = unit.weight.to(dtype=input.dtype)
        res = memory_read(query, weight, shrink_thres=float(unit.shrink_thres), similarity="dot",
                          temperature=1.0, backend=unit.backend)
        output = res.read.reshape(batch, *spatial, self.fea_dim).movedim(-1, 1)

        def layout(att):
            return att.reshape(batch, *spatial, self.mem_dim).movedim(-1, 1)

        att = _lazy_att(query, weight, float(unit.shrink_thres), res.entropy, layout,
                        (batch, self.mem_dim, *spatial))
        return {"output": output, "att": att}


def feature_map_permute(input):
    """(N, C, *spatial) -> (N * prod(spatial), C): channels last, one row per position."""
    if not isinstance(input, torch.Tensor) or not 2 <= input.dim() <= 5:
        shape = tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__
        raise ValueError(f"input must be a feature map of rank 2 to 5, got {shape}")
    return input.movedim(1, -1).contiguous().view(-1, input.shape[1])


class EntropyLoss(nn.Module):
    """Mean over rows of -sum_j x_ij log(x_ij + eps), for (rows, slots) weights."""

    def __init__(self, eps=1e-12):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        fused = _fused_entropy_of(x, self.eps)
        if fused is not None and x.dim() == 2:
            return fused.mean()
        b = x * torch.log(x + self.eps)
        return (-1.0 * b.sum(dim=1)).mean()


class EntropyLossEncap(nn.Module):
    """EntropyLoss over every position of a channel-first map of weights (N, mem_dim, *spatial),
    as MemModule returns them in 'att'."""

    def __init__(self, eps=1e-12):
        super().__init__()
        self.eps = eps
        self.entropy_loss = EntropyLoss(eps)

    def forward(self, input):
        fused = _fused_entropy_of(input, self.eps)
        if fused is not None:
            return fused.mean()
        return self.entropy_loss(feature_map_permute(input))
