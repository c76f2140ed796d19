"""Every op's compiled kernel (``torch.ops.snntorch_sparse.X``) against ``reference.X``.

The reference always runs on the CPU, on the same inputs. On the CPU the spike, band and
LIF kernels equal it bit for bit in float64 (same expression order); the weight and input
gradients add their terms in another order than a GEMM does, so they are held to a
bound relative to the sum of the terms' magnitudes. With a GPU the same tests run the
CUDA kernels (``device`` fixture, tests/conftest.py).
"""

import math
import os

import pytest
import torch
from conftest import needs_cuda

from snntorch_sparse import _ops
from snntorch_sparse import reference as ref

ops = _ops.ops

DTYPES = [torch.float32, torch.float64]
# A shape parameter per surrogate (snnTorch's defaults).
P = {ref.FAST_SIGMOID: 25.0, ref.ATAN: 2.0, ref.SIGMOID: 5.0, ref.TRIANGULAR: 1.0,
     ref.STRAIGHT_THROUGH: 0.0}
DENSITIES = [0.0, 0.02, 0.3, 1.0]


# ------------------------------------------------------------------------- helpers
def _tensors(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for y in x for t in _tensors(y)]
    return []


def run(op, device, *args):
    """``(kernel output on the CPU, reference output)`` for ``args`` (CPU tensors).

    Checks that the kernel left its inputs untouched, and hands the allocator NaN-filled
    (or -1-filled) blocks of the outputs' sizes first, so that an output element the
    kernel forgets to write shows up as a mismatch instead of a lucky zero.
    """
    expected = getattr(ref, op)(*args)
    dev_args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    before = [a.clone() for a in _tensors(dev_args)]
    poison = [torch.full_like(t, -1 if not t.is_floating_point() else math.nan, device=device)
              for t in _tensors(expected)]
    del poison
    out = getattr(ops, op)(*dev_args)
    for a, b in zip(_tensors(dev_args), before):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True,
                                   msg=f"{op} modified an input")
    if isinstance(out, torch.Tensor):
        return out.cpu(), expected
    return tuple(o.cpu() for o in out), expected


def assert_same(out, exp, device):
    """Bit-identical for the CPU in float64; within rounding for float32 and on a GPU
    (whose compiler may fuse a multiply-add)."""
    assert out.dtype == exp.dtype and out.shape == exp.shape
    if not exp.is_floating_point() or (device == "cpu" and exp.dtype == torch.float64):
        torch.testing.assert_close(out, exp, rtol=0, atol=0, equal_nan=True)
        return
    tol = 1e-12 if exp.dtype == torch.float64 else 1e-5
    finite = exp[exp.isfinite()]
    scale = finite.abs().max().item() if finite.numel() else 1.0
    torch.testing.assert_close(out, exp, rtol=tol, atol=tol * max(scale, 1.0), equal_nan=True)


def assert_sum(out, exp, magnitude):
    """``|out − exp| ≤ tol · Σ|terms|`` elementwise (``magnitude`` = Σ|terms|): a summation
    order other than the reference's only changes the rounding. Entries with no terms
    must be exactly 0."""
    assert out.dtype == exp.dtype and out.shape == exp.shape
    tol = 1e-12 if exp.dtype == torch.float64 else 1e-5
    err = (out - exp).abs()
    bad = ~(err <= tol * magnitude)
    assert not bad.any(), (f"{int(bad.sum())} entries off; worst error {err.max().item():.3g} "
                           f"at {bad.nonzero()[0].tolist()}")


def randn(shape, gen, dtype, scale=1.0, shift=0.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift).to(dtype)


def rand(shape, gen, dtype, lo=0.0, hi=1.0):
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo).to(dtype)


def mask(shape, density, gen):
    return torch.rand(shape, generator=gen) < density


def csc(m, gen, dtype, valued):
    """CSC of a boolean ``[R, n_in]`` mask: ``colptr`` int64, ``rows`` int32 ascending within
    each column, and ``xvals`` (random, or empty for a binary input)."""
    col, row = m.t().nonzero(as_tuple=True)
    colptr = torch.zeros(m.shape[1] + 1, dtype=torch.int64)
    colptr[1:] = torch.bincount(col, minlength=m.shape[1]).cumsum(0)
    xvals = rand(row.numel(), gen, dtype, 0.5, 1.5) if valued else torch.empty(0, dtype=dtype)
    return colptr, row.int(), xvals


def csr(m, vals):
    """CSR of a boolean ``[R, n_out]`` mask with the values of ``vals`` at the set entries."""
    row, col = m.nonzero(as_tuple=True)
    rowptr = torch.zeros(m.shape[0] + 1, dtype=torch.int64)
    rowptr[1:] = torch.bincount(row, minlength=m.shape[0]).cumsum(0)
    return rowptr, col.int(), vals[row, col]


