"""Loads the compiled kernels and registers the ops with PyTorch, in one place.

Order of preference, decided once at import:

1. the ahead-of-time extension ``snntorch_sparse._C`` (built by ``setup.py`` when torch
   was importable at build time);
2. a JIT build of ``csrc/`` with ``torch.utils.cpp_extension.load`` (ninja, cached in
   ``TORCH_EXTENSIONS_DIR``), announced by one line while it compiles;
3. the plain-PyTorch reference (``reference.py``), announced by one warning.

``SNNTORCH_SPARSE_BACKEND=reference`` forces 3 (for comparisons). Whatever the backend,
the ops live under ``torch.ops.snntorch_sparse`` with the same schemas, fake (meta)
implementations and autograd formula, so ``torch.compile(fullgraph=True)`` and
``torch.library.opcheck`` see the same thing. A device whose kernels are missing (CUDA
when the build had no CUDA) runs the reference for that device, also with one warning.
"""

import glob
import math
import os
import re
import sys
import warnings

import torch

from . import reference

NAMESPACE = "snntorch_sparse"
_PKG = os.path.dirname(os.path.abspath(__file__))

#: how each device is served, and why; filled in by :func:`_load`.
BACKENDS = {}


def csrc_dir():
    """The kernel sources: shipped inside the package, or the repository's ``csrc/``."""
    for d in (os.path.join(_PKG, "_csrc"), os.path.join(os.path.dirname(_PKG), "csrc")):
        if os.path.isfile(os.path.join(d, "ops.cpp")):
            return d
    return None


def _has_kernel(op, key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op}", key)


def _jit_build():
    from torch.utils import cpp_extension

    src = csrc_dir()
    if src is None:
        raise RuntimeError("kernel sources (csrc/) not found next to the package")
    sources = [os.path.join(src, "ops.cpp")] + sorted(glob.glob(os.path.join(src, "cpu", "*.cpp")))
    cuda_note = None
    if torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None:
        sources += sorted(glob.glob(os.path.join(src, "cuda", "*.cu")))
    elif torch.version.cuda is None:
        cuda_note = "torch built without CUDA"
    else:
        cuda_note = "no GPU or no CUDA toolkit (nvcc) found at JIT time"
    print("snntorch_sparse: compiling C++ kernels (first use only; cached) ...",
          file=sys.stderr, flush=True)
    cpp_extension.load(
        name="snntorch_sparse_jit",
        sources=sources,
        extra_include_paths=[src],
        extra_cflags=["-O3", "-fopenmp", "-fno-trapping-math", "-ffp-contract=off"],
        extra_ldflags=["-fopenmp"],
        extra_cuda_cflags=["-O3", "--fmad=false"],  # bit-identical to the CPU in float64
        is_python_module=False,
        verbose=False,
    )
    return cuda_note


def _load():
    reason = None
    how = None
    if os.environ.get("SNNTORCH_SPARSE_BACKEND", "") == "reference":
        reason = "SNNTORCH_SPARSE_BACKEND=reference"
    else:
        try:
            from . import _C  # noqa: F401  (registers the ops)

            how = "compiled (AOT)"
        except ImportError as aot_err:
            try:
                _jit_build()
                how = "compiled (JIT)"
            except Exception as jit_err:  # compiler missing, sources missing, build error
                reason = f"no AOT build ({aot_err}); JIT build failed: {jit_err}"
    if how is None:
        _define_schemas()
    _fill_missing_devices(how, reason)


def _define_schemas():
    """Declare the schemas from csrc/ops.cpp (the single source) when nothing compiled."""
    src = csrc_dir()
    text = open(os.path.join(src, "ops.cpp")).read() if src else ""
    schemas = re.findall(r'm\.def\("([^"]+)"\)', text)
    if not schemas:
        raise RuntimeError("snntorch_sparse: cannot find the op schemas (csrc/ops.cpp)")
    lib = torch.library.Library(NAMESPACE, "DEF")
    for s in schemas:
        lib.define(s)
    _LIBS.append(lib)


_LIBS = []  # keeps Python-side registrations alive
OPS = ("spike", "band_grad", "lif_fwd", "lif_bwd", "nonzero_csc", "dw_spikes", "dw_trace",
       "dx_masked")


