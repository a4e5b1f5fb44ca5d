"""Print what a build of memae_fused._C depends on, as one hash: the C++/CUDA sources,
setup.py, the torch version and the CUDA targets. bench/gpu/device_rehearsal.sh writes it beside
the extension it builds for the GPU machine; bench/gpu/gpu_check.sh uses that prebuilt extension
only where the hash it computes there is the same, and builds otherwise.

    python bench/gpu/extension_stamp.py      (TORCH_CUDA_ARCH_LIST as gpu_check sets it: 9.0)
"""

import hashlib
import os
import pathlib

import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]


def stamp() -> str:
    digest = hashlib.sha256()
    for path in sorted(ROOT.glob("csrc/**/*")) + [ROOT / "setup.py"]:
        if path.is_file():
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    digest.update(torch.__version__.encode())
    digest.update(os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0").encode())
    return digest.hexdigest()


if __name__ == "__main__":
    print(stamp())
