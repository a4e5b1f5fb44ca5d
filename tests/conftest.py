import os

import torch

# Without a GPU, Triton kernels run under Triton's CPU interpreter. The variable must be set
# before any @triton.jit function is defined, hence here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
