"""Build: compiles csrc/ ahead of time when torch is importable at build time
(``pip install --no-build-isolation .``); otherwise the package ships the sources and
``snntorch_sparse._ops`` compiles them on first use (JIT)."""

import glob
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithSources(build_py):
    """Ship csrc/ inside the package as ``_csrc`` so the JIT path finds it."""

    def run(self):
        super().run()
        dst = os.path.join(self.build_lib, "snntorch_sparse", "_csrc")
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(os.path.join(HERE, "csrc"), dst)


def extensions():
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        return [], {}
    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    use_cuda = (
        os.environ.get("SNNTORCH_SPARSE_NO_CUDA", "0") != "1"
        and torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and bool(cuda_sources)
    )
    # Vectorisable selects (torch is built the same way) and no FMA contraction, so
    # float64 results stay bit-identical to the reference on every compiler.
    args = {"cxx": ["-O3", "-fopenmp", "-fno-trapping-math", "-ffp-contract=off"]}
    ext_cls = cpp_extension.CppExtension
    if use_cuda:
        sources += cuda_sources
        # No FMA contraction: keeps float64 results bit-identical to the CPU kernels.
        args["nvcc"] = ["-O3", "--fmad=false"]
        ext_cls = cpp_extension.CUDAExtension
    ext = ext_cls(
        "snntorch_sparse._C",
        sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args=args,
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = extensions()
cmdclass["build_py"] = BuildPyWithSources
setup(ext_modules=ext_modules, cmdclass=cmdclass)
