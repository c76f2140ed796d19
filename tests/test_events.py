"""Event-driven forward of the fully connected currents (``linear_fwd_events``) against
``reference.py`` / ``X·Wᵀ + b``, and its use by ``SpikingLinear``'s sparse mode.

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