def band_threshold(u, activity):
    """A ``b_th`` that puts about ``activity`` of ``u`` in the band (0: none, 1: all)."""
    a = u.abs().double().reshape(-1)
    if a.numel() == 0:
        return 1.0
    if activity == 0:  # the smallest |u|: the band is strict, so it holds nothing
        return a.min().item() or 2.0**-1074
    if activity == 1:
        return 2 * a.max().item() + 1
    return torch.quantile(a, activity).item()


# ----------------------------------------------------------------------- the build
def test_kernels_are_compiled(device):
    """Otherwise every comparison below would test the reference against itself."""
    if os.environ.get("SNNTORCH_SPARSE_BACKEND") == "reference":
        pytest.skip("SNNTORCH_SPARSE_BACKEND=reference")
    assert _ops.BACKENDS[device].startswith("compiled"), _ops.BACKENDS[device]
    key = device.upper() + ": "
    for op in _ops.OPS:
        if device == "cuda" and op in _ops.CPU_ONLY:  # the library never calls these on CUDA
            continue
        # The dispatcher names the file that registered each kernel; the reference
        # stand-ins are registered from _ops.py.
        lines = [ln for ln in torch._C._dispatch_dump(f"snntorch_sparse::{op}").splitlines()
                 if ln.startswith(key)]
        assert lines and "_ops.py" not in lines[0], f"{op} on {device}: {lines}"


# --------------------------------------------------------------------------- spike
SPIKE_SHAPES = [(), (0,), (1,), (31,), (32,), (33,), (4, 50), (3, 7, 11), (3, 9000)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SPIKE_SHAPES)
@pytest.mark.parametrize("activity", [0.0, 0.02, 0.3, 1.0, "dense"])
def test_spike(device, gen, dtype, shape, activity):
    u = randn(shape, gen, dtype)
    b_th = math.inf if activity == "dense" else band_threshold(u, activity)
    if u.numel() >= 8 and activity not in ("dense", 0.0):
        flat = u.view(-1)
        flat[:4] = torch.tensor([b_th, -b_th, 0.0, math.nan])  # edges: outside, outside, in
    (spk, bits, vals), (e_spk, e_bits, e_vals) = run("spike", device, u, ref.ATAN, 2.0, b_th, 1.5)
    assert_same(spk, e_spk, device)
    assert_same(bits, e_bits, device)
    assert_same(vals, e_vals, device)
    if activity == "dense":
        assert bits.numel() == 0 and vals.numel() == u.numel()
    elif activity == 0.0:
        assert vals.numel() == 0
    elif u.numel() >= 1000:  # the generated activity is what the test claims
        assert vals.numel() / u.numel() == pytest.approx(activity, abs=0.06)


def test_spike_float32_rounds_b_th_like_torch(device):
    # 0.7 rounds down in float32: torch compares |u| with float32(0.7), so u = 0.7f is out.
    u = torch.tensor([0.7, -0.7, 0.69999, 0.5], dtype=torch.float32)
    (spk, bits, vals), (e_spk, e_bits, e_vals) = run("spike", device, u, ref.ATAN, 2.0, 0.7, 1.0)
    assert torch.equal(bits, e_bits) and torch.equal(vals, e_vals)
    assert vals.tolist() == pytest.approx([0.69999, 0.5])


@pytest.mark.parametrize("b_th", [0.3, math.inf])
def test_spike_autograd_is_band_grad(device, gen, b_th):
    u = randn((5, 40), gen, torch.float64)
    g = randn((5, 40), gen, torch.float64)
    ud = u.clone().to(device).requires_grad_()
    spk, _, _ = ops.spike(ud, ref.FAST_SIGMOID, 25.0, b_th, 1.0)
    spk.backward(g.to(device))
    ur = u.clone().requires_grad_()
    ref.spike_fn(ur, ref.FAST_SIGMOID, 25.0, b_th, 1.0).backward(g)
    assert_same(ud.grad.cpu(), ur.grad, device)


# ----------------------------------------------------------------------- band_grad
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0,), (1,), (33,), (3, 7, 11), (3, 9000)])
@pytest.mark.parametrize("activity", [0.0, 0.02, 0.3, 1.0, "dense"])
@pytest.mark.parametrize("surrogate", list(P))
def test_band_grad(device, gen, dtype, shape, activity, surrogate):
    u = randn(shape, gen, dtype, scale=0.5)
    b_th = math.inf if activity == "dense" else band_threshold(u, activity)
    _, bits, vals = ref.spike(u, surrogate, P[surrogate], b_th, 1.0)
    grad = randn(shape, gen, dtype)
    for compact in (True, False):
        out, exp = run("band_grad", device, grad, bits, vals, surrogate, P[surrogate], 0.75,
                       compact)
        assert_same(out, exp, device)


# ------------------------------------------------------------------------ lif ops
LIF_SHAPES = [(1, 1), (1, 37), (9, 1), (40, 600)]


