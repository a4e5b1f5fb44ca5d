"""Build of memae_fused._C: the C++ op (csrc/cpu) always, the CUDA kernels (csrc/cuda) when
a CUDA toolkit is found. MEMAE_FUSED_CUDA=1 makes CUDA mandatory (CI sets it, so a CUDA
compile error fails the build), MEMAE_FUSED_CUDA=0 skips it. TORCH_CUDA_ARCH_LIST picks the
GPU targets (default: sm_80 and sm_90)."""

import glob
import os
import re
import shutil
import subprocess
import tempfile

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def locate_cuda_home():
    """The toolkit behind `nvcc` on PATH, even when that nvcc is a wrapper script outside it
    (torch would otherwise take the wrapper's parent folder for the toolkit)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cu")
        open(src, "w").close()
        out = subprocess.run([nvcc, "--dryrun", "-c", src, "-o", src + ".o"],
                             capture_output=True, text=True).stderr
    match = re.search(r"^#\$ TOP=(.+)$", out, re.MULTILINE)
    return os.path.realpath(match.group(1).strip()) if match else None


if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
    found = locate_cuda_home()
    if found:
        os.environ["CUDA_HOME"] = found

from torch.utils.cpp_extension import (  # noqa: E402  (reads CUDA_HOME at import)
    CUDA_HOME, BuildExtension, CppExtension, CUDAExtension)


def want_cuda():
    flag = os.environ.get("MEMAE_FUSED_CUDA", "auto").lower()
    if flag in ("0", "false", "no", "off"):
        return False
    if flag in ("1", "true", "yes", "on"):
        if CUDA_HOME is None:
            raise RuntimeError("MEMAE_FUSED_CUDA=1 but no CUDA toolkit (nvcc) was found")
        return True
    return CUDA_HOME is not None


def extensions():
    def rel(pattern):
        return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))

    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    # -fno-trapping-math (as PyTorch builds): lets GCC vectorise the CPU kernel's loops that
    # select on a division's result.
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math"]
    kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=["-fopenmp"],
                  py_limited_api=True)
    if want_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        return [CUDAExtension("memae_fused._C", sources + rel("csrc/cuda/*.cu"),
                              define_macros=[("WITH_CUDA", None)],
                              extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)]
    return [CppExtension("memae_fused._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
