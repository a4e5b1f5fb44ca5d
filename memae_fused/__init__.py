"""memae-fused: a fused memory read for memory-augmented autoencoders (MemAE)."""

from memae_fused.backends import available_backends
from memae_fused import blocks
from memae_fused.memory import BlockMemory, FusedMemory, MemoryOutput, MNADMemory, MNADOutput
from memae_fused.ops import MemoryReadResult, memory_read

__all__ = ["memory_read", "MemoryReadResult", "FusedMemory", "BlockMemory", "MNADMemory",
           "MemoryOutput", "MNADOutput", "available_backends", "blocks"]
__version__ = "0.1.0"
