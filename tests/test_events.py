"""Event-driven forward of the fully connected currents (``linear_fwd_events``) against
``reference.py`` / ``X·Wᵀ + b``, and its use by ``SpikingLinear``'s sparse mode; the
one-pass forward and backward of a hidden layer (``linear_lif_events``,
``linear_lif_bwd``) against the reference and the ops they fuse.

The kernel adds its terms in another order than a GEMM: each output is held to
``|out − exp| ≤ tol·Σ|terms|`` (tol 1e-12 in float64, 1e-5 in float32); with spikes and
weights on a dyadic grid every sum is exact, so the layer's outputs equal the dense mode's
bit for bit.
"""

import math

import pytest
import torch

from snntorch_sparse import _fused, _ops
from snntorch_sparse import reference as R
from snntorch_sparse.spiking_linear import SpikingLinear

ops = _ops.ops
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def _compact(x, device):
    """``x``'s compact form (reference.nonzero_csc) on ``device``."""
    return tuple(t.to(device) for t in R.nonzero_csc(x, 1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.2, 1.0])
@pytest.mark.parametrize("shape", [(1, 7, 3), (37, 50, 20), (64, 300, 130), (700, 40, 300)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("graded", [False, True])
def test_linear_fwd_events(device, gen, dtype, density, shape, bias, graded):
    rows, n_in, n_out = shape
    x = (torch.rand(rows, n_in, generator=gen) < density).double()
    if graded:
        x = x * (torch.rand(rows, n_in, generator=gen, dtype=torch.float64) + 0.5)
    w = torch.randn(n_out, n_in, generator=gen, dtype=torch.float64)
    b = torch.randn(n_out, generator=gen, dtype=torch.float64) if bias else None
    x, w = x.to(dtype), w.to(dtype)
    b = None if b is None else b.to(dtype)
    colptr, rws, xvals = _compact(x, device)
    assert (xvals.numel() == 0) == (not graded or not x.any())
    args = (colptr, rws, xvals, w.t().contiguous().to(device), None if b is None else b.to(device),
            rows)
    before = [a.clone() for a in args[:5] if a is not None]
    out = ops.linear_fwd_events(*args).cpu()
    assert all(torch.equal(a, c) for a, c in zip([a for a in args[:5] if a is not None], before))
    want = R.linear_fwd_events(*[a.cpu() if isinstance(a, torch.Tensor) else a for a in args])
    assert torch.equal(R.csc_dense(colptr.cpu(), rws.cpu(), xvals.cpu(), rows, dtype), x)
    magnitude = x.abs() @ w.abs().t()
    assert out.dtype == dtype and out.shape == (rows, n_out)
    assert ((out - want).abs() <= TOL[dtype] * magnitude).all()
    if density == 0.0:
        assert torch.equal(out, torch.zeros_like(out) + (0 if b is None else b))
    if device == "cpu":  # each row's sum in the order of a walk along it, as a dense loop
        loop = torch.zeros(rows, n_out, dtype=dtype) + (0 if b is None else b)
        for r, i in (x != 0).nonzero().tolist():
            loop[r] += x[r, i] * w[:, i]
        assert torch.equal(out, loop)


def test_linear_fwd_events_opcheck(device, gen):
    x = (torch.rand(9, 12, generator=gen) < 0.3).double()
    wt = torch.randn(12, 5, generator=gen, dtype=torch.float64).to(device)
    b = torch.randn(5, generator=gen, dtype=torch.float64).to(device)
    for xin in (x, x * 0.5):
        torch.library.opcheck(ops.linear_fwd_events, (*_compact(xin, device), wt, b, 9))
        torch.library.opcheck(ops.linear_fwd_events, (*_compact(xin, device), wt, None, 9))


_CP, _ROWS, _ONES = torch.tensor([0, 1, 1, 2]), torch.tensor([2, 0], dtype=torch.int32), torch.zeros(0)


@pytest.mark.parametrize("args, match", [
    ((_CP, _ROWS, _ONES, torch.zeros(3), None, 4), "`weight_t` must be 2-D"),
    ((_CP, _ROWS, _ONES, torch.zeros(2, 2), None, 4), "`colptr` must have 3 entries"),
    ((_CP, _ROWS, torch.zeros(0, dtype=torch.float64), torch.zeros(3, 2), None, 4),
     "`xvals` must have the dtype"),
    ((_CP, _ROWS, torch.zeros(3), torch.zeros(3, 2), None, 4), "`xvals` must be empty"),
    ((_CP, _ROWS, _ONES, torch.zeros(3, 2), torch.zeros(3), 4), "`bias` must be"),
    ((_CP, _ROWS, _ONES, torch.zeros(3, 2, dtype=torch.int64), None, 4), "`weight_t`"),
    ((_CP, _ROWS, _ONES, torch.zeros(3, 2), None, 2), "`rows` must lie in"),
    ((_CP, _ROWS, _ONES, torch.zeros(3, 2), None, -1), "`R`"),
    ((_CP.int(), _ROWS, _ONES, torch.zeros(3, 2), None, 4), "`colptr` must be"),
    ((torch.tensor([0, 2, 2, 2]), _ROWS, _ONES, torch.zeros(3, 2), None, 4),
     "`rows` must ascend within each column"),
])
def test_linear_fwd_events_bad_arguments(args, match):
    with pytest.raises(RuntimeError, match=match):
        ops.linear_fwd_events(*args)


def _grid(t, step=2**-10):
    return torch.round(t / step) * step


@pytest.mark.parametrize("n_out, rate", [(10, 0.01), (10, 0.2), (80, 0.04), (80, 0.15), (80, 0.3)])
@pytest.mark.parametrize("bias", [False, True])
def test_spiking_linear_uses_events_on_sparse_input(gen, n_out, rate, bias):
    """Sparse mode on the CPU: the event-driven forward when the input is sparse enough for
    the layer's width (``_fused.event_max_density``), the GEMM otherwise; the outputs are
    the dense mode's, bit for bit."""
    dt = torch.float64
    layers = {b: SpikingLinear(40, n_out, beta=0.875, bias=bias, backward=b, b_th=0.3, dtype=dt)
              for b in ("sparse", "dense")}
    with torch.no_grad():
        w = _grid(torch.randn(n_out, 40, generator=gen, dtype=dt) * 0.4 + 0.3)
        b = _grid(torch.randn(n_out, generator=gen, dtype=dt) * 0.1)
        for layer in layers.values():
            layer.weight.copy_(w)
            if bias:
                layer.bias.copy_(b)
    x = (torch.rand(30, 4, 40, generator=gen) < rate).to(dt)
    outs = {b: layer(x) for b, layer in layers.items()}
    density = (x != 0).double().mean().item()
    events = density <= _fused.event_max_density(n_out)
    assert layers["sparse"]._report["fwd"] == ("events" if events else "dense")
    assert layers["dense"]._report["fwd"] == "dense"
    assert torch.equal(outs["sparse"], outs["dense"]) and outs["dense"].any()
    with torch.no_grad():  # no graph: compacted for the forward alone, if that pays
        again = layers["sparse"](x)
    assert torch.equal(again, outs["sparse"])
    events = density <= _fused.event_max_density(n_out, compacted=False)
    assert layers["sparse"]._report["fwd"] == ("events" if events else "dense")
    assert math.isfinite(outs["sparse"].sum().item())


# ------------------------------------------------------------------ linear_lif_events
def _lif_events_args(gen, dtype, T, B, n_in, n_out, density, graded, bias, reset, gamma):
    """Arguments of ``linear_lif_events`` on a dyadic grid (every current sums exactly, so
    the reference's GEMM and the kernel's event walk agree bit for bit)."""
    x = (torch.rand(T * B, n_in, generator=gen) < density).double()
    if graded:
        x = x * _grid(torch.rand(T * B, n_in, generator=gen, dtype=torch.float64) + 0.5, 2**-3)
    w = _grid(torch.randn(n_out, n_in, generator=gen, dtype=torch.float64) * 0.6)
    b = _grid(torch.randn(n_out, generator=gen, dtype=torch.float64) * 0.2) if bias else None
    M = B * n_out
    mem0 = _grid(torch.randn(M, generator=gen, dtype=torch.float64) * 0.5)
    beta = _grid(torch.rand(M, generator=gen, dtype=torch.float64), 2**-4)
    theta = _grid(torch.rand(M, generator=gen, dtype=torch.float64) * 0.5 + 0.5, 2**-4)
    colptr, rws, xvals = R.nonzero_csc(x.to(dtype), 1.0)
    return (colptr, rws, xvals, w.t().contiguous().to(dtype), None if b is None else b.to(dtype),
            mem0.to(dtype), beta.to(dtype), theta.to(dtype), T * B, reset, 0.25, gamma, 0.25)


def _unfused(colptr, rws, xvals, wt, b, mem0, beta, theta, rows, reset, b_th, gamma, density):
    """The ops that ``linear_lif_events`` fuses, in turn."""
    cur = ops.linear_fwd_events(colptr, rws, xvals, wt, b, rows).view(-1, mem0.numel())
    mem = ops.lif_fwd(cur, mem0, beta, theta, reset)
    spk, bits, vals = ops.spike(mem - theta, R.ATAN, 2.0, b_th, gamma)
    spk = spk.view(rows, -1)
    return (spk, bits, vals, mem[-1], *ops.nonzero_csc(spk, density))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 3, 1), (9, 3, 40, 37), (30, 4, 120, 64), (6, 2, 20, 200)])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.4])
