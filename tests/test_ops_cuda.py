"""The CUDA kernels of every op against ``reference.py`` run in float64 on the CPU on the
same inputs (rounded to the tested dtype first, then upcast), in float16, bfloat16, float32
and float64; sizes large enough for multi-block scans (spike/band_grad), the global-memory
path of dx_masked and contended atomics in dw_trace; empty inputs; float64 equality with the
CPU kernels; the host syncs each op makes. Skipped (not passed) without a GPU.

Tolerances are error bounds, not tuned numbers: rounding the exact result to the dtype,
plus ``terms`` roundings in the kernel's compute precision (float for 16-bit dtypes) of
``scale``, the magnitude its intermediate values reach (for a sum: the sum of |terms|).
"""

import math

import pytest
import torch

from snntorch_sparse import _ops, reference as ref

ops = _ops.ops

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
DTYPE_IDS = ["f16", "bf16", "f32", "f64"]
# Shape parameter per surrogate (snnTorch's defaults).
P = {ref.FAST_SIGMOID: 25.0, ref.ATAN: 2.0, ref.SIGMOID: 25.0, ref.TRIANGULAR: 1.0,
     ref.STRAIGHT_THROUGH: 0.0}
LARGE = (1 << 20) + 77  # > 1e6 elements, not a multiple of 32: many blocks, a partial last word


# ------------------------------------------------------------------------- helpers
def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, dtype, g, scale=1.0, shift=0.0):
    """Random values rounded to ``dtype``: (CUDA tensor, the same values in float64 on the CPU)."""
    x = (torch.randn(*shape, dtype=torch.float64, generator=g) * scale + shift).to(dtype)
    return x.cuda(), x.double()


def uniform(*shape, lo, hi, dtype, g):
    x = (torch.rand(*shape, dtype=torch.float64, generator=g) * (hi - lo) + lo).to(dtype)
    return x.cuda(), x.double()


def call(op, *args):
    """Run ``ops.<op>`` and check that it left its tensor arguments untouched."""
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    out = getattr(ops, op)(*args)
    torch.cuda.synchronize()
    for a, b in zip(args, before):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True,
                                       msg=f"{op} modified an input")
    return out


def compute_unit(dtype):
    """Unit roundoff of the kernels' compute type (at::opmath_type)."""
    return 2.0**-53 if dtype == torch.float64 else 2.0**-24


def check(got, want, dtype, terms, scale=None):
    """``got`` (kernel, ``dtype``) against the float64 reference ``want``; see module doc."""
    got = got.double().cpu()
    assert got.shape == want.shape
    fi = torch.finfo(dtype)
    scale = want.abs() if scale is None else scale
    bound = fi.eps * want.abs() + 2 * terms * compute_unit(dtype) * scale + fi.tiny * fi.eps
    err = (got - want).abs()
    ok = (err <= bound) | (got.isnan() & want.isnan())
    assert ok.all(), (f"{int((~ok).sum())} of {ok.numel()} entries off; worst excess "
                      f"{float((err - bound)[~ok].max())}, e.g. got {got[~ok][:3].tolist()} "
                      f"want {want[~ok][:3].tolist()}")


def csc(mask, g, dtype, binary):
    """CSC (by column of ``mask [R, n]``) as the ops take it: int64 colptr, int32 rows, and
    values (empty when ``binary``). Returns CUDA tensors and float64 CPU values."""
    col, row = mask.t().nonzero(as_tuple=True)  # sorted by column, then row
    ptr = torch.zeros(mask.shape[1] + 1, dtype=torch.int64)
    ptr[1:] = torch.bincount(col, minlength=mask.shape[1]).cumsum(0)
    if binary:
        vals_d, vals64 = torch.empty(0, dtype=dtype).cuda(), torch.empty(0, dtype=torch.float64)
    else:
        vals_d, vals64 = randn(row.numel(), dtype=dtype, g=g)
    return ptr.cuda(), row.int().cuda(), vals_d, ptr, row.int(), vals64


def csr(mask):
    """CSR of ``mask [R, n]``: int64 rowptr, int32 cols (CPU)."""
    row, col = mask.nonzero(as_tuple=True)
    ptr = torch.zeros(mask.shape[0] + 1, dtype=torch.int64)
    ptr[1:] = torch.bincount(row, minlength=mask.shape[0]).cumsum(0)
    return ptr, col.int()


