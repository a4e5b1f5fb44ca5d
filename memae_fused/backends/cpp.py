"""Python side of the compiled C++/CUDA op (csrc/): loading, fake kernels and autograd.

The schemas are defined once in csrc/memae_fused.cpp with TORCH_LIBRARY; the CPU and CUDA
kernels register under their own dispatch keys. Here we attach what torch.compile and
autograd need, following torch.library's recommended split (register_fake,
register_autograd) rather than a bare autograd.Function.
"""

from __future__ import annotations

from typing import Optional

import torch

_LOAD_ERROR: Optional[str] = None
try:
    from memae_fused import _C  # noqa: F401  (loading registers the ops)
except ImportError as exc:  # a source checkout without a build, or a broken build
    _LOAD_ERROR = str(exc)


def load_error() -> Optional[str]:
    return _LOAD_ERROR


def has_kernel(dispatch_key: str) -> bool:
    return _LOAD_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "memae_fused::memory_read_fwd", dispatch_key
    )


def cuda_compiled() -> bool:
    return has_kernel("CUDA")


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


if _LOAD_ERROR is None:

    @torch.library.register_fake("memae_fused::memory_read_fwd")
    def _fwd_fake(query, memory, shrink_thres, cosine, temperature):
        q, c = query.shape
        return (
            query.new_empty((q, c)),
            query.new_empty((q,)),
            query.new_empty((3, q), dtype=_stats_dtype(query.dtype)),
        )

    @torch.library.register_fake("memae_fused::memory_read_bwd")
    def _bwd_fake(grad_read, grad_entropy, query, memory, read, entropy, stats,
                  shrink_thres, cosine, temperature):
        return torch.empty_like(query), torch.empty_like(memory)

    def _setup_context(ctx, inputs, output):
        query, memory, shrink_thres, cosine, temperature = inputs
        read, entropy, stats = output
        ctx.save_for_backward(query, memory, read, entropy, stats)
        ctx.args = (shrink_thres, cosine, temperature)

    def _backward(ctx, grad_read, grad_entropy, grad_stats):
        query, memory, read, entropy, stats = ctx.saved_tensors
        if grad_read is None:
            grad_read = torch.zeros_like(read)
        if grad_entropy is None:
            grad_entropy = torch.zeros_like(entropy)
        grad_query, grad_memory = torch.ops.memae_fused.memory_read_bwd(
            grad_read.contiguous(), grad_entropy.contiguous(), query, memory, read, entropy,
            stats, *ctx.args,
        )
        return grad_query, grad_memory, None, None, None

    torch.library.register_autograd(
        "memae_fused::memory_read_fwd", _backward, setup_context=_setup_context
    )


def memory_read_cpp(query, memory, shrink_thres, cosine, temperature):
    read, entropy, _ = torch.ops.memae_fused.memory_read_fwd(
        query.contiguous(), memory.contiguous(), float(shrink_thres), bool(cosine), float(temperature)
    )
    return read, entropy