def lif_params(M, gen, dtype):
    beta = rand(M, gen, dtype)  # already clamped to [0, 1]
    theta = rand(M, gen, dtype, 0.5, 1.5)
    return beta, theta


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LIF_SHAPES)
@pytest.mark.parametrize("reset", [ref.SUBTRACT, ref.ZERO, ref.NONE])
def test_lif_fwd(device, gen, dtype, shape, reset):
    T, M = shape
    cur = randn(shape, gen, dtype, scale=0.6, shift=0.3)
    mem0 = randn(M, gen, dtype)
    beta, theta = lif_params(M, gen, dtype)
    out, exp = run("lif_fwd", device, cur, mem0, beta, theta, reset)
    assert_same(out, exp, device)
    if T * M >= 1000:  # the inputs exercise the reset
        assert ((exp[:-1] - theta) > 0).float().mean() > 0.05


@pytest.mark.parametrize("reset", [ref.ZERO, ref.NONE])
def test_lif_fwd_infinite_threshold(device, gen, reset):
    """The readout layer: θ = ∞ never fires, never resets."""
    cur = randn((20, 30), gen, torch.float64)
    beta, _ = lif_params(30, gen, torch.float64)
    theta = torch.full((30,), math.inf, dtype=torch.float64)
    out, exp = run("lif_fwd", device, cur, randn(30, gen, torch.float64), beta, theta, reset)
    assert_same(out, exp, device)
    assert exp.isfinite().all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LIF_SHAPES)
@pytest.mark.parametrize("reset", [ref.SUBTRACT, ref.ZERO, ref.NONE])
def test_lif_bwd(device, gen, dtype, shape, reset):
    T, M = shape
    eps = randn(shape, gen, dtype)
    eps.view(-1)[::7] = 0.0  # inactive steps, as in a band-sparse backward
    beta, _ = lif_params(M, gen, dtype)
    # rbits is read only for the zero reset; the other resets may pass anything
    rbits = ref.pack_bits(mask(T * M, 0.3, gen)) if reset == ref.ZERO else torch.empty(0, dtype=torch.int32)
    (delta, dmem0), (e_delta, e_dmem0) = run("lif_bwd", device, eps, beta, rbits, reset)
    assert_same(delta, e_delta, device)
    assert_same(dmem0, e_dmem0, device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LIF_SHAPES + [(7, 45), (3, 1100)])  # rows not word-aligned
@pytest.mark.parametrize("reset", [ref.SUBTRACT, ref.ZERO, ref.NONE])
@pytest.mark.parametrize("activity", [0.0, 0.05, 0.5, "dense"])
@pytest.mark.parametrize("with_mem", [False, True], ids=["spk", "spk+mem"])
@pytest.mark.parametrize("with_carry", [False, True], ids=["", "carry"])
def test_lif_bwd_band(device, gen, dtype, shape, reset, activity, with_mem, with_carry):
    """The fused neuron backward equals lif_bwd(band_grad(grad_spk) + grad_mem) — bit for bit
    on the CPU in float64 — for every surrogate, band width and reset."""
    T, M = shape
    u = randn(shape, gen, dtype, scale=0.5)
    b_th = math.inf if activity == "dense" else band_threshold(u, activity)
    beta, _ = lif_params(M, gen, dtype)
    rbits = ref.pack_bits(mask(T * M, 0.3, gen)) if reset == ref.ZERO else torch.empty(0, dtype=torch.int32)
    grad_mem = randn(shape, gen, dtype) if with_mem else None
    carry = randn(M, gen, dtype) if with_carry else None
    for surrogate in P:
        _, bits, vals = ref.spike(u, surrogate, P[surrogate], b_th, 1.0)
        grad = randn(shape, gen, dtype)
        (delta, dmem0), (e_delta, e_dmem0) = run(
            "lif_bwd_band", device, grad, bits, vals, grad_mem, carry, beta, rbits, surrogate,
            P[surrogate], 0.75, reset)
        assert_same(delta, e_delta, device)
        assert_same(dmem0, e_dmem0, device)
        # and it is the composition of the two ops it fuses
        eps = ref.band_grad(grad, bits, vals, surrogate, P[surrogate], 0.75, False)
        want = ref.lif_bwd(eps if grad_mem is None else eps + grad_mem, beta, rbits, reset, carry)
        assert torch.equal(e_delta, want[0]) and torch.equal(e_dmem0, want[1])
    if with_mem:  # only a membrane gradient: the plain scan of it
        (delta, dmem0), (e_delta, e_dmem0) = run("lif_bwd_band", device, None, bits, vals,
                                                 grad_mem, carry, beta, rbits, 0, 1.0, 1.0, reset)
        assert_same(delta, e_delta, device)
        assert_same(dmem0, e_dmem0, device)


