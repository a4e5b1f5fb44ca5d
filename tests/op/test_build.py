"""The compiled extension: it loads, defines the op schemas, and carries CUDA when required."""

import os

import torch

from memae_fused.backends import cpp as cpp_op


def test_extension_loads_and_defines_ops():
    assert cpp_op.load_error() is None, cpp_op.load_error()
    for name in ("memory_read_fwd", "memory_read_bwd"):
        schema = str(getattr(torch.ops.memae_fused, name).default._schema)
        assert schema.startswith(f"memae_fused::{name}(")
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"memae_fused::{name}", "CPU")


def test_cuda_kernels_compiled_when_required():
    # CI sets MEMAE_FUSED_CUDA=1: the build must then contain the CUDA kernels.
    if os.environ.get("MEMAE_FUSED_CUDA") == "1":
        assert cpp_op.cuda_compiled()
        assert torch._C._dispatch_has_kernel_for_dispatch_key("memae_fused::memory_read_bwd", "CUDA")
