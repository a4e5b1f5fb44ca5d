"""Builds csrc/cuda's kernels for the CPU against cuda_emulation.h (see that header)."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[3]


def load_emulated(sanitize_address=False):
    """The emulated CUDA op as a Python module, built once into build/ and reused while its
    sources are unchanged. With sanitize_address, an AddressSanitizer build, which needs
    libasan preloaded into the process (asan_check.py runs it so)."""
    from torch.utils.cpp_extension import load

    name = "memae_fused_cuda_emulated" + ("_asan" if sanitize_address else "")
    build = ROOT / "build" / name
    build.mkdir(parents=True, exist_ok=True)
    flags = ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"] if sanitize_address \
        else ["-O2"]
    return load(name=name,
                sources=[str(ROOT / "tests" / "gpu" / "cuda_emulation" / "emulated_cuda_op.cpp")],
                extra_include_paths=[str(ROOT / p) for p in
                                     ("csrc", "csrc/cuda", "tests/gpu/cuda_emulation")],
                extra_cflags=flags,
                extra_ldflags=["-fsanitize=address"] if sanitize_address else None,
                build_directory=str(build))