@pytest.mark.parametrize("reset", [ref.SUBTRACT, ref.ZERO, ref.NONE])
@pytest.mark.parametrize("with_mem", [False, True], ids=["spk", "spk+mem"])
def test_lif_bwd_band_in_chunks(device, gen, reset, with_mem):
    """A sequence scanned in chunks of steps, each chunk handed the dmem0 of the one after as
    dmem_last, equals the whole scan bit for bit (float64)."""
    T, M, cut = (12, 64, (0, 5, 6, 12))  # M·t is a multiple of 32: chunks own whole words
    dt = torch.float64
    u = randn((T, M), gen, dt, scale=0.5)
    _, bits, vals = ref.spike(u, ref.FAST_SIGMOID, 25.0, band_threshold(u, 0.2), 1.0)
    grad = randn((T, M), gen, dt)
    gmem = randn((T, M), gen, dt) if with_mem else None
    beta, _ = lif_params(M, gen, dt)
    r = mask(T * M, 0.3, gen)
    rbits = ref.pack_bits(r) if reset == ref.ZERO else torch.empty(0, dtype=torch.int32)
    dev = lambda t: None if t is None else t.to(device)  # noqa: E731
    whole = ops.lif_bwd_band(dev(grad), dev(bits), dev(vals), dev(gmem), None, dev(beta),
                             dev(rbits), ref.FAST_SIGMOID, 25.0, 1.0, reset)
    inband = ref.unpack_bits(bits, T * M).view(T, M)
    carry, parts = None, []
    for t0, t1 in reversed(list(zip(cut[:-1], cut[1:]))):
        k0, k1 = t0 * M, t1 * M
        chunk_bits = bits[k0 // 32:k1 // 32]
        chunk_vals = vals[int(inband[:t0].sum()):int(inband[:t1].sum())]
        chunk_r = ref.pack_bits(r[k0:k1]) if reset == ref.ZERO else rbits
        delta, carry = ops.lif_bwd_band(dev(grad[t0:t1]), dev(chunk_bits), dev(chunk_vals),
                                        dev(None if gmem is None else gmem[t0:t1]), carry,
                                        dev(beta), dev(chunk_r), ref.FAST_SIGMOID, 25.0, 1.0,
                                        reset)
        parts.insert(0, delta)
    assert torch.equal(torch.cat(parts).cpu(), whole[0].cpu())
    assert torch.equal(carry.cpu(), whole[1].cpu())


def test_lif_ops_non_contiguous_inputs(device, gen):
    big = randn((12, 80), gen, torch.float64, scale=0.6, shift=0.3)
    cur = big[:, ::2]  # [12, 40], strided
    beta, theta = lif_params(80, gen, torch.float64)
    out, exp = run("lif_fwd", device, cur, big[0, 1::2], beta[::2], theta[::2], ref.SUBTRACT)
    assert_same(out, exp, device)
    rbits = ref.pack_bits(mask(12 * 40, 0.3, gen))
    (delta, dmem0), (e_delta, e_dmem0) = run("lif_bwd", device, big.t()[::2].t(), beta[1::2],
                                               rbits, ref.ZERO)
    assert_same(delta, e_delta, device)
    assert_same(dmem0, e_dmem0, device)


def test_lif_ops_zero_steps(device):
    """T = 0: an empty membrane sequence, and no gradient reaches U[0]."""
    z = torch.zeros(0, 5, dtype=torch.float64, device=device)
    v = torch.full((5,), 0.5, dtype=torch.float64, device=device)
    assert ops.lif_fwd(z, v, v, v, ref.SUBTRACT).shape == (0, 5)
    delta, dmem0 = ops.lif_bwd(z, v, torch.zeros(0, dtype=torch.int32, device=device), ref.ZERO)
    assert delta.shape == (0, 5)
    assert torch.equal(dmem0.cpu(), torch.zeros(5, dtype=torch.float64))


# --------------------------------------------------------------------- linear ops
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("R,n_in,n_out", [(1, 1, 1), (7, 5, 3), (64, 40, 37), (300, 50, 600)])
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("valued", [False, True], ids=["binary", "valued"])
def test_dw_spikes(device, gen, dtype, R, n_in, n_out, density, valued):
    delta = randn((R, n_out), gen, dtype)
    colptr, rows, xvals = csc(mask((R, n_in), density, gen), gen, dtype, valued)
    out, exp = run("dw_spikes", device, delta, colptr, rows, xvals, n_in)
    assert_sum(out, exp, ref.dw_spikes(delta.abs(), colptr, rows, xvals, n_in))


def test_dw_spikes_unsorted_rows(device, gen):
    """The reference sums the inputs of a column in any order; so must the kernel."""
    delta = randn((200, 30), gen, torch.float64)
    colptr, rows, xvals = csc(mask((200, 20), 0.3, gen), gen, torch.float64, True)
    perm = torch.randperm(rows.numel(), generator=gen)
    col = torch.repeat_interleave(torch.arange(20), colptr[1:] - colptr[:-1])
    order = torch.argsort(col[perm], stable=True)  # shuffled within each column
    rows, xvals = rows[perm][order], xvals[perm][order]
    assert not all(bool((rows[a:b].diff() > 0).all()) for a, b in zip(colptr[:-1], colptr[1:]))
    out, exp = run("dw_spikes", device, delta, colptr, rows, xvals, 20)
    assert_sum(out, exp, ref.dw_spikes(delta.abs(), colptr, rows, xvals, 20))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,B,n_in,n_out,beta",
                         [(1, 1, 1, 1, 0.9), (5, 3, 40, 7, 0.0), (20, 4, 70, 33, 0.95),
                          (30, 2, 100, 50, 1.0)])