@pytest.mark.parametrize("reset", [R.SUBTRACT, R.ZERO, R.NONE])
@pytest.mark.parametrize("variant", ["binary", "graded+bias", "gamma0.5", "gamma0"])
def test_linear_lif_events(gen, dtype, shape, density, reset, variant):
    """Equal, bit for bit, to the reference and to the ops it fuses; nothing mutated."""
    gamma = {"gamma0.5": 0.5, "gamma0": 0.0}.get(variant, 1.0)
    args = _lif_events_args(gen, dtype, *shape, density, variant == "graded+bias",
                            variant == "graded+bias", reset, gamma)
    before = [a.clone() for a in args if isinstance(a, torch.Tensor)]
    out = ops.linear_lif_events(*args)
    assert all(torch.equal(a, c) for a, c in
               zip([a for a in args if isinstance(a, torch.Tensor)], before))
    for want in (R.linear_lif_events(*args), _unfused(*args)):
        for got, exp in zip(out, want):
            assert got.dtype == exp.dtype and torch.equal(got, exp)
    spk, bits, vals, last, colptr, rws, xvals = out
    if density > 0 and gamma != 0 and spk.numel() > 100:
        assert spk.any() and vals.numel() > 0  # the case exercises spikes and a band
    if colptr.numel():
        assert torch.equal(R.csc_dense(colptr, rws, xvals, spk.shape[0], dtype), spk)
    else:  # too dense to list
        assert (spk != 0).double().mean() > 0.25


