"""Backend registry: which implementations exist, which can run on a device, and why not.

The implementations are this package's modules: eager.py (the "reference" backend), triton.py
(the Triton kernels) and cpp.py (the Python side of the compiled op in csrc/, serving "cpp" on
the CPU and "cuda" on GPUs). Each backend is a function (query, memory, shrink_thres, cosine, temperature) ->
(read, entropy), differentiable in query and memory, plus an availability check that
returns None when the backend can serve tensors on a device, or a sentence saying why not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch

BACKENDS = ("reference", "triton", "cuda", "cpp")
# Fastest first; "auto" takes the first one available for the tensors' device.
AUTO_ORDER = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpp", "reference")}


@dataclass(frozen=True)
class Backend:
    name: str
    unavailable_reason: Callable[[torch.device], Optional[str]]
    load: Callable[[], Callable]  # imported lazily so a missing dependency only costs its backend


def _reference_reason(device):
    return None


def _load_reference():
    from memae_fused.backends.eager import memory_read_eager

    def run(query, memory, shrink_thres, cosine, temperature):
        read, entropy, _ = memory_read_eager(query, memory, shrink_thres, cosine, temperature)
        return read, entropy

    return run


def _triton_reason(device):
    try:
        from memae_fused.backends import triton as triton_backend
    except ImportError as exc:  # pragma: no cover - triton ships with CUDA builds of torch
        return f"triton is not installed ({exc})"
    return triton_backend.unavailable_reason(device)


def _load_triton():
    from memae_fused.backends.triton import memory_read_triton

    return memory_read_triton


def _cpp_reason(device):
    from memae_fused.backends import cpp

    if cpp.load_error() is not None:
        return f"the compiled extension memae_fused._C is missing ({cpp.load_error()}); reinstall with 'pip install --no-build-isolation .'"
    if not cpp.has_kernel("CPU"):
        return "memae_fused._C has no CPU kernel registered"
    if device.type != "cpu":
        return f"the 'cpp' backend serves CPU tensors (got {device.type}); use 'cuda' or 'triton'"
    return None


def _cuda_reason(device):
    from memae_fused.backends import cpp

    if cpp.load_error() is not None:
        return f"the compiled extension memae_fused._C is missing ({cpp.load_error()}); reinstall with 'pip install --no-build-isolation .'"
    if not cpp.cuda_compiled():
        return "memae_fused._C was built without CUDA (no nvcc at install time, or MEMAE_FUSED_CUDA=0)"
    if device.type != "cuda":
        return f"the 'cuda' backend serves CUDA tensors (got {device.type}); use 'cpp' on the CPU"
    return None


def _load_cpp():
    from memae_fused.backends.cpp import memory_read_cpp

    return memory_read_cpp


REGISTRY: Dict[str, Backend] = {
    "reference": Backend("reference", _reference_reason, _load_reference),
    "triton": Backend("triton", _triton_reason, _load_triton),
    "cuda": Backend("cuda", _cuda_reason, _load_cpp),
    "cpp": Backend("cpp", _cpp_reason, _load_cpp),
}


def unavailable_reason(name: str, device: torch.device) -> Optional[str]:
    return REGISTRY[name].unavailable_reason(device)


def input_reason(name: str, query: torch.Tensor) -> Optional[str]:
    """Why backend `name` cannot take these particular inputs (it is available for their
    device), or None. Only the Triton kernels have such limits: their tiles fit at most 512
    channels on a GPU (256 in float64)."""
    if name != "triton":
        return None
    from memae_fused.backends.triton import unsupported_reason

    return unsupported_reason(query.dtype, query.shape[1], query.device)


def fallback_after(name: str, device: torch.device) -> str:
    """The next backend in "auto"'s order after `name` that is available on `device`."""
    order = AUTO_ORDER.get(device.type, ("reference",))
    later = order[order.index(name) + 1:] if name in order else order
    for candidate in later:
        if unavailable_reason(candidate, device) is None:
            return candidate
    return "reference"


def available_backends(device="cpu"):
    """Names of the backends that can serve tensors on `device`, fastest first."""
    device = torch.device(device)
    order = AUTO_ORDER.get(device.type, ("reference",))
    names = [n for n in order if unavailable_reason(n, device) is None]
    names += [n for n in BACKENDS if n not in names and unavailable_reason(n, device) is None]
    return names


def resolve(name: str, device: torch.device) -> str:
    """The backend that will run: `name` itself, or the first available one for "auto"."""
    resolved, reason = _resolve(name, device.type)
    if reason is not None:
        raise RuntimeError(f"backend={name!r} is not available: {reason}")
    return resolved


@torch.compiler.assume_constant_result
def _resolve(name: str, device_type: str):
    # A constant for torch.compile: which kernels are built and importable does not change
    # while a program runs, and the checks themselves cannot be traced.
    device = torch.device(device_type)
    if name == "auto":
        for candidate in AUTO_ORDER.get(device_type, ("reference",)):
            if unavailable_reason(candidate, device) is None:
                return candidate, None
        return "reference", None
    return name, unavailable_reason(name, device)


_loaded: Dict[str, Callable] = {}


def get(name: str) -> Callable:
    if name not in _loaded:
        _loaded[name] = REGISTRY[name].load()
    return _loaded[name]