@pytest.mark.parametrize("x_density,eps_density", [(0.0, 0.3), (0.02, 0.3), (0.3, 0.02),
                                                   (0.3, 0.0), (1.0, 1.0)])
@pytest.mark.parametrize("valued", [False, True], ids=["binary", "valued"])
def test_dw_trace(device, gen, dtype, T, B, n_in, n_out, beta, x_density, eps_density, valued):
    R = T * B
    colptr, rows, xvals = csc(mask((R, n_in), x_density, gen), gen, dtype, valued)
    rowptr, cols, eps_vals = csr(mask((R, n_out), eps_density, gen), randn((R, n_out), gen, dtype))
    args = (rowptr, cols, eps_vals, colptr, rows, xvals, beta, T, B, n_out)
    out, exp = run("dw_trace", device, *args)
    magnitude = ref.dw_trace(rowptr, cols, eps_vals.abs(), colptr, rows, xvals, beta, T, B, n_out)
    assert_sum(out, exp, magnitude)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,B,n_in,n_out,beta",
                         [(1, 1, 1, 1, 0.9), (5, 3, 40, 7, 0.0), (20, 4, 70, 33, 0.95),
                          (30, 2, 100, 50, 1.0)])
@pytest.mark.parametrize("eps_density", [0.0, 0.02, 0.3, 1.0])
def test_dw_trace_dense(device, gen, dtype, T, B, n_in, n_out, beta, eps_density):
    R = T * B
    x = randn((R, n_in), gen, dtype)
    rowptr, cols, eps_vals = csr(mask((R, n_out), eps_density, gen), randn((R, n_out), gen, dtype))
    out, exp = run("dw_trace_dense", device, rowptr, cols, eps_vals, x, beta, T, B, n_out)
    magnitude = ref.dw_trace_dense(rowptr, cols, eps_vals.abs(), x.abs(), beta, T, B, n_out)
    assert_sum(out, exp, magnitude)


@pytest.mark.parametrize("valued", [False, True], ids=["binary", "valued"])
def test_dw_trace_dense_equals_dw_trace_of_its_nonzeros(device, gen, valued):
    """The same trace read from a dense input or from its CSC: the kernels' updates
    ``β·trace + x`` and ``β·trace`` (+ x at a nonzero) agree bit for bit."""
    T, B, n_in, n_out = 25, 3, 70, 40
    colptr, rows, xvals = csc(mask((T * B, n_in), 0.1, gen), gen, torch.float64, valued)
    x = torch.zeros(T * B, n_in, dtype=torch.float64)
    col = torch.repeat_interleave(torch.arange(n_in), colptr[1:] - colptr[:-1])
    x[rows.long(), col] = xvals if xvals.numel() else 1.0
    rowptr, cols, eps_vals = csr(mask((T * B, n_out), 0.1, gen),
                                 randn((T * B, n_out), gen, torch.float64))
    dense = ops.dw_trace_dense(*[a.to(device) if isinstance(a, torch.Tensor) else a
                                             for a in (rowptr, cols, eps_vals, x, 0.9, T, B, n_out)])
    sparse = ops.dw_trace(*[a.to(device) if isinstance(a, torch.Tensor) else a
                            for a in (rowptr, cols, eps_vals, colptr, rows, xvals, 0.9, T, B, n_out)])
    assert torch.equal(dense, sparse)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("R,n_in,n_out", [(1, 1, 1), (3, 5, 7), (10, 33, 20), (50, 70, 40)])
@pytest.mark.parametrize("density", DENSITIES)
def test_dx_masked(device, gen, dtype, R, n_in, n_out, density):
    delta = randn((R, n_out), gen, dtype)
    weight_t = randn((n_in, n_out), gen, dtype)
    bits = ref.pack_bits(mask((R, n_in), density, gen))
    out, exp = run("dx_masked", device, delta, weight_t, bits)
    assert_sum(out, exp, ref.dx_masked(delta.abs(), weight_t.abs(), bits))


def test_linear_ops_non_contiguous_inputs(device, gen):
    delta = randn((30, 40), gen, torch.float64)[:, ::2]  # [30, 20], strided
    weight_t = randn((20, 25), gen, torch.float64).t()  # [25, 20], transposed
    bits = ref.pack_bits(mask((30, 25), 0.3, gen))
    out, exp = run("dx_masked", device, delta, weight_t, bits)
    assert_sum(out, exp, ref.dx_masked(delta.abs(), weight_t.abs(), bits))
    colptr, rows, xvals = csc(mask((30, 9), 0.3, gen), gen, torch.float64, True)
    out, exp = run("dw_spikes", device, delta, colptr, rows, xvals, 9)
    assert_sum(out, exp, ref.dw_spikes(delta.abs(), colptr, rows, xvals, 9))


