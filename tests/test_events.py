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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.2, 1.0])
@pytest.mark.parametrize("shape", [(1, 7, 3), (37, 50, 20), (64, 300, 130)])
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
    args = (x.to(device), w.t().contiguous().to(device), None if b is None else b.to(device))
    before = [a.clone() for a in args if a is not None]
    out = ops.linear_fwd_events(*args).cpu()
    assert all(torch.equal(a, c) for a, c in zip([a for a in args if a is not None], before))
    want = R.linear_fwd_events(x, w.t(), b)
    magnitude = x.abs() @ w.abs().t()
    assert out.dtype == dtype and out.shape == (rows, n_out)
    assert ((out - want).abs() <= TOL[dtype] * magnitude).all()
    if density == 0.0:
        assert torch.equal(out, torch.zeros_like(out) + (0 if b is None else b))


def test_linear_fwd_events_opcheck(device, gen):
    x = (torch.rand(9, 12, generator=gen) < 0.3).double().to(device)
    wt = torch.randn(12, 5, generator=gen, dtype=torch.float64).to(device)
    b = torch.randn(5, generator=gen, dtype=torch.float64).to(device)
    torch.library.opcheck(ops.linear_fwd_events, (x, wt, b))
    torch.library.opcheck(ops.linear_fwd_events, (x, wt, None))


@pytest.mark.parametrize("args, match", [
    ((torch.zeros(3), torch.zeros(3, 2), None), "`x` must be 2-D"),
    ((torch.zeros(4, 3), torch.zeros(2, 2), None), "`weight_t` must be"),
    ((torch.zeros(4, 3), torch.zeros(3, 2, dtype=torch.float64), None), "`weight_t` must have the dtype"),
    ((torch.zeros(4, 3), torch.zeros(3, 2), torch.zeros(3)), "`bias` must be"),
    ((torch.zeros(4, 3, dtype=torch.int64), torch.zeros(3, 2), None), "`x`"),
])
def test_linear_fwd_events_bad_arguments(args, match):
    with pytest.raises(RuntimeError, match=match):
        ops.linear_fwd_events(*args)


def _grid(t, step=2**-10):
    return torch.round(t / step) * step


@pytest.mark.parametrize("n_out, rate", [(10, 0.01), (10, 0.1), (80, 0.04), (80, 0.3)])
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
    with torch.no_grad():
        again = layers["sparse"](x)  # no graph: the density is counted, same choice
    assert torch.equal(again, outs["sparse"])
    assert layers["sparse"]._report["fwd"] == ("events" if events else "dense")
    assert math.isfinite(outs["sparse"].sum().item())
