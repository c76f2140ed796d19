"""Build: compiles csrc/ ahead of time when torch is importable at build time
(``pip install --no-build-isolation .``); otherwise the package ships the sources and
``snntorch_sparse._ops`` compiles them on first use (JIT).

``SNNTORCH_SPARSE_NO_CUDA=1`` builds the C++ (CPU) kernels only, even with a CUDA torch
and nvcc. CUDA architectures: ``TORCH_CUDA_ARCH_LIST``, else the visible GPUs', else
``snntorch_sparse/_build.py``'s defaults (no GPU is needed to build).
"""

import importlib.util
import json
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("_build", os.path.join(HERE, "snntorch_sparse", "_build.py"))
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)


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
    use_cuda = (
        os.environ.get("SNNTORCH_SPARSE_NO_CUDA", "0") != "1"
        and torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
    )
    info = {"torch": torch.__version__, "cuda": torch.version.cuda if use_cuda else None,
            "cuda_archs": build.cuda_arch_list(torch) if use_cuda else None}
    args = {"cxx": list(build.CXX_FLAGS)}
    ext_cls = cpp_extension.CppExtension
    if use_cuda:
        args["nvcc"] = list(build.NVCC_FLAGS)
        ext_cls = cpp_extension.CUDAExtension

    class BuildExt(cpp_extension.BuildExtension):
        """Also records what the library was built with, next to it (for ``info``)."""

        def build_extension(self, ext):
            super().build_extension(ext)
            out = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), build.BUILD_INFO)
            with open(out, "w") as f:
                json.dump(info, f)

    ext = ext_cls(
        "snntorch_sparse._C",
        [os.path.relpath(s, HERE) for s in build.sources(os.path.join(HERE, "csrc"), use_cuda)],
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args=args,
        extra_link_args=list(build.LD_FLAGS),
    )
    return [ext], {"build_ext": BuildExt}


ext_modules, cmdclass = extensions()
cmdclass["build_py"] = BuildPyWithSources
setup(ext_modules=ext_modules, cmdclass=cmdclass)