# ------------------------------------------------------------------------ opcheck
def opcheck_cases(gen):
    """Representative ``(op, arguments)`` of every op (float64, CPU)."""
    f64 = torch.float64
    u = randn((6, 45), gen, f64, scale=0.5)
    _, bits, vals = ref.spike(u, ref.ATAN, 2.0, 0.3, 1.0)
    T, B, n_in, n_out = 6, 3, 20, 15
    colptr, rows, xvals = csc(mask((T * B, n_in), 0.2, gen), gen, f64, True)
    rowptr, cols, eps_vals = csr(mask((T * B, n_out), 0.2, gen), randn((T * B, n_out), gen, f64))
    beta, theta = lif_params(45, gen, f64)
    return {
        "spike": ("spike", (u.clone().requires_grad_(), ref.ATAN, 2.0, 0.3, 1.0)),
        "spike_dense": ("spike", (u.clone().requires_grad_(), ref.SIGMOID, 5.0, math.inf, 1.0)),
        "band_grad": ("band_grad", (randn((6, 45), gen, f64), bits, vals, ref.ATAN, 2.0, 1.0,
                                    False)),
        "band_grad_compact": ("band_grad", (randn((6, 45), gen, f64), bits, vals, ref.ATAN, 2.0,
                                            1.0, True)),
        "lif_fwd": ("lif_fwd", (u, randn(45, gen, f64), beta, theta, ref.SUBTRACT)),
        "lif_bwd": ("lif_bwd", (u, beta, ref.pack_bits(mask(6 * 45, 0.3, gen)), ref.ZERO)),
        "lif_bwd_band": ("lif_bwd_band", (randn((6, 45), gen, f64), bits, vals,
                                          randn((6, 45), gen, f64), randn(45, gen, f64), beta,
                                          ref.pack_bits(mask(6 * 45, 0.3, gen)), ref.ATAN, 2.0,
                                          1.0, ref.ZERO)),
        "dw_spikes": ("dw_spikes", (randn((T * B, n_out), gen, f64), colptr, rows, xvals, n_in)),
        "dw_trace": ("dw_trace", (rowptr, cols, eps_vals, colptr, rows, xvals, 0.9, T, B, n_out)),
        "dw_trace_dense": ("dw_trace_dense", (rowptr, cols, eps_vals, randn((T * B, n_in), gen, f64),
                                              0.9, T, B, n_out)),
        "dx_masked": ("dx_masked", (randn((T * B, n_out), gen, f64), randn((n_in, n_out), gen, f64),
                                    ref.pack_bits(mask((T * B, n_in), 0.2, gen)))),
    }


@pytest.mark.parametrize("case", ["spike", "spike_dense", "band_grad", "band_grad_compact",
                                  "lif_fwd", "lif_bwd", "lif_bwd_band", "dw_spikes", "dw_trace",
                                  "dw_trace_dense", "dx_masked"])
def test_opcheck(device, gen, case):
    op, args = opcheck_cases(gen)[case]
    args = tuple(a.detach().to(device).requires_grad_(a.requires_grad)
                 if isinstance(a, torch.Tensor) else a for a in args)
    # All default sub-tests, including spike's data-dependent output size (its fake
    # tensor allocates vals with a dynamic size) under fake tensors and AOT dispatch.
    torch.library.opcheck(getattr(ops, op), args)


# ------------------------------------------------------------------------- errors
#: Marks a bad call whose fault lies in the values of an index or a count (not a shape or
#: a dtype): see test_cuda_skips_entries_out_of_range.
VALUES = "values"