def _with_threads(n, op, args):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(n)
        return op(*args)
    finally:
        torch.set_num_threads(threads)


def _one_thread(op, args):
    return _with_threads(1, op, args)


def test_linear_lif_events_thread_count_and_density_limit(gen):
    """The threads' tiles (batch entries, then columns: 2 threads over B = 8, 4 over 3,
    8 over 3 (3 x 2 tiles), 3 over 1 (columns only)) do not change any result; spikes
    denser than ``max_density`` give no compact form (as ``nonzero_csc``)."""
    for threads, B in ((2, 8), (4, 3), (8, 3), (3, 1)):
        args = _lif_events_args(gen, torch.float32, 40, B, 50, 96, 0.3, False, True,
                                R.SUBTRACT, 1.0)[:-1] + (1.0,)  # every spike listed
        one = _one_thread(ops.linear_lif_events, args)
        out = _with_threads(threads, ops.linear_lif_events, args)
        assert (out[0] != 0).any() and out[2].numel() > 0 and out[4].numel() > 0
        assert all(torch.equal(a, b) for a, b in zip(one, out))
    rate = (out[0] != 0).double().mean().item()
    assert 0 < rate < 1
    dense = ops.linear_lif_events(*args[:-1], rate / 2)
    assert all(t.numel() == 0 for t in dense[4:])
    assert all(torch.equal(a, b) for a, b in zip(dense[:4], out[:4]))


