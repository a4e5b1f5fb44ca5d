"""Plain PyTorch reference for the MemAE memory read.

This package is the oracle every kernel in memae_fused is tested against. It
imports nothing from memae_fused and is written to follow the formulas
literally, materialising every Q x N tensor.
"""

from python_ref.memory import MemoryReadRef, MemoryUnit, MemModule, memory_read

__all__ = ["memory_read", "MemoryReadRef", "MemoryUnit", "MemModule"]