def _fill_missing_devices(how, reason):
    def describe(key):
        if how is None:
            return f"reference (plain PyTorch) — {reason}"
        missing = [op for op in OPS if not _has_kernel(op, key)]
        if not missing:
            return how
        if len(missing) == len(OPS):
            return None
        return f"{how}, but the reference serves {', '.join(missing)} (no kernel built)"

    BACKENDS["cpu"] = describe("CPU") or f"reference (plain PyTorch) — {how} build has no CPU kernels"
    cuda = describe("CUDA")
    if torch.version.cuda is None:
        BACKENDS["cuda"] = "not available — torch built without CUDA"
    elif cuda is None:
        BACKENDS["cuda"] = ("reference (plain PyTorch) — the build has no CUDA kernels "
                            "(no nvcc/CUDA_HOME or no GPU when it was compiled)")
    else:
        BACKENDS["cuda"] = cuda + ("" if torch.cuda.is_available() else " — no GPU visible now")
    lib = torch.library.Library(NAMESPACE, "IMPL")
    for op in OPS:
        for key in ("CPU", "CUDA"):
            if not _has_kernel(op, key):
                lib.impl(op, getattr(reference, op), key)
    _LIBS.append(lib)
    slow = [f"{dev.upper()}: {BACKENDS[dev]}" for dev in ("cpu", "cuda")
            if "reference" in BACKENDS[dev] and (dev == "cpu" or torch.cuda.is_available())]
    if slow and os.environ.get("SNNTORCH_SPARSE_BACKEND", "") != "reference":
        warnings.warn("snntorch_sparse: the slow plain-PyTorch reference serves " + "; ".join(slow)
                      + ". `python -m snntorch_sparse info` explains.", RuntimeWarning, stacklevel=3)


# ------------------------------------------------------------------ fake tensors
def _register_fakes():
    def fake(name):
        return torch.library.register_fake(f"{NAMESPACE}::{name}")

    @fake("spike")
    def _(u, shape, p, b_th, gamma):
        n = u.numel()
        spk = u.new_empty(u.shape)
        if math.isinf(b_th):
            return spk, u.new_empty(0, dtype=torch.int32), u.new_empty(n)
        nnz = torch.library.get_ctx().new_dynamic_size()
        return spk, u.new_empty((n + 31) // 32, dtype=torch.int32), u.new_empty(nnz)

    @fake("band_grad")
    def _(grad, bits, vals, shape, p, gamma, compact):
        return grad.new_empty(vals.shape[0]) if compact else grad.new_empty(grad.shape)

    @fake("lif_fwd")
    def _(cur, mem0, beta, theta, reset):
        return cur.new_empty(cur.shape)

    @fake("lif_bwd")
    def _(eps, beta, rbits, reset):
        return eps.new_empty(eps.shape), eps.new_empty(eps.shape[1:])

    @fake("nonzero_csc")
    def _(x, max_density):
        # Every size depends on the data: colptr is [n_in + 1], or [0] when x is too dense.
        ctx = torch.library.get_ctx()
        return (x.new_empty(ctx.new_dynamic_size(), dtype=torch.int64),
                x.new_empty(ctx.new_dynamic_size(), dtype=torch.int32),
                x.new_empty(ctx.new_dynamic_size()))

    @fake("dw_spikes")
    def _(delta, colptr, rows, xvals, n_in):
        return delta.new_empty(n_in, delta.shape[1])

    @fake("dw_trace")
    def _(rowptr, cols, eps_vals, colptr, rows, xvals, beta, T, B, n_out):
        return eps_vals.new_empty(colptr.shape[0] - 1, n_out)

    @fake("dx_masked")
    def _(delta, weight_t, bits):
        return delta.new_empty(delta.shape[0], weight_t.shape[0])


# --------------------------------------------------------------------- autograd
def _spike_setup_context(ctx, inputs, output):
    _, shape, p, _, gamma = inputs
    _, bits, vals = output
    ctx.save_for_backward(bits, vals)
    ctx.surrogate = (shape, p, gamma)


def _spike_backward(ctx, grad_spk, _grad_bits, _grad_vals):
    bits, vals = ctx.saved_tensors
    shape, p, gamma = ctx.surrogate
    grad_u = torch.ops.snntorch_sparse.band_grad(grad_spk, bits, vals, shape, p, gamma, False)
    return grad_u, None, None, None, None


_load()
_register_fakes()
torch.library.register_autograd(f"{NAMESPACE}::spike", _spike_backward,
                                setup_context=_spike_setup_context)

ops = torch.ops.snntorch_sparse