def test_linear_lif_events_opcheck(gen):
    for variant in (False, True):
        args = _lif_events_args(gen, torch.float64, 7, 3, 12, 20, 0.3, variant, variant,
                                R.SUBTRACT, 1.0)
        torch.library.opcheck(ops.linear_lif_events, args)


def _lif_bad(**change):
    a = dict(colptr=_CP, rows=_ROWS, xvals=_ONES, weight_t=torch.zeros(3, 2), bias=None,
             mem0=torch.zeros(4), beta=torch.zeros(4), theta=torch.ones(4), R=4, reset=0,
             b_th=0.2, gamma=1.0, max_density=0.25)
    a.update(change)
    return tuple(a.values())


@pytest.mark.parametrize("args, match", [
    (_lif_bad(mem0=torch.zeros(3)), "`mem0` must be \\[B \\* n_out\\]"),
    (_lif_bad(R=5), "`R` \\(5\\) must be a whole number"),
    (_lif_bad(R=2, colptr=torch.tensor([0, 2, 2, 2]), rows=torch.tensor([1, 0], dtype=torch.int32)),
     "`rows` must ascend"),
    (_lif_bad(beta=torch.zeros(4, dtype=torch.float64)), "`beta` must have the dtype"),
    (_lif_bad(theta=torch.ones(2)), "`theta` must have shape \\[M\\] = \\[4\\]"),
    (_lif_bad(b_th=math.inf), "`b_th` must be finite"),
    (_lif_bad(b_th=0.0), "b_th"),
    (_lif_bad(reset=5), "`reset` must be"),
    (_lif_bad(weight_t=torch.zeros(3, 0)), "at least one output column"),
    (_lif_bad(bias=torch.zeros(3)), "`bias` must be"),
    (_lif_bad(xvals=torch.zeros(5)), "`xvals` must be empty"),
])
def test_linear_lif_events_bad_arguments(args, match):
    with pytest.raises((RuntimeError, ValueError), match=match):
        ops.linear_lif_events(*args)


def test_hidden_layers_pass_their_spikes_compact(gen):
    """A sparse hidden layer runs as one op and records its spikes' compact form on its
    output, which the next layer uses instead of compacting them again; outputs equal the
    dense mode's bit for bit, gradients the reference's. An in-place change of the spikes
    or a chunked sequence leaves no record."""
    dt = torch.float64
    nets = {mode: [SpikingLinear(30, 64, beta=0.875, bias=True, backward=mode, b_th=0.3,
                                 dtype=dt),
                   SpikingLinear(64, 64, beta=0.75, bias=True, backward=mode, b_th=0.3,
                                 dtype=dt)] for mode in ("sparse", "dense")}
    with torch.no_grad():
        for i, (n_in, n_out) in enumerate([(30, 64), (64, 64)]):
            w = _grid(torch.randn(n_out, n_in, generator=gen, dtype=dt) * 0.4 + 0.05)
            b = _grid(torch.randn(n_out, generator=gen, dtype=dt) * 0.1)
            for mode in nets:
                nets[mode][i].weight.copy_(w)
                nets[mode][i].bias.copy_(b)
    x = (torch.rand(50, 4, 30, generator=gen) < 0.08).to(dt)
    l1, l2 = nets["sparse"]
    h = l1(x)
    assert _fused.events_of(h) is not None and _fused.band_of(h) is not None
    colptr, rws, xvals = _fused.events_of(h)[0]
    assert torch.equal(R.csc_dense(colptr, rws, xvals, 200, dt), h.reshape(200, 64))
    assert 0 < (h != 0).double().mean() <= _fused.COMPACT_INPUT_MAX_DENSITY
    out = l2(h)
    assert l2._report["fwd"] == "events"
    assert torch.equal(out, nets["dense"][1](nets["dense"][0](x))) and out.any()
    params = [*l1.parameters(), *l2.parameters()]
    got = torch.autograd.grad(out.sum(), params)
    ref = x
    for layer in (l1, l2):
        ref = R.spiking_linear(ref, layer.weight, layer.bias, layer.beta, layer.threshold,
                               b_th=0.3)
    want = torch.autograd.grad(ref.sum(), params)
    assert l1._report["bwd"] == l2._report["bwd"] == "one pass"
    for a, b in zip(got, want):  # sums in another order
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert b.any()

    with torch.no_grad():  # inference compacts for the forward alone, and records it
        h = l1(x)
        assert _fused.events_of(h) is not None
        h.mul_(1)
    assert _fused.events_of(h) is None
    l1.time_chunk = 32  # two chunks: per-chunk lists are not recorded
    assert _fused.events_of(l1(x)) is None and l1._report["chunks"] == 2