def bad_call_cases():
    f64, i32 = torch.float64, torch.int32
    cur, v = torch.zeros(4, 5, dtype=f64), torch.zeros(5, dtype=f64)
    colptr, rows = torch.tensor([0, 1, 2], dtype=torch.int64), torch.tensor([0, 3], dtype=i32)
    e = torch.empty(0, dtype=f64)
    return [
        ("spike", (torch.zeros(5, dtype=i32), 0, 2.0, 0.2, 1.0), "u"),
        ("spike", (v, 7, 2.0, 0.2, 1.0), "shape"),
        ("band_grad", (v, torch.zeros(1, dtype=i32), torch.zeros(2, dtype=f64), 0, 2.0, 1.0,
                       True), "vals", VALUES),
        ("band_grad", (v, torch.zeros(1, dtype=torch.int64), e, 0, 2.0, 1.0, True), "bits"),
        ("band_grad", (v, torch.zeros(3, dtype=i32), e, 0, 2.0, 1.0, True), "bits"),
        ("band_grad", (v, e.int(), torch.zeros(4, dtype=f64), 0, 2.0, 1.0, True), "vals"),
        ("lif_fwd", (cur.int(), v, v, v, 0), "cur"),
        ("lif_fwd", (cur, torch.zeros(4, dtype=f64), v, v, 0), "mem0"),
        ("lif_fwd", (cur, v, v.float(), v, 0), "beta"),
        ("lif_fwd", (cur, v, v, v, 3), "reset"),
        ("lif_bwd", (cur, v, torch.zeros(0, dtype=i32), ref.ZERO), "rbits"),
        ("lif_bwd", (cur, v, torch.zeros(1, dtype=torch.int64), ref.ZERO), "rbits"),
        ("lif_bwd", (cur, torch.zeros(6, dtype=f64), e.int(), ref.NONE), "beta"),
        ("lif_bwd_band", (cur.int(), e.int(), torch.zeros(20, dtype=f64), None, None, v, e.int(),
                          0, 2.0, 1.0, 0), "grad_spk"),
        ("lif_bwd_band", (cur, e.int(), torch.zeros(19, dtype=f64), None, None, v, e.int(), 0, 2.0,
                          1.0, 0), "vals"),
        ("lif_bwd_band", (cur, torch.zeros(2, dtype=i32), e, None, None, v, e.int(), 0, 2.0, 1.0,
                          0), "bits"),
        ("lif_bwd_band", (cur, e.int(), torch.zeros(20, dtype=f64), cur[:3], None, v, e.int(), 0,
                          2.0, 1.0, 0), "grad_mem"),
        ("lif_bwd_band", (cur, e.int(), torch.zeros(20, dtype=f64), cur.float(), None, v, e.int(),
                          0, 2.0, 1.0, 0), "grad_mem"),
        ("lif_bwd_band", (None, e.int(), e, None, None, v, e.int(), 0, 2.0, 1.0, 0),
         "grad_spk` or `grad_mem"),
        ("lif_bwd_band", (None, e.int(), e, cur.int(), None, v, e.int(), 0, 2.0, 1.0, 0),
         "grad_mem"),
        ("lif_bwd_band", (cur, e.int(), torch.zeros(20, dtype=f64), None, v[:4], v, e.int(), 0,
                          2.0, 1.0, 0), "dmem_last"),
        ("lif_bwd_band", (cur, e.int(), torch.zeros(20, dtype=f64), None, None, v.float(), e.int(),
                          0, 2.0, 1.0, 0), "beta"),
        ("lif_bwd_band", (cur, e.int(), torch.zeros(20, dtype=f64), None, None, v, e.int(), 0, 2.0,
                          1.0, ref.ZERO), "rbits"),
        ("dw_spikes", (cur, colptr, rows.long(), e, 2), "rows"),
        ("dw_spikes", (cur, colptr.int(), rows, e, 2), "colptr"),
        ("dw_spikes", (cur, colptr, rows, e, 3), "colptr"),
        ("dw_spikes", (cur, colptr, rows + 1, e, 2), "rows", VALUES),
        ("dw_spikes", (cur, colptr, rows, torch.zeros(3, dtype=f64), 2), "xvals"),
        ("dw_spikes", (cur, colptr, rows, torch.zeros(2, dtype=torch.float32), 2), "xvals"),
        # T = 1, B = 2: rowptr [0, 1, 2] is a valid CSR for cols [0, 3] when n_out > 3
        ("dw_trace", (colptr, rows, torch.zeros(2, dtype=f64), colptr.int(), rows, e, 0.9, 1, 2, 5),
         "colptr"),
        ("dw_trace", (colptr, rows, torch.zeros(2, dtype=f64), colptr, rows, e, 0.9, 1, 2, 3),
         "cols", VALUES),
        ("dw_trace", (colptr, rows, torch.zeros(3, dtype=f64), colptr, rows, e, 0.9, 1, 2, 5),
         "eps_vals"),
        ("dw_trace", (colptr, rows, torch.zeros(2, dtype=f64), colptr, rows, e, 0.9, 3, 2, 5),
         "rowptr"),
        ("dw_trace", (colptr, rows, torch.zeros(2, dtype=f64), colptr, rows, e, 0.9, 1, 2, 5),
         "rows", VALUES),  # rows must lie in [0, T*B)
        ("dw_trace_dense", (colptr, rows, torch.zeros(2, dtype=f64), cur[:1], 0.9, 1, 2, 5), "x"),
        ("dw_trace_dense", (colptr, rows, torch.zeros(2, dtype=f64), cur[:2].float(), 0.9, 1, 2,
                            5), "x"),
        ("dw_trace_dense", (colptr, rows, torch.zeros(2, dtype=f64), cur[:2], 0.9, 1, 2, 3),
         "cols", VALUES),
        ("dw_trace_dense", (colptr, rows, torch.zeros(3, dtype=f64), cur[:2], 0.9, 1, 2, 5),
         "eps_vals"),
        ("dx_masked", (cur, torch.zeros(3, 5, dtype=f64), torch.zeros(2, dtype=i32)), "bits"),
        ("dx_masked", (cur, torch.zeros(3, 4, dtype=f64), torch.zeros(1, dtype=i32)), "weight_t"),
        ("dx_masked", (cur, torch.zeros(3, 5, dtype=torch.float32), torch.zeros(1, dtype=i32)),
         "weight_t"),
    ]


