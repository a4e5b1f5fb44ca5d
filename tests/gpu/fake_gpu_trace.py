"""What torch.compile makes of the Triton ops on a GPU, found without one.

On CUDA tensors, AOTAutograd's functionalization decomposes each triton_op into its kernel
launches (triton_kernel_wrapper_functional) and asks Triton's front end, for the GPU's target,
which arguments each kernel writes: those alone are cloned. If that analysis fails, torch
logs a warning and clones every tensor argument, which is slow. Under the interpreter
(TRITON_INTERPRET=1, the rest of the test suite) none of this runs, so this script traces the
ops on fake CUDA tensors with the interpreter off and an sm_90 target, as an H100 or H200
would give it, and prints one JSON record per case. Started by tests/gpu/test_triton_fake_gpu_trace.py
in its own process:  python tests/gpu/fake_gpu_trace.py
"""

import itertools
import json
import logging
import os
import pathlib
import sys

os.environ["TRITON_INTERPRET"] = "0"  # before triton is imported: real JIT kernels

import torch  # noqa: E402
import triton  # noqa: E402
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch._subclasses.functional_tensor import dispatch_functionalize  # noqa: E402
from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from memae_fused.backends import triton as triton_kernels  # noqa: E402

SM_COUNT = 132  # an H100 SXM's or H200's multiprocessors: no GPU here to ask
triton_kernels._num_sms = lambda device: SM_COUNT


class SM90Driver:
    """The one thing torch's write analysis asks of Triton's active driver: the target."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


triton.runtime.driver.set_active(SM90Driver())

# (Q, N, C): many queries (one sweep per query block), few queries with a long memory (both
# sweeps split), an odd channel count.
SHAPES = [(16384, 2000, 256), (4, 20000, 256), (300, 77, 45)]
DTYPES = {"float32": torch.float32, "tf32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


# torch's loggers do not pass records up; the write analysis logs to torch._dynamo's.
TORCH_LOGGERS = ("torch", "torch._dynamo")


class WarningLog(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def trace_case(shape, dtype, cosine, shrink_thres):
    q, n, c = shape
    with FakeTensorMode():
        query = torch.empty(q, c, device="cuda", dtype=dtype)
        memory = torch.empty(n, c, device="cuda", dtype=dtype)
        grad_read = torch.empty(q, c, device="cuda", dtype=dtype)
        grad_entropy = torch.empty(q, device="cuda", dtype=dtype)

    # As memory_read_triton calls the forward when a backward follows.
    save_y = triton_kernels.backward_query_plan(
        triton_kernels._block_c(c), dtype, torch.device("cuda"),
        triton_kernels._dot_precision(dtype), shrink_thres > 0) == "forward_y"

    def forward_and_backward(query, memory, grad_read, grad_entropy):
        fwd = torch.ops.memae_fused.triton_memory_read_fwd.default
        bwd = torch.ops.memae_fused.triton_memory_read_bwd.default
        read, entropy, stats, y = fwd(query, memory, shrink_thres, cosine, 1.0, save_y)
        return bwd(grad_read, grad_entropy, query, memory, read, entropy, stats, y,
                   shrink_thres, cosine, 1.0)

    graph = make_fx(dispatch_functionalize(forward_and_backward), tracing_mode="fake")(
        query, memory, grad_read, grad_entropy)
    launches, custom_ops = [], []
    for node in graph.graph.nodes:
        if node.op != "call_function":
            continue
        if "triton_kernel_wrapper" in str(node.target):
            args = {**kernel_side_table.get_constant_args(node.kwargs["constant_args_idx"]),
                    **node.kwargs["kwargs"]}
            launches.append({
                "kernel": kernel_side_table.get_kernel(node.kwargs["kernel_idx"]).fn.__name__,
                "wrapper": str(node.target),
                "grid": [list(g) for g in node.kwargs["grid"]],
                "split": args.get("SPLIT"),  # the forward kernel's mode; None elsewhere
                "save_y": args.get("SAVE_Y"),  # the forward kernels'; None elsewhere
                "shared_kv": args.get("SHARED_KV"),
                "pass": args.get("PASS"),  # the query-major backward's pass; None elsewhere
                "block_n": args.get("BLOCK_N"),
                "written": sorted(node.kwargs["tensors_to_clone"]),
            })
        elif str(node.target).startswith("memae_fused."):
            custom_ops.append(str(node.target))
    return launches, custom_ops


def main():
    log = WarningLog()
    for name in TORCH_LOGGERS:
        logging.getLogger(name).addHandler(log)
    for shape, (dtype_name, dtype), cosine, shrink_thres in itertools.product(
            SHAPES, DTYPES.items(), (True, False), (0.0, 0.01)):
        torch.set_float32_matmul_precision("high" if dtype_name == "tf32" else "highest")
        log.messages.clear()
        launches, custom_ops = trace_case(shape, dtype, cosine, shrink_thres)
        print(json.dumps({"shape": shape, "dtype": dtype_name, "cosine": cosine,
                          "shrink_thres": shrink_thres, "launches": launches,
                          "custom_ops": custom_ops, "warnings": log.messages}), flush=True)


if __name__ == "__main__":
    main()
