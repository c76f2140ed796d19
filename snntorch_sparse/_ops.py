"""Loads the compiled kernels and registers the ops with PyTorch, in one place.

Order of preference, decided once at import:

1. the ahead-of-time extension ``snntorch_sparse._C`` (built by ``setup.py`` when torch
   was importable at build time);
2. a JIT build of the kernel sources, cached under a name derived from their content,
   torch's version and the toolchain (so the checkout and an installed copy share one
   build, and a cached import compiles and prints nothing); "compiling ..." is printed
   only while it really compiles;
3. the plain-PyTorch reference (``reference.py``), announced by one warning. A JIT build
   that failed is not retried until the sources, torch or the toolchain change; its log
   stays in a file whose path the warning and ``info`` give.

``SNNTORCH_SPARSE_BACKEND=reference`` forces 3 (for comparisons), ``=jit`` skips 1.
Whatever the backend, the ops live under ``torch.ops.snntorch_sparse`` with the same
schemas, fake (meta) implementations and autograd formula, so ``torch.compile`` and
``torch.library.opcheck`` see the same thing. A device whose kernels are missing (CUDA
when the build had no CUDA) runs the reference for that device, also with one warning.

Arguments are checked before any kernel runs (shape, dtype, device, sizes; an error names
the argument). Where a fault lies in the values of an index or a count (a row of a
compact input out of range, a band whose values do not match its bits), the CPU kernels
refuse it; the CUDA kernels do not read those values on the host, which would synchronise
the GPU, but bound every index on the device and skip the entries out of range.
"""

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import sys
import warnings

import torch

from . import _build, reference

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


def _cache_root():
    """``TORCH_EXTENSIONS_DIR`` (torch's own setting), else ``~/.cache/torch_extensions``."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(cache, "torch_extensions")
    return root


@contextlib.contextmanager
def _quiet_cpp_extension():
    """Silences torch's "No CUDA runtime is found, using CUDA_HOME" (logged when
    ``torch.utils.cpp_extension`` is imported on a machine without a GPU)."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _jit_plan(src):
    """``(name, build_dir, with_cuda, why_no_cuda)`` of the JIT build of ``src``."""
    with_cuda = torch.cuda.is_available()
    why = None
    if torch.version.cuda is None:
        why = "torch built without CUDA"
    elif not torch.cuda.is_available():
        why = "no GPU visible when the kernels were compiled (JIT)"
    key = "|".join((_build.source_digest(src), torch.__version__, str(torch.version.cuda),
                    sys.version, str(with_cuda), " ".join(_build.CXX_FLAGS + _build.NVCC_FLAGS),
                    _build.toolchain()))
    name = "snntorch_sparse_" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return name, os.path.join(_cache_root(), name), with_cuda, why


def _jit_build():
    """Load (or compile once, then load) the JIT library; returns ``(how, its folder,
    why it has no CUDA kernels or None)``."""
    src = csrc_dir()
    if src is None:
        raise RuntimeError("the kernel sources (csrc/) are not next to the package")
    name, build_dir, with_cuda, why = _jit_plan(src)
    lib = os.path.join(build_dir, name + ".so")
    failed = os.path.join(build_dir, "FAILED.log")
    if os.path.isfile(lib):
        torch.ops.load_library(lib)
        return "compiled (JIT)", build_dir, why
    if os.path.isfile(failed):
        raise RuntimeError(f"the JIT build failed before (log in {failed}); it is retried "
                           "when the sources, torch or the compiler change")
    cxx = os.environ.get("CXX", "c++")
    for tool in (cxx, "ninja"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"no {tool!r} found to compile the kernels")
    os.makedirs(build_dir, exist_ok=True)
    archs = _build.cuda_arch_list(torch) if with_cuda else None
    print(f"snntorch_sparse: compiling the C++{'/CUDA' if with_cuda else ''} kernels once "
          f"(cached in {build_dir}) ...", file=sys.stderr, flush=True)
    try:
        with _quiet_cpp_extension():
            from torch.utils import cpp_extension

            cpp_extension.load(
                name=name, sources=_build.sources(src, with_cuda), extra_include_paths=[src],
                extra_cflags=_build.CXX_FLAGS, extra_ldflags=_build.LD_FLAGS,
                extra_cuda_cflags=_build.NVCC_FLAGS, build_directory=build_dir,
                is_python_module=False, verbose=False,
            )
    except Exception as err:  # no compiler, no ninja, a compile error
        with open(failed, "w") as f:
            f.write(str(err))
        first = next((line.strip() for line in str(err).splitlines()
                      if re.search(r"error:|not found|No such file", line)), type(err).__name__)
        raise RuntimeError(f"the JIT build failed ({first[:160]}; log in {failed})") from None
    with open(os.path.join(build_dir, _build.BUILD_INFO), "w") as f:
        json.dump({"cuda_archs": archs}, f)
    return "compiled (JIT)", build_dir, why


