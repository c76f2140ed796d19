"""How the kernels are compiled: one description shared by ``setup.py`` (ahead of time)
and ``_ops`` (JIT), so both builds use the same sources, flags and CUDA architectures.

Plain Python with no package imports: ``setup.py`` loads this file by path, before the
package (or even torch) is importable.
"""

import glob
import hashlib
import os
import shutil

# Vectorisable selects (torch is built the same way) and no FMA contraction, so float64
# results stay bit-identical to the reference on every compiler; nvcc likewise.
CXX_FLAGS = ["-O3", "-fopenmp", "-fno-trapping-math", "-ffp-contract=off"]
NVCC_FLAGS = ["-O3", "--fmad=false"]
LD_FLAGS = ["-fopenmp"]

#: CUDA architectures built when ``TORCH_CUDA_ARCH_LIST`` is unset and no GPU is visible
#: (a login node, a CI box): Turing (T4, Colab), Ampere (A100; its code runs on 8.6/8.9)
#: and Hopper, with Hopper PTX that the driver JIT-compiles for newer GPUs.
DEFAULT_CUDA_ARCHS = "7.5;8.0;9.0+PTX"

#: Written next to the compiled library: what it was built with (read by ``info``).
BUILD_INFO = "_build_info.json"


def sources(csrc, cuda):
    """The translation units under ``csrc``: C++ always, ``.cu`` files when ``cuda``."""
    files = [os.path.join(csrc, "ops.cpp")] + sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    if cuda:
        files += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
    return files


def cuda_arch_list(torch):
    """``TORCH_CUDA_ARCH_LIST`` if set, else the visible GPUs' (torch's own choice), else
    :data:`DEFAULT_CUDA_ARCHS`. Returns the list and sets the variable for torch's build
    helpers, which fail (IndexError) when they find neither a GPU nor the variable."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if not archs or archs == "native":
        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            caps = sorted({torch.cuda.get_device_capability(i)
                           for i in range(torch.cuda.device_count())})
            archs = ";".join(f"{major}.{minor}" for major, minor in caps)
        else:
            archs = DEFAULT_CUDA_ARCHS
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    return archs


def toolchain():
    """The compilers a build would use (resolved paths and sizes): part of the JIT cache
    key, so installing or changing a compiler retries a build that failed."""
    parts = []
    for tool in (os.environ.get("CXX", "c++"), "ninja", "nvcc"):
        path = shutil.which(tool)
        if path:
            real = os.path.realpath(path)
            parts.append(f"{tool}={real}:{os.path.getsize(real)}")
        else:
            parts.append(f"{tool}=missing")
    return ";".join(parts)


def source_digest(csrc):
    """A digest of every file under ``csrc`` (content and relative name, not location):
    the checkout's ``csrc/`` and an installed copy's ``_csrc/`` share one JIT build."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(csrc):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, csrc).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()
