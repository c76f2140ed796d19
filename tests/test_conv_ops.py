"""The convolution ops ``conv_dw_spikes`` / ``conv_dx_masked`` against ``reference.py`` and
against ``torch.nn.grad.conv2d_weight`` / ``conv2d_input`` on the dense input.

The kernels add their terms in another order than the reference (a GEMM-based convolution),
so each output is held to ``|out − exp| ≤ tol·Σ|terms|`` with tol = 1e-12 in float64 and 1e-5
in float32 (Σ|terms| is the same op on |inputs|); an output with no terms (outside the mask,
or a weight tap no input reaches) must be exactly 0. The inputs are fresh random ones per
test case (seeded from the test id). With a GPU the same tests run the CUDA kernels
(``device`` fixture, tests/conftest.py), plus float16/bfloat16 against a float64 reference.
"""

import itertools
import math

import pytest
import torch
from conftest import needs_cuda

from snntorch_sparse import _ops
from snntorch_sparse import reference as ref

ops = _ops.ops

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}

# (C_in, H, W, C_out, kernel, stride, padding, dilation, groups)
GEOMETRIES = {
    "3x3": (3, 9, 8, 5, (3, 3), (1, 1), (0, 0), (1, 1), 1),
    "stride2_pad1": (4, 11, 10, 6, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    "pad2_2x3": (3, 7, 9, 4, (2, 3), (1, 1), (2, 2), (1, 1), 1),
    "dilation2": (2, 12, 11, 3, (3, 3), (1, 1), (1, 2), (2, 2), 1),
    "groups2": (4, 8, 9, 6, (3, 3), (1, 2), (1, 0), (1, 1), 2),
    "depthwise_x2": (6, 9, 9, 12, (3, 3), (2, 1), (1, 1), (1, 1), 6),
    "depthwise": (5, 7, 6, 5, (3, 1), (1, 1), (1, 0), (1, 1), 5),
    "conv1d": (5, 1, 20, 7, (1, 5), (1, 2), (0, 2), (1, 2), 1),
    "1x1": (2, 6, 6, 3, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    "5x5_s3_whole": (3, 5, 5, 4, (5, 5), (3, 3), (2, 2), (1, 1), 1),
    "mixed_all": (4, 10, 9, 6, (2, 3), (2, 3), (2, 1), (2, 1), 2),
}
X_DENSITIES = [0.0, 0.01, 0.05, 0.3]
MASK_DENSITIES = [0.0, 0.05, 0.3, 1.0]


# ------------------------------------------------------------------------- helpers
def out_shape(C_in, H, W, C_out, kernel, stride, padding, dilation, groups):
    return (C_out,) + tuple(ref.conv_out_size(n, k, s, p, d) for n, k, s, p, d in
                            zip((H, W), kernel, stride, padding, dilation))


def randn(shape, gen, dtype):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def spikes(shape, density, gen, dtype, valued):
    """A random input with about ``density`` nonzeros: 1 (binary) or in [0.5, 1.5) (graded)."""
    keep = torch.rand(shape, generator=gen) < density
    vals = torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5 if valued else 1.0
    return (keep * vals).to(dtype)


def mask_bits(shape, density, gen):
    m = torch.rand(shape, generator=gen) < density
    return m, ref.pack_bits(m)


def call(op, device, *args):
    """``ops.<op>`` on ``device`` (result back on the CPU); checks that the inputs are left
    untouched, and first hands the allocator a NaN block of the output's size, so that an
    element the kernel forgets to write shows up instead of a lucky zero."""
    dev = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    before = [a.clone() for a in dev if isinstance(a, torch.Tensor)]
    expected = getattr(ref, op)(*args)
    poison = torch.full_like(expected, math.nan, device=device)
    del poison
    out = getattr(ops, op)(*dev)
    for a, b in zip([a for a in dev if isinstance(a, torch.Tensor)], before):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True,
                                   msg=f"{op} modified an input")
    return out.cpu()


def assert_sum(out, exp, magnitude, tol):
    """``|out − exp| ≤ tol·Σ|terms|`` elementwise; entries without terms exactly 0."""
    assert out.dtype == exp.dtype and out.shape == exp.shape, (out.dtype, out.shape, exp.shape)
    err = (out - exp).abs()
    bad = ~(err <= tol * magnitude)
    assert not bad.any(), (f"{int(bad.sum())} entries off; worst error {err.max().item():.3g} "
                           f"at {bad.nonzero()[0].tolist()}")


def dw_case(geometry, R, density, valued, dtype, gen):
    """``(args of conv_dw_spikes, dense input x)``, the input in nonzero_csc's form."""
    C_in, H, W, _, kernel, stride, padding, dilation, groups = geometry
    x = spikes((R, C_in, H, W), density, gen, dtype, valued)
    delta = randn((R, *out_shape(*geometry)), gen, dtype)
    colptr, rows, xvals = ops.nonzero_csc(x.reshape(R, -1), 1.0)
    return (delta, colptr, rows, xvals, [C_in, H, W], list(kernel), list(stride), list(padding),
            list(dilation), groups), x


def dx_case(geometry, R, density, dtype, gen):
    """``(args of conv_dx_masked, the boolean mask [R, C_in, H, W])``."""
    C_in, H, W, C_out, kernel, stride, padding, dilation, groups = geometry
    delta = randn((R, *out_shape(*geometry)), gen, dtype)
    weight = randn((C_out, C_in // groups, *kernel), gen, dtype)
    m, bits = mask_bits((R, C_in, H, W), density, gen)
    return (delta, weight, bits, [C_in, H, W], list(stride), list(padding), list(dilation),
            groups), m


def check_dw(device, args, x, tol):
    delta, colptr, rows, xvals, in_shape, kernel, stride, padding, dilation, groups = args
    out = call("conv_dw_spikes", device, *args)
    magnitude = ref.conv_dw_spikes(delta.abs(), colptr, rows, xvals.abs(), *args[4:])
    assert_sum(out, ref.conv_dw_spikes(*args), magnitude, tol)
    dense = torch.nn.grad.conv2d_weight(x, (delta.shape[1], in_shape[0] // groups, *kernel), delta,
                                        stride, padding, dilation, groups)
    assert_sum(out, dense, magnitude, tol)


def check_dx(device, args, m, tol):
    delta, weight, _, in_shape, stride, padding, dilation, groups = args
    out = call("conv_dx_masked", device, *args)
    assert not out[~m].any(), "nonzero outside the mask"
    magnitude = ref.conv_dx_masked(delta.abs(), weight.abs(), *args[2:])
    assert_sum(out, ref.conv_dx_masked(*args), magnitude, tol)
    dense = torch.nn.grad.conv2d_input((delta.shape[0], *in_shape), weight, delta, stride, padding,
                                       dilation, groups)
    assert_sum(out, torch.where(m, dense, torch.zeros_like(dense)), magnitude, tol)


# ----------------------------------------------------------------------- the spec
def test_reference_is_the_docstring_equation(gen):
    """The reference's equations, summed term by term, on a small case with every geometry
    parameter away from its default (the kernels are tested against the reference)."""
    C_in, H, W, C_out, kernel, stride, padding, dilation, groups = GEOMETRIES["mixed_all"]
    geometry = GEOMETRIES["mixed_all"]
    R = 2
    (delta, colptr, rows, xvals, *rest), x = dw_case(geometry, R, 0.3, True, torch.float64, gen)
    weight = randn((C_out, C_in // groups, *kernel), gen, torch.float64)
    m, bits = mask_bits((R, C_in, H, W), 0.5, gen)
    cg_in, cg_out = C_in // groups, C_out // groups
    _, Ho, Wo = out_shape(*geometry)
    dw = torch.zeros(C_out, cg_in, *kernel, dtype=torch.float64)
    dx = torch.zeros(R, C_in, H, W, dtype=torch.float64)
    for r, c, y, xx in itertools.product(range(R), range(C_in), range(H), range(W)):
        grp = c // cg_in
        for o, ky, kx in itertools.product(range(grp * cg_out, (grp + 1) * cg_out),
                                           range(kernel[0]), range(kernel[1])):
            ty, tx = y + padding[0] - ky * dilation[0], xx + padding[1] - kx * dilation[1]
            if ty % stride[0] or tx % stride[1]:
                continue
            oy, ox = ty // stride[0], tx // stride[1]
            if not (0 <= oy < Ho and 0 <= ox < Wo):
                continue
            dw[o, c % cg_in, ky, kx] += x[r, c, y, xx] * delta[r, o, oy, ox]
            if m[r, c, y, xx]:
                dx[r, c, y, xx] += delta[r, o, oy, ox] * weight[o, c % cg_in, ky, kx]
    torch.testing.assert_close(ref.conv_dw_spikes(delta, colptr, rows, xvals, *rest), dw)
    torch.testing.assert_close(
        ref.conv_dx_masked(delta, weight, bits, [C_in, H, W], list(stride), list(padding),
                           list(dilation), groups), dx)


# ---------------------------------------------------------------- conv_dw_spikes
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("R", [1, 6])
@pytest.mark.parametrize("density", X_DENSITIES)
@pytest.mark.parametrize("valued", [False, True], ids=["binary", "graded"])
def test_conv_dw_spikes(device, gen, dtype, geometry, R, density, valued):
    args, x = dw_case(GEOMETRIES[geometry], R, density, valued, dtype, gen)
    assert (args[3].numel() == 0) == bool((x[x != 0] == 1).all())  # nonzero_csc's binary form
    check_dw(device, args, x, TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_dw_spikes_larger(device, gen, dtype):
    """Many channels and samples: several threads (CPU) or blocks (CUDA) share the work."""
    geometry = (16, 16, 16, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    args, x = dw_case(geometry, 8, 0.05, True, dtype, gen)
    check_dw(device, args, x, TOL[dtype])


@pytest.mark.parametrize("threads", [1, 3, 5])
@pytest.mark.parametrize("R", [1, 2, 7])
def test_conv_dw_spikes_thread_splits(gen, threads, R):
    """The CPU op cuts the samples (and, with fewer samples than threads, the channels) into
    tasks with their own accumulators: every cut gives the same sums."""
    args, _ = dw_case(GEOMETRIES["groups2"], R, 0.3, True, torch.float64, gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = ops.conv_dw_spikes(*args)
    finally:
        torch.set_num_threads(before)
    delta, colptr, rows, xvals = args[:4]
    magnitude = ref.conv_dw_spikes(delta.abs(), colptr, rows, xvals.abs(), *args[4:])
    assert_sum(out, ref.conv_dw_spikes(*args), magnitude, TOL[torch.float64])


def test_conv_dw_spikes_repeated_entries_add_up(device, gen):
    """A nonzero listed twice counts twice (as nonzero_csc never does, but the format allows)."""
    delta = randn((2, 3, 4, 4), gen, torch.float64)
    colptr = torch.zeros(2 * 6 * 6 + 1, dtype=torch.int64)
    colptr[8:] = 2  # column 7 (channel 0, y 1, x 1) holds row 1 twice
    rows = torch.tensor([1, 1], dtype=torch.int32)
    xvals = torch.tensor([0.5, 2.0], dtype=torch.float64)
    args = (delta, colptr, rows, xvals, [2, 6, 6], [3, 3], [1, 1], [0, 0], [1, 1], 1)
    x = torch.zeros(2, 2, 6, 6, dtype=torch.float64)
    x[1, 0, 1, 1] = 2.5
    check_dw(device, args, x, TOL[torch.float64])


def test_conv_dw_spikes_no_samples(device):
    """R = 0: no nonzeros, a zero weight gradient."""
    delta = torch.zeros(0, 4, 3, 3, dtype=torch.float64)
    colptr, rows = torch.zeros(2 * 25 + 1, dtype=torch.int64), torch.zeros(0, dtype=torch.int32)
    out = ops.conv_dw_spikes(delta.to(device), colptr.to(device), rows.to(device),
                             delta.new_empty(0).to(device), [2, 5, 5], [3, 3], [1, 1], [0, 0],
                             [1, 1], 2)
    assert out.shape == (4, 1, 3, 3) and out.dtype == torch.float64 and not out.any()


# ---------------------------------------------------------------- conv_dx_masked
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("R", [1, 5])
@pytest.mark.parametrize("density", MASK_DENSITIES)
def test_conv_dx_masked(device, gen, dtype, geometry, R, density):
    args, m = dx_case(GEOMETRIES[geometry], R, density, dtype, gen)
    check_dx(device, args, m, TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_dx_masked_larger(device, gen, dtype):
    args, m = dx_case((16, 16, 16, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1), 8, 0.05, dtype, gen)
    check_dx(device, args, m, TOL[dtype])


def test_conv_dx_masked_no_samples(device):
    delta = torch.zeros(0, 4, 3, 3, dtype=torch.float64, device=device)
    weight = torch.zeros(4, 1, 3, 3, dtype=torch.float64, device=device)
    bits = torch.zeros(0, dtype=torch.int32, device=device)
    out = ops.conv_dx_masked(delta, weight, bits, [2, 5, 5], [1, 1], [0, 0], [1, 1], 2)
    assert out.shape == (0, 2, 5, 5) and out.dtype == torch.float64


def test_conv_ops_non_contiguous_inputs(device, gen):
    geometry = GEOMETRIES["groups2"]
    (delta, weight, bits, *rest), m = dx_case(geometry, 3, 0.3, torch.float64, gen)
    delta_nc = delta.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    weight_nc = weight.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0)
    assert not delta_nc.is_contiguous() and not weight_nc.is_contiguous()
    check_dx(device, (delta_nc, weight_nc, bits, *rest), m, TOL[torch.float64])
    (delta, *csc_rest), x = dw_case(geometry, 3, 0.3, True, torch.float64, gen)
    delta_nc = delta.transpose(2, 3).contiguous().transpose(2, 3)
    check_dw(device, (delta_nc, *csc_rest), x, TOL[torch.float64])
    # channels-last, the layout the CPU kernels read (and the forward's currents have)
    delta_cl = delta.contiguous(memory_format=torch.channels_last)
    assert not delta_cl.is_contiguous()
    check_dw(device, (delta_cl, *csc_rest), x, TOL[torch.float64])
    (delta, weight, bits, *rest), m = dx_case(geometry, 3, 0.3, torch.float64, gen)
    check_dx(device, (delta.contiguous(memory_format=torch.channels_last), weight, bits, *rest),
             m, TOL[torch.float64])


# ------------------------------------------------------------------------ opcheck
def opcheck_cases(gen):
    (dw_args, _), (dx_args, _) = (dw_case(GEOMETRIES["groups2"], 4, 0.2, True, torch.float64, gen),
                                  dx_case(GEOMETRIES["groups2"], 4, 0.2, torch.float64, gen))
    return {"conv_dw_spikes": dw_args, "conv_dx_masked": dx_args}


@pytest.mark.parametrize("op", ["conv_dw_spikes", "conv_dx_masked"])
def test_opcheck(device, gen, op):
    args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in opcheck_cases(gen)[op])
    torch.library.opcheck(getattr(ops, op), args)


# ------------------------------------------------------------------------- errors
def bad_call_cases():
    """``(op, args, the argument the message must name, CPU only)``: each a valid call with one
    defect. The CPU checks the index data too; the CUDA kernels skip out-of-range indices
    instead (a host check would need a device sync) and do not need sorted rows."""
    f64, i32, i64 = torch.float64, torch.int32, torch.int64
    delta = torch.zeros(2, 4, 3, 3, dtype=f64)  # C_in 2, H = W = 5, kernel 3x3, groups 2
    colptr, rows = torch.zeros(51, dtype=i64), torch.zeros(0, dtype=i32)
    colptr_one = colptr.clone()
    colptr_one[1:] = 1
    colptr_two = colptr.clone()
    colptr_two[1:] = 2
    e = torch.empty(0, dtype=f64)
    geo = ([2, 5, 5], [3, 3], [1, 1], [0, 0], [1, 1], 2)

    def dw(*args, **over):
        a = dict(zip(("delta", "colptr", "rows", "xvals", "in_shape", "kernel", "stride",
                      "padding", "dilation", "groups"), (delta, colptr, rows, e) + geo))
        a.update(over)
        return ("conv_dw_spikes", tuple(a.values()))

    weight, bits = torch.zeros(4, 1, 3, 3, dtype=f64), torch.zeros(4, dtype=i32)  # 2*50 bits

    def dx(**over):
        a = dict(zip(("delta", "weight", "bits", "in_shape", "stride", "padding", "dilation",
                      "groups"), (delta, weight, bits, geo[0]) + geo[2:]))
        a.update(over)
        return ("conv_dx_masked", tuple(a.values()))

    return [
        (*dw(delta=delta[0]), "delta"),
        (*dw(delta=delta.int()), "delta"),
        (*dw(delta=torch.zeros(2, 4, 4, 3, dtype=f64)), "delta"),  # Ho must be 3
        (*dw(colptr=colptr[:-1]), "colptr"),
        (*dw(colptr=colptr.int()), "colptr"),
        (*dw(colptr=colptr_one, rows=torch.full((1,), 2, dtype=i32)), "rows", True),  # R = 2
        (*dw(colptr=colptr_two, rows=torch.tensor([1, 0], dtype=i32)), "rows", True),  # unsorted
        (*dw(colptr=colptr_one, rows=torch.zeros(1, dtype=i64)), "rows"),
        (*dw(colptr=colptr_one, rows=torch.zeros(1, dtype=i32), xvals=torch.zeros(2, dtype=f64)),
         "xvals"),
        (*dw(colptr=colptr_one, rows=torch.zeros(1, dtype=i32),
             xvals=torch.zeros(1, dtype=torch.float32)), "xvals"),
        (*dw(in_shape=[2, 5]), "in_shape"),
        (*dw(in_shape=[0, 5, 5]), "in_shape"),
        (*dw(kernel=[3]), "kernel"),
        (*dw(kernel=[0, 3]), "kernel"),
        (*dw(stride=[1, 0]), "stride"),
        (*dw(padding=[-1, 0]), "padding"),
        (*dw(dilation=[0, 1]), "dilation"),
        (*dw(groups=0), "groups"),
        (*dw(groups=3), "groups"),  # divides neither C_in = 2 nor C_out = 4
        (*dw(delta=torch.zeros(2, 4, 1, 1, dtype=f64), kernel=[7, 7]), "padding"),  # too large
        (*dx(delta=delta[0]), "delta"),
        (*dx(delta=torch.zeros(2, 4, 3, 2, dtype=f64)), "delta"),
        (*dx(weight=weight.float()), "weight"),
        (*dx(weight=weight[0]), "weight"),
        (*dx(weight=torch.zeros(4, 2, 3, 3, dtype=f64)), "weight"),  # C_in/groups = 1
        (*dx(weight=torch.zeros(2, 1, 3, 3, dtype=f64)), "weight"),  # C_out = 4
        (*dx(bits=bits[:-1]), "bits"),
        (*dx(bits=bits.long()), "bits"),
        (*dx(stride=[2]), "stride"),
        (*dx(groups=4), "groups"),  # divides C_out = 4, not C_in = 2
    ]


@pytest.mark.parametrize("case", range(len(bad_call_cases())))
def test_bad_arguments_name_the_argument(device, case):
    op, args, name, *cpu_only = bad_call_cases()[case]
    if device == "cuda" and cpu_only:
        pytest.skip("the CUDA ops do not check index data on the host")
    args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    with pytest.raises(RuntimeError, match=f"`{name}`"):
        getattr(ops, op)(*args)


def test_overflowing_sizes_are_refused(device):
    """C_in·H·W beyond int64 is an error before anything is allocated or indexed (the
    zero-sample delta takes no memory however large Ho, Wo)."""
    delta = torch.empty(0, 1, 2**31, 2**31, dtype=torch.float64, device=device)
    colptr, rows = torch.zeros(1, dtype=torch.int64), torch.zeros(0, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="C_in\\*H.* overflows int64"):
        ops.conv_dw_spikes(delta, colptr.to(device), rows.to(device), delta.new_empty(0),
                           [2**40, 2**31, 2**31], [1, 1], [1, 1], [0, 0], [1, 1], 1)
    weight = torch.zeros(1, 1, 1, 1, dtype=torch.float64, device=device)
    with pytest.raises(RuntimeError, match="C_in\\*H.* overflows int64"):
        ops.conv_dx_masked(delta, weight, rows.to(device),
                           [2**40, 2**31, 2**31], [1, 1], [0, 0], [1, 1], 1)


# ------------------------------------------------------ CUDA: float16 and bfloat16
@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("geometry", ["stride2_pad1", "groups2", "depthwise_x2", "mixed_all"])
def test_cuda_half_precision(gen, dtype, geometry):
    """16-bit inputs, float accumulation: the float64 reference on the same (rounded) values,
    within rounding the result to the dtype plus float32 sums of Σ|terms|."""
    unit = 2.0**-11 if dtype == torch.float16 else 2.0**-8
    # the CSC made in float64 (nonzero_csc takes float32/float64), its values then rounded
    (delta, colptr, rows, xvals, *rest), _ = dw_case(GEOMETRIES[geometry], 6, 0.3, True,
                                                     torch.float64, gen)
    delta, xvals = delta.to(dtype), xvals.to(dtype)
    out = ops.conv_dw_spikes(delta.cuda(), colptr.cuda(), rows.cuda(), xvals.cuda(), *rest)
    args64 = (delta.double(), colptr, rows, xvals.double(), *rest)
    magnitude = ref.conv_dw_spikes(delta.double().abs(), colptr, rows, xvals.double().abs(), *rest)
    assert out.dtype == dtype
    assert_sum(out.double().cpu(), ref.conv_dw_spikes(*args64), magnitude, unit + 1e-5)
    (delta, weight, bits, *rest), _ = dx_case(GEOMETRIES[geometry], 6, 0.3, dtype, gen)
    out = ops.conv_dx_masked(delta.cuda(), weight.cuda(), bits.cuda(), *rest)
    magnitude = ref.conv_dx_masked(delta.double().abs(), weight.double().abs(), bits, *rest)
    assert out.dtype == dtype
    assert_sum(out.double().cpu(), ref.conv_dx_masked(delta.double(), weight.double(), bits, *rest),
               magnitude, unit + 1e-5)


# ------------------------------------------------------------------ conv_fwd_events
def fwd_case(geometry, R, density, valued, dtype, gen, bias=True):
    C_in, H, W, C_out, kernel, stride, padding, dilation, groups = geometry
    x = spikes((R, C_in, H, W), density, gen, dtype, valued)
    weight = randn((C_out, C_in // groups, *kernel), gen, dtype)
    b = randn((C_out,), gen, dtype) if bias else None
    return (x, weight, b, list(stride), list(padding), list(dilation), groups)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("R", [1, 5])
@pytest.mark.parametrize("density", X_DENSITIES + [1.0])
@pytest.mark.parametrize("valued", [False, True], ids=["binary", "graded"])
def test_conv_fwd_events(device, gen, dtype, geometry, R, density, valued):
    """The event-driven forward equals the dense convolution (to the order of the sums):
    ``|out − conv2d| ≤ tol·conv2d(|x|, |W|) + |b|`` (the bias is added exactly)."""
    args = fwd_case(GEOMETRIES[geometry], R, density, valued, dtype, gen, bias=R == 5)
    x, weight, b = args[:3]
    out = call("conv_fwd_events", device, *args)
    assert out.is_contiguous(memory_format=torch.channels_last)  # the documented layout
    magnitude = torch.nn.functional.conv2d(x.abs(), weight.abs(), None, *args[3:])
    dense = torch.nn.functional.conv2d(x, weight, b, *args[3:])
    assert_sum(out - (0 if b is None else b.view(1, -1, 1, 1)),
               dense - (0 if b is None else b.view(1, -1, 1, 1)), magnitude, TOL[dtype])
    if density == 0.0:  # no input: exactly the bias
        assert torch.equal(out, torch.zeros_like(out) + (0 if b is None else b.view(1, -1, 1, 1)))


def test_conv_fwd_events_opcheck(device, gen):
    args = fwd_case(GEOMETRIES["mixed_all"], 4, 0.2, True, torch.float64, gen)
    torch.library.opcheck(ops.conv_fwd_events,
                          tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args))


@pytest.mark.parametrize("over, match", [
    ({"x": torch.zeros(2, 2, 5)}, "`x` must be 4-D"),
    ({"x": torch.zeros(2, 3, 5, 5, dtype=torch.float64)}, "`weight` must be"),
    ({"weight": torch.zeros(4, 1, 3, 3, dtype=torch.float32)}, "`weight` must have the dtype"),
    ({"weight": torch.zeros(4, 1, 3)}, "`weight` must be 4-D"),
    ({"bias": torch.zeros(3, dtype=torch.float64)}, "`bias` must be"),
    ({"stride": [0, 1]}, "`stride`"),
    ({"padding": [-1, 0]}, "`padding`"),
    ({"dilation": [1]}, "`dilation`"),
    ({"groups": 3}, "groups"),
    ({"weight": torch.zeros(4, 1, 7, 7, dtype=torch.float64)}, "dilated kernel"),
])
def test_conv_fwd_events_bad_arguments(over, match):
    a = {"x": torch.zeros(2, 2, 5, 5, dtype=torch.float64),
         "weight": torch.zeros(4, 1, 3, 3, dtype=torch.float64), "bias": None,
         "stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "groups": 2}
    a.update(over)
    with pytest.raises(RuntimeError, match=match):
        ops.conv_fwd_events(*a.values())