@pytest.mark.parametrize("case", range(len(bad_call_cases())))
def test_bad_arguments_name_the_argument(device, case):
    op, args, name, *values = bad_call_cases()[case]
    if values and device == "cuda":
        pytest.skip("an index's or a count's value: the CUDA kernels skip such entries "
                    "(test_cuda_skips_entries_out_of_range)")
    args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    with pytest.raises(RuntimeError, match=f"`{name}`"):
        getattr(ops, op)(*args)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("case", [i for i, c in enumerate(bad_call_cases()) if VALUES in c])
def test_cuda_skips_entries_out_of_range(case):
    """The CPU kernels refuse an index out of range or a band count that does not match (the
    cases above); reading those values on the host would synchronise the GPU, so the CUDA
    kernels bound every index on the device and skip what lies outside: no fault, and the
    result is that of the entries in range — all zero here, as every case's other inputs
    are zeros (a read out of bounds would show as a fault or as garbage)."""
    op, args, name, _ = bad_call_cases()[case]
    out = getattr(ops, op)(*(a.cuda() if isinstance(a, torch.Tensor) else a for a in args))
    torch.cuda.synchronize()  # a fault inside the kernel would surface here
    assert out.is_cuda and not out.cpu().any(), out
    assert op != "band_grad" or out.shape == (2,), out.shape  # compact: one per value given


@pytest.mark.parametrize("b_th", [0.0, -0.2, math.nan, -math.inf])
def test_spike_refuses_a_bad_band(device, b_th):
    """An empty (0, negative, NaN) or negative-infinite band is refused, as by every other
    entry point (+inf is the dense surrogate)."""
    u = torch.zeros(5, dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match="`b_th` must be > 0"):
        ops.spike(u, ref.ATAN, 2.0, b_th, 1.0)
    with pytest.raises(ValueError, match="`b_th` must be > 0"):
        ref.spike(u, ref.ATAN, 2.0, b_th, 1.0)


def test_dw_trace_needs_sorted_rows():
    """The trace walk advances one pointer per column with t; unsorted rows are refused."""
    colptr = torch.tensor([0, 2], dtype=torch.int64)
    rows = torch.tensor([3, 1], dtype=torch.int32)
    rowptr = torch.tensor([0, 0, 0, 0, 1], dtype=torch.int64)
    with pytest.raises(RuntimeError, match="`rows` must be strictly increasing"):
        ops.dw_trace(rowptr, torch.zeros(1, dtype=torch.int32), torch.ones(1, dtype=torch.float64),
                     colptr, rows, torch.empty(0, dtype=torch.float64), 0.9, 4, 1, 1)


# ------------------------------------------------- sizes: overflow and empty work
def _empty_csc(n, device):
    return (torch.zeros(n + 1, dtype=torch.int64, device=device),
            torch.zeros(0, dtype=torch.int32, device=device))


def test_dw_trace_refuses_overflowing_sizes(device):
    """T·B beyond int64 is an error before anything is allocated or indexed."""
    rowptr, cols = _empty_csc(0, device)
    colptr, rows = _empty_csc(3, device)
    e = torch.zeros(0, dtype=torch.float64, device=device)
    with pytest.raises(RuntimeError, match="T\\*B .* overflows int64"):
        ops.dw_trace(rowptr, cols, e, colptr, rows, e, 0.9, 2**62, 8, 4)


def test_dw_spikes_refuses_overflowing_n_in(device):
    colptr, rows = _empty_csc(2, device)
    delta = torch.zeros(3, 4, dtype=torch.float64, device=device)
    with pytest.raises(RuntimeError, match="overflows int64"):
        ops.dw_spikes(delta, colptr, rows, delta.new_empty(0), 2**63 - 1)


@pytest.mark.parametrize("T,B", [(2**40, 0), (0, 2**40)])
def test_dw_trace_without_rows_returns_zeros_at_once(device, T, B):
    """No sample-steps (T·B = 0) is no work, however large the other factor: zeros, no loop."""
    rowptr, cols = _empty_csc(0, device)
    colptr, rows = _empty_csc(3, device)
    e = torch.zeros(0, dtype=torch.float64, device=device)
    out = ops.dw_trace(rowptr, cols, e, colptr, rows, e, 0.9, T, B, 5)
    assert out.shape == (3, 5) and out.dtype == torch.float64 and not out.any()


def test_dw_spikes_without_outputs_returns_at_once(device):
    """A zero-width delta ([R, 0], no memory however large R) is no work: no walk over R."""
    colptr, rows = _empty_csc(3, device)
    delta = torch.empty(2**60, 0, dtype=torch.float64, device=device)
    out = ops.dw_spikes(delta, colptr, rows, delta.new_empty(0), 3)
    assert out.shape == (3, 0)