def test_chunked_hidden_layer_runs_each_chunk_as_one_op(gen):
    """With time chunks the backward runs each chunk as one op, carrying the gradient
    from chunk to chunk: the gradients equal the unchunked layer's (∂X bit for bit)."""
    dt = torch.float64
    layer = SpikingLinear(30, 64, beta=0.875, bias=True, b_th=0.3, dtype=dt, time_chunk=None)
    with torch.no_grad():
        layer.weight.copy_(_grid(torch.randn(64, 30, generator=gen, dtype=dt) * 0.4 + 0.05))
    x = (torch.rand(50, 4, 30, generator=gen) < 0.08).to(dt)
    up = _fused.pack_bits(torch.rand(x.shape, generator=gen) < 0.1)
    g = torch.randn(50, 4, 64, generator=gen, dtype=dt)
    grads = {}
    for chunk in (None, 16):
        layer.time_chunk = chunk
        xin = _fused.tag_band(x.clone().requires_grad_(), up)
        out = layer(xin)
        grads[chunk] = torch.autograd.grad(out, [xin, layer.weight, layer.bias], g)
        assert layer._report["bwd"] == "one pass" and layer._report["dx_masked"]
    assert layer._report["chunks"] == 4
    assert torch.equal(grads[None][0], grads[16][0]) and grads[None][0].any()
    for a, b in zip(grads[None][1:], grads[16][1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------- linear_lif_bwd
def _lif_bwd_args(gen, dtype, T, B, n_in, n_out, graded, shape, need_x, need_b, carry=False,
                  density=0.1):
    R_ = T * B
    x = (torch.rand(R_, n_in, generator=gen) < density).double()
    if graded:
        x = x * (torch.rand(R_, n_in, generator=gen, dtype=torch.float64) + 0.5)
    colptr, rws, xvals = R.nonzero_csc(x.to(dtype), 1.0)
    u = torch.randn(T, B * n_out, generator=gen, dtype=torch.float64) * 0.3
    _, bits, vals = R.spike(u.to(dtype), shape, 2.0, 0.2, 0.75)
    grad = torch.randn(T, B * n_out, generator=gen, dtype=torch.float64).to(dtype)
    beta = torch.rand(B * n_out, generator=gen, dtype=torch.float64).to(dtype)
    wt = torch.randn(n_in, n_out, generator=gen, dtype=torch.float64).to(dtype)
    up = R.pack_bits(torch.rand(R_ * n_in, generator=gen) < 0.05)
    dmem_last = (torch.randn(B * n_out, generator=gen, dtype=torch.float64).to(dtype) if carry
                 else None)
    return (grad, bits, vals, dmem_last, beta, colptr, rws, xvals, wt, up, shape, 2.0, 0.75,
            need_x, need_b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 3, 1), (9, 3, 40, 37), (30, 4, 120, 64), (6, 2, 20, 200)])