def _aot_build():
    """Import the ahead-of-time extension: ``(how, its folder, None)``, or None when the
    package has none."""
    if importlib.util.find_spec(f"{NAMESPACE}._C") is None:
        return None
    from . import _C  # noqa: F401  (registers the ops)
    return "compiled (AOT)", _PKG, None


def _build_info(lib_dir):
    """What the compiled library was built with (``_build_info.json`` beside it)."""
    try:
        with open(os.path.join(lib_dir, _build.BUILD_INFO)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _load():
    reason = None
    how, lib_dir, cuda_note = None, None, None
    mode = os.environ.get("SNNTORCH_SPARSE_BACKEND", "")
    if mode == "reference":
        reason = "SNNTORCH_SPARSE_BACKEND=reference"
    else:
        aot_note = "no AOT build in the package"
        if mode != "jit":
            try:
                how, lib_dir, cuda_note = _aot_build() or (None, None, None)
            except (ImportError, OSError) as err:  # e.g. built against another torch
                aot_note = f"the AOT build does not load ({str(err).splitlines()[0]})"
        else:
            aot_note = "SNNTORCH_SPARSE_BACKEND=jit"
        if how is None:
            try:
                how, lib_dir, cuda_note = _jit_build()
            except Exception as err:
                reason = (f"{aot_note}; {err}. Fix: install a C++ compiler (g++) and ninja, "
                          "or `pip install --no-build-isolation .` where one is")
    if how is None:
        _define_schemas()
    _fill_missing_devices(how, reason, cuda_note, _build_info(lib_dir) if lib_dir else {})


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
OPS = ("spike", "band_grad", "lif_fwd", "lif_bwd", "lif_bwd_band", "nonzero_csc", "dw_spikes", "dw_trace",
       "dw_trace_dense", "dx_masked", "linear_fwd_events", "linear_lif_events", "linear_lif_bwd",
       "conv_dw_spikes", "conv_dx_masked", "conv_fwd_events", "syn_fwd", "syn_bwd")

#: Ops the library calls on the CPU only: on CUDA a layer's currents come from the GEMM
#: (the event-driven forward pays on the CPU; docs/benchmarks.md), so a CUDA call of
#: these is served by the reference and says nothing about the CUDA backend.
CPU_ONLY = ("linear_lif_events", "linear_lif_bwd")


def _fill_missing_devices(how, reason, cuda_note, build_info):
    def describe(key):
        if how is None:
            return f"reference (plain PyTorch) — {reason}"
        missing = [op for op in OPS if not _has_kernel(op, key)
                   and not (key == "CUDA" and op in CPU_ONLY)]
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
        BACKENDS["cuda"] = ("reference (plain PyTorch) — the build has no CUDA kernels ("
                            + (cuda_note or "no nvcc/CUDA_HOME when it was compiled, or "
                               "SNNTORCH_SPARSE_NO_CUDA=1") + ")")
    else:
        archs = build_info.get("cuda_archs")
        BACKENDS["cuda"] = (cuda + (f" for CUDA architectures {archs}" if archs else "")
                            + ("" if torch.cuda.is_available() else " — no GPU visible now"))
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

    @fake("lif_bwd_band")
    def _(grad_spk, bits, vals, grad_mem, dmem_last, beta, rbits, shape, p, gamma, reset):
        like = grad_spk if grad_spk is not None else grad_mem
        return like.new_empty(like.shape), like.new_empty(like.shape[1:])

    @fake("syn_fwd")
    def _(cur, syn0, mem0, alpha, beta, theta, reset):
        return cur.new_empty(cur.shape), cur.new_empty(cur.shape)

    @fake("syn_bwd")
    def _(eps_mem, grad_syn, alpha, beta, rbits, reset):
        M = eps_mem.shape[1:]
        return eps_mem.new_empty(eps_mem.shape), eps_mem.new_empty(M), eps_mem.new_empty(M)

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

    # dWᵀ [n_in, n_out] as the kernels return it: the transpose of a contiguous dW.
    @fake("dw_trace")
    def _(rowptr, cols, eps_vals, colptr, rows, xvals, beta, T, B, n_out):
        return eps_vals.new_empty(n_out, colptr.shape[0] - 1).t()

    @fake("dw_trace_dense")
    def _(rowptr, cols, eps_vals, x, beta, T, B, n_out):
        return eps_vals.new_empty(n_out, x.shape[1]).t()

    @fake("dx_masked")
    def _(delta, weight_t, bits):
        return delta.new_empty(delta.shape[0], weight_t.shape[0])

    @fake("linear_fwd_events")
    def _(colptr, rows, xvals, weight_t, bias, R):
        return weight_t.new_empty(R, weight_t.shape[1])

    @fake("linear_lif_events")
    def _(colptr, rows, xvals, weight_t, bias, mem0, beta, theta, R, reset, b_th, gamma,
          max_density):
        ctx = torch.library.get_ctx()
        n = R * weight_t.shape[1]
        return (weight_t.new_empty(R, weight_t.shape[1]),
                weight_t.new_empty((n + 31) // 32, dtype=torch.int32),
                weight_t.new_empty(ctx.new_dynamic_size()), mem0.new_empty(mem0.shape),
                weight_t.new_empty(ctx.new_dynamic_size(), dtype=torch.int64),
                weight_t.new_empty(ctx.new_dynamic_size(), dtype=torch.int32),
                weight_t.new_empty(ctx.new_dynamic_size()))

    @fake("linear_lif_bwd")
    def _(grad_spk, bits, vals, dmem_last, beta, colptr, rows, xvals, weight_t, up_bits, shape, p, gamma,
          need_x, need_b):
        n_in, n_out = weight_t.shape
        R = grad_spk.shape[0] * (grad_spk.shape[1] // n_out)
        return (grad_spk.new_empty(n_in, n_out), grad_spk.new_empty(n_out if need_b else 0),
                grad_spk.new_empty((R, n_in) if need_x else (0,)),
                grad_spk.new_empty(grad_spk.shape[1]))

    @fake("conv_dw_spikes")
    def _(delta, colptr, rows, xvals, in_shape, kernel, stride, padding, dilation, groups):
        return delta.new_empty(delta.shape[1], in_shape[0] // groups, *kernel)

    @fake("conv_dx_masked")
    def _(delta, weight, bits, in_shape, stride, padding, dilation, groups):
        return delta.new_empty(delta.shape[0], *in_shape)

    @fake("conv_fwd_events")
    def _(x, weight, bias, stride, padding, dilation, groups):
        size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
                zip(x.shape[2:], weight.shape[2:], stride, padding, dilation)]
        return x.new_empty(x.shape[0], weight.shape[0], *size).contiguous(
            memory_format=torch.channels_last)


# --------------------------------------------------------------------- autograd
_HALF = (torch.float16, torch.bfloat16)


def compute_dtype(t):
    """The dtype the kernels compute ``t`` in: its own, except float16/bfloat16 on the
    CPU, which run in float32 (the CPU kernels are float32/float64; the casts are done
    by the callers, under autograd, so results and gradients return in ``t``'s dtype)."""
    return torch.float32 if t.device.type == "cpu" and t.dtype in _HALF else t.dtype


_DOUBLE_BACKWARD = ("double backward is not supported by snntorch_sparse.{}: its backward is "
                    "first order only (a gradient taken with create_graph=True cannot be "
                    "differentiated again); for higher-order gradients use stock snnTorch "
                    "neurons, whose dense surrogates are twice differentiable")


def first_order_only(name):
    """Decorate a ``backward`` (of an autograd Function or a registered op): it runs
    without recording a graph, and when a graph was asked for (``create_graph=True``)
    its results are routed through a node that raises a clear error naming ``name`` if
    they are differentiated again — never a silently missing second-order term.

    Unlike ``torch.autograd.function.once_differentiable``, the guard applies even when
    the incoming gradients do not require grad: the second-order terms through saved
    tensors (the weight, say) would be missing just the same.
    """
    def wrap(backward):
        @functools.wraps(backward)
        def run(ctx, *grads):
            with torch.no_grad():
                out = backward(ctx, *grads)
            if not torch.is_grad_enabled():
                return out
            outs = out if isinstance(out, tuple) else (out,)
            err = torch._C._functions.DelayedError(_DOUBLE_BACKWARD.format(name).encode(),
                                                   len(outs))
            guarded = err(*[None if o is None else o.detach().requires_grad_()
                            for o in outs])
            guarded = guarded if isinstance(guarded, tuple) else (guarded,)
            return guarded if isinstance(out, tuple) else guarded[0]
        return run
    return wrap


def _spike_setup_context(ctx, inputs, output):
    _, shape, p, _, gamma = inputs
    _, bits, vals = output
    ctx.save_for_backward(bits, vals)
    ctx.surrogate = (shape, p, gamma)


@first_order_only("surrogate spike")
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

#: Whether the compiled library provides the memory hint (it has no reference: a build
#: without it, or the plain-PyTorch backend, simply allocates as torch does).
_HUGE_PAGES = _has_kernel("advise_huge_pages", "CompositeExplicitAutograd")


def _has_op(name):
    return hasattr(torch.ops, NAMESPACE) and hasattr(ops, name)


def cached_output_bytes():
    """Bytes of CPU memory the compiled kernels hold in freed output blocks, kept for
    reuse (``csrc/cpu/alloc.h``: a training loop asks for the same sizes every step, and
    fresh memory costs page faults); 0 without the compiled library."""
    return ops.cached_output_bytes() if _has_op("cached_output_bytes") else 0


def empty_cache():
    """Return the CPU output blocks that the compiled kernels keep for reuse (see
    :func:`cached_output_bytes`) to the system, as ``torch.cuda.empty_cache`` does for
    CUDA. Blocks still in use are returned when they are freed. Needed only to lower the
    resident memory between phases of a program: the cache already holds at most an
    eighth of the machine's memory.

    Example::

        >>> import snntorch_sparse as snn
        >>> snn.empty_cache()
    """
    if _has_op("release_cached_outputs"):
        ops.release_cached_outputs()


def empty_output(shape, dtype, device, memory_format=torch.contiguous_format):
    """``torch.empty``, for a large output that a library op writes once (``out=``): on
    the CPU with transparent huge pages advised, as the compiled kernels do for their own
    outputs (csrc/cpu/alloc.h: writing a fresh buffer costs mostly page faults, ~5× fewer
    with huge pages)."""
    t = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    if _HUGE_PAGES and t.device.type == "cpu" and not torch.compiler.is_compiling():
        ops.advise_huge_pages(t)
    return t