def test_cuda_ops_are_the_compiled_kernels():
    # Otherwise every test below would compare the reference with itself.
    assert not _ops.BACKENDS["cuda"].startswith("reference"), _ops.BACKENDS["cuda"]


# --------------------------------------------------------------------------- spike
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n", [37, LARGE])
@pytest.mark.parametrize("b_th", [0.25, 0.3, math.inf])
def test_spike(dtype, n, b_th):
    g = gen(n + int(b_th * 100) if math.isfinite(b_th) else n)
    u, u64 = randn(n, dtype=dtype, g=g, scale=0.5)
    # Edge values up front: NaN and infinities are never in the band, |u| == b_th is not
    # (strict), the dtype's next value below b_th is.
    b_dt = torch.tensor(b_th, dtype=dtype)
    below = torch.nextafter(b_dt, torch.tensor(0.0, dtype=dtype))
    edge = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, b_dt, -b_dt, below, -below],
                        dtype=dtype)
    u[: edge.numel()] = edge.cuda()
    u64[: edge.numel()] = edge.double()
    u, u64 = u.view(1, n), u64.view(1, n)
    gamma = 1.5
    spk, bits, vals = call("spike", u, ref.ATAN, 2.0, b_th, gamma)
    # torch compares a tensor with a python float in the tensor's dtype, so the reference
    # band of these values uses b_th rounded to the dtype.
    want_spk, want_bits, want_vals = ref.spike(u64, ref.ATAN, 2.0, float(b_dt), gamma)
    assert spk.dtype == dtype and spk.shape == u.shape and vals.dtype == dtype
    assert torch.equal(spk.double().cpu(), want_spk)
    assert bits.dtype == torch.int32 and torch.equal(bits.cpu(), want_bits)
    torch.testing.assert_close(vals.double().cpu(), want_vals, rtol=0, atol=0, equal_nan=True)


def test_spike_non_contiguous_input():
    g = gen(1)
    u, u64 = randn(40, 70, dtype=torch.float32, g=g, scale=0.5)
    spk, bits, vals = call("spike", u.t(), ref.FAST_SIGMOID, 25.0, 0.3, 1.0)
    want_spk, want_bits, want_vals = ref.spike(u64.t(), ref.FAST_SIGMOID, 25.0,
                                               float(torch.tensor(0.3, dtype=torch.float32)), 1.0)
    assert spk.shape == (70, 40)
    assert torch.equal(spk.double().cpu(), want_spk)
    assert torch.equal(bits.cpu(), want_bits)
    assert torch.equal(vals.double().cpu(), want_vals)