@pytest.mark.parametrize("surrogate", [R.FAST_SIGMOID, R.ATAN, R.SIGMOID])
@pytest.mark.parametrize("need", ["x+b", "w only", "graded x", "x+b, carried"])
def test_linear_lif_bwd(gen, dtype, shape, surrogate, need):
    """Equal to the reference (∂W and ∂b summed in another order: to rounding) and, bit
    for bit, to the input and initial-membrane gradients of the ops it fuses."""
    args = _lif_bwd_args(gen, dtype, *shape, need == "graded x", surrogate, need != "w only",
                         need.startswith("x+b"), carry=need.endswith("carried"))
    before = [a.clone() for a in args if isinstance(a, torch.Tensor)]
    out = ops.linear_lif_bwd(*args)
    assert all(torch.equal(a, c) for a, c in
               zip([a for a in args if isinstance(a, torch.Tensor)], before))
    want = R.linear_lif_bwd(*args)
    tol = TOL[dtype] * 10
    for got, exp in zip(out, want):
        assert got.dtype == exp.dtype and got.shape == exp.shape
        torch.testing.assert_close(got, exp, rtol=tol, atol=tol)
    grad, bits, vals, carry, beta, *_, wt, up, s, p, gamma, need_x, _ = args
    delta, dmem0 = ops.lif_bwd_band(grad, bits, vals, None, carry, beta,
                                    _fused._empty_bits("cpu"), s, p, gamma, R.SUBTRACT)
    assert torch.equal(out[3], dmem0)
    if need_x:
        assert torch.equal(out[2], ops.dx_masked(delta.view(-1, wt.shape[1]), wt, up))
    if grad.numel() > 100:  # the case exercises the band and the input's nonzeros
        assert out[0].any() and vals.numel() > 0
    if carry is not None:  # the carry reaches the result
        no_carry = ops.linear_lif_bwd(*args[:3], None, *args[4:])
        assert not torch.equal(no_carry[3], out[3])


@pytest.mark.parametrize("graded", [False, True])
def test_linear_lif_bwd_many_row_blocks(gen, graded):
    """An input of 150 nonzeros per row over 1000 rows: the input is turned to rows in
    several blocks (of 256 rows or more), in parallel; results as for one block."""
    args = _lif_bwd_args(gen, torch.float64, 50, 20, 1500, 8, graded, R.ATAN, True, True,
                         density=0.1)
    out = ops.linear_lif_bwd(*args)
    for got, exp in zip(out, R.linear_lif_bwd(*args)):
        torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-10)
    for a, b in zip(_one_thread(ops.linear_lif_bwd, args), out):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_linear_lif_bwd_thread_count(gen):
    args = _lif_bwd_args(gen, torch.float64, 20, 8, 50, 96, True, R.ATAN, True, True)
    one = _one_thread(ops.linear_lif_bwd, args)
    for a, b in zip(one, ops.linear_lif_bwd(*args)):  # ∂W/∂b: per-thread partial sums
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_linear_lif_bwd_opcheck(gen):
    for graded in (False, True):
        args = _lif_bwd_args(gen, torch.float64, 7, 3, 12, 20, graded, R.ATAN, True, True)
        torch.library.opcheck(ops.linear_lif_bwd, args)


def _bwd_bad(**change):
    a = dict(grad_spk=torch.zeros(2, 4), bits=torch.zeros(1, dtype=torch.int32),
             vals=torch.zeros(0), dmem_last=None, beta=torch.zeros(4), colptr=_CP, rows=_ROWS, xvals=_ONES,
             weight_t=torch.zeros(3, 2), up_bits=torch.zeros(1, dtype=torch.int32), shape=1,
             p=2.0, gamma=1.0, need_x=True, need_b=True)
    a.update(change)
    return tuple(a.values())


@pytest.mark.parametrize("args, match", [
    (_bwd_bad(grad_spk=torch.zeros(2, 3), bits=torch.zeros(1, dtype=torch.int32)),
     "M = B \\* n_out"),
    (_bwd_bad(beta=torch.zeros(3)), "`beta` must have shape"),
    (_bwd_bad(weight_t=torch.zeros(3, 2, dtype=torch.float64)), "`weight_t` must have the dtype"),
    (_bwd_bad(up_bits=torch.zeros(3, dtype=torch.int32)), "`up_bits` must have ceil"),
    (_bwd_bad(bits=torch.zeros(0, dtype=torch.int32), vals=torch.zeros(8)), "`bits` must hold"),
    (_bwd_bad(vals=torch.zeros(2)), "`vals` must have one entry per set bit"),
    (_bwd_bad(rows=torch.tensor([9, 0], dtype=torch.int32)), "`rows` must lie in"),
    (_bwd_bad(dmem_last=torch.zeros(3)), "`dmem_last` must have shape"),
    (_bwd_bad(colptr=torch.tensor([0, 2, 2, 2]), rows=torch.tensor([1, 0], dtype=torch.int32)),
     "`rows` must ascend within each column"),
])
def test_linear_lif_bwd_bad_arguments(args, match):
    with pytest.raises(RuntimeError, match=match):
        ops.linear_lif_bwd(*args)
