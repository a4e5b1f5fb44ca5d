import os

import pytest
import torch

# Without a GPU, Triton kernels run under Triton's CPU interpreter. The variable must be set
# before any @triton.jit function is defined, hence here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def counted_products(monkeypatch):
    """{"mac": multiply-adds of every tl.dot the interpreted Triton kernels run from here on}:
    the matrix work a plan does, to check the cost model's counts against."""
    from triton.runtime.interpreter import InterpreterBuilder

    total = {"mac": 0}
    original = InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, *args):
        total["mac"] += a.data.shape[-2] * a.data.shape[-1] * b.data.shape[-1]
        return original(self, a, b, d, *args)

    monkeypatch.setattr(InterpreterBuilder, "create_dot", create_dot)
    return total