# ----------------------------------------------------------------------- band_grad
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", range(5), ids=ref.SHAPES)
@pytest.mark.parametrize("compact", [False, True], ids=["full", "compact"])
@pytest.mark.parametrize("dense", [False, True], ids=["band", "dense"])
def test_band_grad(dtype, shape, compact, dense):
    g = gen(10 * shape + 2 * compact + dense)
    # |u| well below 1.7: exp(-25u) squared stays finite in float (sigmoid shape).
    u, u64 = randn(4, LARGE // 4, dtype=dtype, g=g, scale=0.25)
    grad, grad64 = randn(4, LARGE // 4, dtype=dtype, g=g)
    _, bits, vals64 = ref.spike(u64, shape, P[shape], math.inf if dense else 0.3, 1.0)
    gamma = 0.75
    out = call("band_grad", grad, bits.cuda(), vals64.to(dtype).cuda(), shape, P[shape], gamma,
               compact)
    want = ref.band_grad(grad64, bits, vals64, shape, P[shape], gamma, compact)
    assert out.dtype == dtype
    if not dense:
        assert 0 < want.count_nonzero() < u.numel()  # a real band
    # exp(-p*u) turns the rounding of p*u into a relative error of |p*u| ulps.
    pu = P[shape] * (vals64 if compact else u64.reshape(want.shape)).abs()
    check(out, want, dtype, terms=10 + (3 * pu if shape == ref.SIGMOID else 0))


# ------------------------------------------------------------------------- lif_fwd
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reset", range(3), ids=ref.RESETS)
def test_lif_fwd(dtype, reset):
    g = gen(100 + reset)
    T, M = 64, 4099
    cur, cur64 = randn(T, M, dtype=dtype, g=g, scale=0.5, shift=0.2)
    mem0, mem064 = randn(M, dtype=dtype, g=g, scale=0.5)
    beta, beta64 = uniform(M, lo=0.5, hi=1.0, dtype=dtype, g=g)
    theta, theta64 = uniform(M, lo=0.5, hi=1.5, dtype=dtype, g=g)
    out = call("lif_fwd", cur, mem0, beta, theta, reset)
    want = ref.lif_fwd(cur64, mem064, beta64, theta64, reset)
    assert out.dtype == dtype and out.shape == (T, M)
    if dtype == torch.float64:  # same operations in the same order: bit for bit
        assert torch.equal(out.cpu(), want)
        return
    # The membrane of a neuron is computed in float; each step adds at most 3 roundings of
    # numbers below `scale`. A reset decision taken closer to threshold than that error may
    # legitimately flip (and change the rest of the sequence), so such neurons are left out.
    scale = torch.cat([want.abs(), cur64.abs(), theta64.abs()[None], mem064.abs()[None]]).amax(0)
    err = 3 * T * compute_unit(dtype) * scale
    prev = torch.cat([mem064[None], want[:-1]])
    margin = (prev - theta64).abs().amin(0)
    kept = torch.ones(M, dtype=torch.bool) if reset == ref.NONE else margin > 4 * err
    assert kept.float().mean() > 0.9
    assert (want[:, kept] > theta64[kept]).any()  # some neurons fire (and reset)
    check(out[:, kept.cuda()], want[:, kept], dtype, terms=3 * T, scale=scale[kept].expand(T, -1))


# ------------------------------------------------------------------------- lif_bwd
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reset", range(3), ids=ref.RESETS)
def test_lif_bwd(dtype, reset):
    g = gen(200 + reset)
    T, M = 64, 4099
    eps, eps64 = randn(T, M, dtype=dtype, g=g)
    beta, beta64 = uniform(M, lo=0.5, hi=1.0, dtype=dtype, g=g)
    if reset == ref.ZERO:
        rbits = ref.pack_bits(torch.rand(T, M, generator=g) < 0.2)
    else:
        rbits = torch.empty(0, dtype=torch.int32)
    delta, dmem0 = call("lif_bwd", eps, beta, rbits.cuda(), reset)
    want_delta, want_dmem0 = ref.lif_bwd(eps64, beta64, rbits, reset)
    assert delta.dtype == dmem0.dtype == dtype
    if dtype == torch.float64:  # bit for bit
        assert torch.equal(delta.cpu(), want_delta) and torch.equal(dmem0.cpu(), want_dmem0)
        return
    scale = torch.cat([want_delta.abs(), eps64.abs()]).amax(0)  # per neuron
    check(delta, want_delta, dtype, terms=2 * T + 2, scale=scale.expand(T, -1))
    check(dmem0, want_dmem0, dtype, terms=2 * T + 3, scale=scale)


# -------------------------------------------------------------------- lif_bwd_band
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reset", range(3), ids=ref.RESETS)
@pytest.mark.parametrize("b_th", [0.3, math.inf], ids=["band", "dense"])
def test_lif_bwd_band(dtype, reset, b_th):
    """The fused neuron backward against the two ops it fuses: ε = band_grad(grad_spk)
    (+ grad_mem), rounded to ``dtype`` as those ops round it, then the float64 scan; bit
    for bit in float64."""
    g = gen(250 + reset)
    T, M = 37, 1031  # T*M not a multiple of 32: rows straddle band words
    u, _ = randn(T, M, dtype=dtype, g=g, scale=0.5)
    grad, _ = randn(T, M, dtype=dtype, g=g)
    gmem, _ = randn(T, M, dtype=dtype, g=g)
    beta, beta64 = uniform(M, lo=0.5, hi=1.0, dtype=dtype, g=g)
    rbits = (ref.pack_bits(torch.rand(T, M, generator=g) < 0.2) if reset == ref.ZERO
             else torch.empty(0, dtype=torch.int32))
    _, bits, vals = ops.spike(u, ref.FAST_SIGMOID, 25.0, b_th, 1.0)
    for mem in (False, True):
        delta, dmem0 = call("lif_bwd_band", grad, bits, vals, gmem if mem else None, None, beta,
                            rbits.cuda(), ref.FAST_SIGMOID, 25.0, 0.75, reset)
        eps = ops.band_grad(grad, bits, vals, ref.FAST_SIGMOID, 25.0, 0.75, False)
        eps = (eps + gmem if mem else eps).double().cpu()
        want_delta, want_dmem0 = ref.lif_bwd(eps, beta64, rbits, reset)
        assert delta.dtype == dmem0.dtype == dtype
        if dtype == torch.float64:  # bit for bit (needs --fmad=false)
            assert torch.equal(delta.cpu(), want_delta) and torch.equal(dmem0.cpu(), want_dmem0)
            continue
        scale = torch.cat([want_delta.abs(), eps.abs()]).amax(0)  # per neuron
        check(delta, want_delta, dtype, terms=2 * T + 2, scale=scale.expand(T, -1))
        check(dmem0, want_dmem0, dtype, terms=2 * T + 3, scale=scale)


# ----------------------------------------------------------------------- dw_spikes
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("binary", [True, False], ids=["spikes", "valued"])
@pytest.mark.parametrize("n_out", [200, 700])  # 700: more outputs than threads in a block
def test_dw_spikes(dtype, binary, n_out):
    g = gen(300 + n_out + binary)
    R, n_in = 600, 300
    delta, delta64 = randn(R, n_out, dtype=dtype, g=g)
    mask = torch.rand(R, n_in, generator=g) < 0.05
    mask[:, 7] = True  # a full column
    mask[:, 8] = False  # an empty one
    colptr, rows, xvals, colptr_c, rows_c, xvals64 = csc(mask, g, dtype, binary)
    # Rows in any order within a column: reverse them.
    order = torch.cat([torch.arange(int(a), int(b)).flip(0)
                       for a, b in zip(colptr_c[:-1], colptr_c[1:])])
    rows, rows_c = rows[order.cuda()], rows_c[order]
    if not binary:
        xvals, xvals64 = xvals[order.cuda()], xvals64[order]
    out = call("dw_spikes", delta, colptr, rows, xvals, n_in)
    want = ref.dw_spikes(delta64, colptr_c, rows_c, xvals64, n_in)
    scale = ref.dw_spikes(delta64.abs(), colptr_c, rows_c, xvals64.abs(), n_in)
    assert out.dtype == dtype and out.shape == (n_in, n_out)
    check(out, want, dtype, terms=R + 1, scale=scale)


# ------------------------------------------------------------------------ dw_trace
def run_dw_trace(dtype, T, B, n_in, n_out, x_rate, active_rate, binary, seed, beta=0.9):
    g = gen(seed)
    R = T * B
    active = torch.rand(R, n_out, generator=g) < active_rate
    rowptr, cols = csr(active)
    eps, eps64 = randn(cols.numel(), dtype=dtype, g=g)
    colptr, rows, xvals, colptr_c, rows_c, xvals64 = csc(
        torch.rand(R, n_in, generator=g) < x_rate, g, dtype, binary)
    out = call("dw_trace", rowptr.cuda(), cols.cuda(), eps, colptr, rows, xvals, beta, T, B, n_out)
    want = ref.dw_trace(rowptr, cols, eps64, colptr_c, rows_c, xvals64, beta, T, B, n_out)
    scale = ref.dw_trace(rowptr, cols, eps64.abs(), colptr_c, rows_c, xvals64.abs(), beta, T, B,
                         n_out)
    assert out.dtype == dtype and out.shape == (n_in, n_out)
    assert want.count_nonzero() > 0
    # Each trace value: 2 roundings per step; each output: one product and add per row.
    check(out, want, dtype, terms=2 * T + 2 * R, scale=scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("binary", [True, False], ids=["spikes", "valued"])
@pytest.mark.parametrize("B", [20, 300])  # 300: more batch elements than threads in a block
def test_dw_trace(dtype, binary, B):
    run_dw_trace(dtype, T=30, B=B, n_in=40, n_out=50, x_rate=0.1, active_rate=0.1,
                 binary=binary, seed=400 + B + binary)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_dw_trace_contended_atomics(dtype):
    # Every row active in all 3 outputs: all threads of a block add into the same 3 entries
    # at every step (6000 additions each). A lost update is caught in float64, where the
    # bound is ~1e-12 relative.
    run_dw_trace(dtype, T=20, B=300, n_in=6, n_out=3, x_rate=0.5, active_rate=1.0,
                 binary=False, seed=500)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("B", [20, 300])
def test_dw_trace_dense(dtype, B):
    g = gen(600 + B)
    T, n_in, n_out = 30, 40, 50
    R = T * B
    rowptr, cols = csr(torch.rand(R, n_out, generator=g) < 0.1)
    eps, eps64 = randn(cols.numel(), dtype=dtype, g=g)
    x, x64 = randn((R, n_in), dtype=dtype, g=g)
    out = call("dw_trace_dense", rowptr.cuda(), cols.cuda(), eps, x, 0.9, T, B, n_out)
    want = ref.dw_trace_dense(rowptr, cols, eps64, x64, 0.9, T, B, n_out)
    scale = ref.dw_trace_dense(rowptr, cols, eps64.abs(), x64.abs(), 0.9, T, B, n_out)
    assert out.dtype == dtype and out.shape == (n_in, n_out)
    check(out, want, dtype, terms=2 * T + 2 * R, scale=scale)


# ----------------------------------------------------------------------- dx_masked
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("R, n_in, n_out", [(96, 150, 100), (40, 70, 13000)],
                         ids=["shared", "global"])  # 13000 > 48 KiB of floats: no staging
def test_dx_masked(dtype, R, n_in, n_out):
    g = gen(600 + n_out)
    delta, delta64 = randn(R, n_out, dtype=dtype, g=g)
    wt, wt64 = randn(n_in, n_out, dtype=dtype, g=g, scale=0.1)
    keep = torch.rand(R, n_in, generator=g) < 0.2
    keep[3] = True  # a full row
    keep[4] = False  # an empty one
    bits = ref.pack_bits(keep)
    out = call("dx_masked", delta, wt, bits.cuda())
    want = ref.dx_masked(delta64, wt64, bits)
    scale = ref.dx_masked(delta64.abs(), wt64.abs(), bits)
    assert out.dtype == dtype and out.shape == (R, n_in)
    assert (out.cpu()[~keep] == 0).all()
    check(out, want, dtype, terms=n_out + 6, scale=scale)


# ------------------------------------------------------------------- empty inputs
def test_empty_inputs():
    cuda = {"device": "cuda"}
    i32, i64 = torch.int32, torch.int64
    # spike: no elements; elements but none in the band.
    for u in (torch.empty(0, **cuda), torch.empty(1, 0, **cuda)):
        for b_th in (0.3, math.inf):
            spk, bits, vals = call("spike", u, 0, 25.0, b_th, 1.0)
            assert spk.shape == u.shape and bits.numel() == 0 and vals.numel() == 0
    spk, bits, vals = call("spike", torch.full((1, 40), 5.0, **cuda), 0, 25.0, 0.3, 1.0)
    assert torch.equal(bits.cpu(), torch.zeros(2, dtype=i32)) and vals.numel() == 0
    # band_grad: empty grad; a band with no set bit.
    for compact in (False, True):
        out = call("band_grad", torch.empty(0, **cuda), torch.empty(0, dtype=i32, **cuda),
                   torch.empty(0, **cuda), 0, 25.0, 1.0, compact)
        assert out.shape == (0,)
        out = call("band_grad", torch.ones(1, 40, **cuda), bits, vals, 0, 25.0, 1.0, compact)
        assert out.shape == ((0,) if compact else (1, 40)) and not out.any()
    # lif_fwd / lif_bwd with one step, with and without neurons.
    for M in (5, 0):
        cur = torch.randn(1, M, **cuda)
        mem0, beta, theta = torch.randn(M, **cuda), torch.full((M,), 0.9, **cuda), torch.ones(M, **cuda)
        for reset in range(3):
            out = call("lif_fwd", cur, mem0, beta, theta, reset)
            torch.testing.assert_close(out.cpu(), ref.lif_fwd(cur.cpu(), mem0.cpu(), beta.cpu(),
                                                              theta.cpu(), reset))
            rbits = torch.full(((M + 31) // 32,), -1, dtype=i32)
            delta, dmem0 = call("lif_bwd", cur, beta, rbits.cuda(), reset)
            want_delta, want_dmem0 = ref.lif_bwd(cur.cpu(), beta.cpu(), rbits, reset)
            torch.testing.assert_close(delta.cpu(), want_delta)
            torch.testing.assert_close(dmem0.cpu(), want_dmem0)
    # dw_spikes: no input nonzero; no input neuron.
    delta = torch.randn(3, 4, **cuda)
    out = call("dw_spikes", delta, torch.zeros(6, dtype=i64, **cuda), torch.empty(0, dtype=i32, **cuda),
               torch.empty(0, **cuda), 5)
    assert out.shape == (5, 4) and not out.any()
    out = call("dw_spikes", delta, torch.zeros(1, dtype=i64, **cuda), torch.empty(0, dtype=i32, **cuda),
               torch.empty(0, **cuda), 0)
    assert out.shape == (0, 4)
    # dw_trace with T=1: no active entry (with input nonzeros), then nothing at all.
    T, B, n_in, n_out = 1, 3, 2, 4
    colptr = torch.tensor([0, 2, 3], dtype=i64, **cuda)
    rows = torch.tensor([0, 2, 1], dtype=i32, **cuda)
    for cp, rw in ((colptr, rows), (torch.zeros(n_in + 1, dtype=i64, **cuda), rows[:0])):
        out = call("dw_trace", torch.zeros(T * B + 1, dtype=i64, **cuda), torch.empty(0, dtype=i32, **cuda),
                   torch.empty(0, **cuda), cp, rw, torch.empty(0, **cuda), 0.9, T, B, n_out)
        assert out.shape == (n_in, n_out) and not out.any()
    # dx_masked: no set bit; no row.
    out = call("dx_masked", delta, torch.randn(7, 4, **cuda), torch.zeros(1, dtype=i32, **cuda))
    assert out.shape == (3, 7) and not out.any()
    out = call("dx_masked", delta[:0], torch.randn(7, 4, **cuda), torch.empty(0, dtype=i32, **cuda))
    assert out.shape == (0, 7)


# --------------------------------------------------- float64: CUDA == CPU kernels
@pytest.mark.parametrize("shape", range(5), ids=ref.SHAPES)
def test_float64_matches_cpu_kernels(shape):
    g = gen(700 + shape)
    d = torch.float64
    u, u64 = randn(3, 3001, dtype=d, g=g, scale=0.4)
    for b_th in (0.3, math.inf):
        got = call("spike", u, shape, P[shape], b_th, 1.0)
        want = ops.spike(u64, shape, P[shape], b_th, 1.0)
        for a, b in zip(got, want):
            assert torch.equal(a.cpu(), b)
        grad, grad64 = randn(3, 3001, dtype=d, g=g)
        for compact in (False, True):
            got_g = call("band_grad", grad, got[1], got[2], shape, P[shape], 0.75, compact)
            want_g = ops.band_grad(grad64, want[1], want[2], shape, P[shape], 0.75, compact)
            if shape == ref.SIGMOID:  # exp() of CUDA (libdevice) and of the CPU may differ in the last bit
                torch.testing.assert_close(got_g.cpu(), want_g, rtol=4 * 2.0**-52, atol=0)
            else:  # needs nvcc --fmad=false: a fused p*|u| + 1 differs in the last bit
                assert torch.equal(got_g.cpu(), want_g), "CUDA != CPU (built without --fmad=false?)"
    T, M = 50, 1031
    cur, cur64 = randn(T, M, dtype=d, g=g, scale=0.5, shift=0.2)
    mem0, mem064 = randn(M, dtype=d, g=g)
    beta, beta64 = uniform(M, lo=0.5, hi=1.0, dtype=d, g=g)
    theta, theta64 = uniform(M, lo=0.5, hi=1.5, dtype=d, g=g)
    rbits = ref.pack_bits(torch.rand(T, M, generator=g) < 0.3)
    for reset in range(3):
        assert torch.equal(call("lif_fwd", cur, mem0, beta, theta, reset).cpu(),
                           ops.lif_fwd(cur64, mem064, beta64, theta64, reset))
        got = call("lif_bwd", cur, beta, rbits.cuda(), reset)
        want = ops.lif_bwd(cur64, beta64, rbits, reset)
        assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])


# ---------------------------------------------------------------- errors and syncs
def test_bad_arguments_name_the_argument():
    cuda = {"device": "cuda"}
    x = torch.randn(4, 8, **cuda)
    v = torch.ones(8, **cuda)
    with pytest.raises(RuntimeError, match="`u`"):
        ops.spike(x.int(), 0, 25.0, 0.3, 1.0)
    with pytest.raises(RuntimeError, match="`mem0`"):
        ops.lif_fwd(x, v.cpu(), v, v, 0)
    with pytest.raises(RuntimeError, match="`beta`"):
        ops.lif_bwd(x, v.double(), torch.empty(0, dtype=torch.int32, **cuda), 0)
    with pytest.raises(RuntimeError, match="`rbits`"):
        ops.lif_bwd(x, v, torch.empty(0, dtype=torch.int32, **cuda), ref.ZERO)
    with pytest.raises(RuntimeError, match="`bits`"):
        ops.band_grad(x, torch.zeros(1, dtype=torch.int64, **cuda), x.flatten(), 0, 25.0, 1.0, False)
    with pytest.raises(RuntimeError, match="`rows`"):
        ops.dw_spikes(x, torch.zeros(3, dtype=torch.int64, **cuda), torch.empty(0, dtype=torch.int64, **cuda),
                      torch.empty(0, **cuda), 2)
    with pytest.raises(RuntimeError, match="`weight_t`"):
        ops.dx_masked(x, torch.randn(3, 5, **cuda), torch.zeros(1, dtype=torch.int32, **cuda))


def test_host_syncs():
    """Only spike in band mode syncs (the size of vals); every other op is asynchronous."""
    cuda = {"device": "cuda"}
    u = torch.randn(1000, **cuda)
    x = torch.randn(4, 250, **cuda)
    v = torch.rand(250, **cuda)
    colptr = torch.tensor([0, 1, 3], dtype=torch.int64, **cuda)
    rows = torch.tensor([2, 0, 3], dtype=torch.int32, **cuda)
    _, bits, vals = ops.spike(u, 0, 25.0, 0.3, 1.0)
    rowptr = torch.tensor([0, 1, 1, 2, 2], dtype=torch.int64, **cuda)
    cols = torch.tensor([4, 9], dtype=torch.int32, **cuda)
    eps = torch.randn(2, **cuda)
    none = torch.empty(0, **cuda)
    wt = torch.randn(40, 250, **cuda)
    all_bits = torch.full((5,), -1, dtype=torch.int32, **cuda)
    async_calls = {
        "spike (dense)": lambda: ops.spike(u, 0, 25.0, math.inf, 1.0),
        "band_grad": lambda: ops.band_grad(u, bits, vals, 0, 25.0, 1.0, False),
        "band_grad (compact)": lambda: ops.band_grad(u, bits, vals, 0, 25.0, 1.0, True),
        "lif_fwd": lambda: ops.lif_fwd(x, v, v, v, ref.SUBTRACT),
        "lif_bwd": lambda: ops.lif_bwd(x, v, bits, ref.ZERO),
        "lif_bwd_band": lambda: ops.lif_bwd_band(u.view(4, 250), bits, vals, None, v, v, bits,
                                                 0, 25.0, 1.0, ref.ZERO),
        "dw_spikes": lambda: ops.dw_spikes(x, colptr, rows, none, 2),
        "dw_trace": lambda: ops.dw_trace(rowptr, cols, eps, colptr, rows, none, 0.9, 2, 2, 250),
        "dx_masked": lambda: ops.dx_masked(x, wt, all_bits),
    }
    torch.cuda.synchronize()
    try:
        torch.cuda.set_sync_debug_mode("error")  # a synchronizing call raises
        for name, fn in async_calls.items():
            try:
                fn()
            except RuntimeError as e:
                raise AssertionError(f"{name} synchronized with the host: {e}") from e
        with pytest.raises(RuntimeError, match="synchroniz"):
            ops.spike(u, 0, 25.0, 0.3, 1.0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
