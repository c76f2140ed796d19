"""``fuse``: a per-step ``nn.Sequential`` of Linear + Leaky equals its fused form.

Weights are rounded to multiples of 2⁻⁸ and inputs are spikes, so every current is exact
(also in float32) whatever the GEMM's summation order; the outputs must match bit for bit.
"""

import math

import pytest
import snntorch
import snntorch.utils
import torch
from torch import nn

import snntorch_sparse
from snntorch_sparse import reference as R
from snntorch_sparse.fuse import FusedSequential, fuse
from snntorch_sparse.spiking_linear import SpikingLinear

T, B = 25, 4


def _grid(model, scale, shift):
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                w = torch.randn_like(m.weight) * scale + shift
                m.weight.copy_(torch.round(w * 256) / 256)
                if m.bias is not None:
                    m.bias.copy_(torch.round(torch.randn_like(m.bias) * 0.05 * 256) / 256)
    return model


def _net(leaky, dtype=torch.float32, reset="subtract", learn=False, output=True, **kw):
    """Flatten → Linear(24, 16) → Leaky → Linear(16, 10) → Leaky(output)."""
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(24, 16, bias=True),
        leaky(beta=torch.rand(16) * 0.2 + 0.75 if learn else 0.9, threshold=1.0,
              init_hidden=True, reset_mechanism=reset, learn_beta=learn,
              learn_threshold=learn, **kw),
        nn.Linear(16, 10, bias=False),
        leaky(beta=0.8, init_hidden=True, output=output, reset_mechanism=reset, **kw),
    )
    return _grid(model, 0.3, 0.08).to(dtype)


def _per_step(model, x):
    snntorch.utils.reset(model)
    outs = [model(x[t]) for t in range(x.shape[0])]
    if isinstance(outs[0], tuple):
        return tuple(torch.stack(o) for o in zip(*outs))
    return torch.stack(outs)


def _spiking(fused):
    """The fused model's SpikingLinear stages, in order."""
    return [m for m in fused.layers if isinstance(m, SpikingLinear)]


def _params(model):
    return [p for p in model.parameters()]


def _compare(model, fused, x, rtol, atol):
    got, want = fused(x), _per_step(model, x)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert torch.equal(g.to(w.dtype), w)
    assert got[0].sum() > 0  # the last layer fires
    weights = [torch.randn_like(w) for w in want]
    loss = lambda outs: sum((o.to(w.dtype) * w).sum() for o, w in zip(outs, weights))  # noqa: E731
    params = _params(model)
    for g, w in zip(torch.autograd.grad(loss(got), params),
                    torch.autograd.grad(loss(want), params)):
        assert w.abs().sum() > 0
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol)


@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("learn", [False, True])
@pytest.mark.parametrize("output", [True, False])
def test_snntorch_model_equals_per_step(reset, learn, output):
    model = _net(snntorch.Leaky, reset=reset, learn=learn, output=output)
    fused = fuse(model)
    assert isinstance(fused, FusedSequential)
    first, second = _spiking(fused)
    assert first.weight is model[1].weight and first.bias is model[1].bias
    if learn:
        assert first.beta is model[2].beta
    # A stock Leaky gets the default band, as sparsify gives it (dense for output=True, the
    # layer the loss reads): the fused model's gradient is the per-step model's once that
    # one is sparsified too (in place, same Parameters).
    default = snntorch_sparse.surrogate.DEFAULT_B_TH
    assert first.b_th == default
    assert second.b_th == (None if output else default)
    assert snntorch_sparse.sparsify(_net(snntorch.Leaky, output=output))[4].b_th == (
        None if output else default)
    # The default band adapts per call (per step there, per sequence here), so compare
    # both at the paper's fixed band, which is also the default's starting width.
    for layer in (first, second):
        layer.b_th = 0.2
        snntorch_sparse.surrogate.assign_spike_grad(layer, layer.spike_grad.with_band(0.2))
    x = (torch.rand(T, B, 2, 3, 4) < 0.3).float()
    snntorch_sparse.sparsify(model, b_th=0.2)
    _compare(model, fused, x, rtol=1e-4, atol=1e-5)


def test_snntorch_model_dense_backward_equals_stock_per_step():
    torch.manual_seed(0)
    model = _net(snntorch.Leaky, learn=True)  # float32: snnTorch's surrogates return float32
    fused = fuse(model, backward="dense")
    x = (torch.rand(T, B, 2, 3, 4) < 0.3).float()
    # every neuron-step contributes (no band): float32 sums differ by order more than above
    _compare(model, fused, x, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_sparse_leaky_model_equals_per_step(reset):
    model = _net(snntorch_sparse.Leaky, reset=reset, learn=True, b_th=0.3,
                 spike_grad=snntorch_sparse.surrogate.fast_sigmoid(slope=5))
    fused = fuse(model)
    layer = _spiking(fused)[0]
    assert (layer.b_th, layer.spike_grad.shape, layer.spike_grad.p) == (0.3, R.FAST_SIGMOID, 5.0)
    x = (torch.rand(T, B, 2, 3, 4) < 0.3).float()
    _compare(model, fused, x, rtol=1e-4, atol=1e-5)


def _reference_chain(model, x, b_th):
    """The fused model by ``reference.py`` (float64): spikes and last membrane."""
    mods = list(model)[1:]
    h = x.flatten(2)
    for i in range(0, len(mods), 2):
        lin, lif = mods[i], mods[i + 1]
        cur = lin(h)
        spk, mem = R.lif_sequence(cur, torch.zeros_like(cur[0]), lif.beta, lif.threshold,
                                  reset=R.RESETS.index(lif.reset_mechanism), b_th=b_th)
        h = spk
    return spk, mem


@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
def test_banded_model_equals_reference(reset):
    model = _net(snntorch_sparse.Leaky, dtype=torch.float64, reset=reset, learn=True, b_th=0.2)
    fused = fuse(model)
    x = (torch.rand(T, B, 2, 3, 4, dtype=torch.float64) < 0.3).double()
    spk, mem = fused(x)
    spk_r, mem_r = _reference_chain(model, x, 0.2)
    assert torch.equal(spk, spk_r) and torch.equal(mem, mem_r)
    w1, w2 = torch.randn_like(spk), torch.randn_like(mem)
    params = _params(model)
    got = torch.autograd.grad((spk * w1).sum() + (mem * w2).sum(), params)
    want = torch.autograd.grad((spk_r * w1).sum() + (mem_r * w2).sum(), params)
    assert any(g.abs().sum() > 0 for g in want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert _spiking(fused)[1]._report["dx_masked"]


def test_trailing_linear_and_dense_backward():
    model = nn.Sequential(nn.Linear(12, 8), snntorch.Leaky(beta=0.9, init_hidden=True),
                          nn.Linear(8, 3))
    model = _grid(model, 0.3, 0.1)
    fused = fuse(model, backward="dense")
    assert isinstance(fused.layers[0], SpikingLinear) and type(fused.layers[1]) is nn.Linear
    assert fused.layers[0].backward == "dense"
    x = (torch.rand(T, B, 12) < 0.3).float()
    got, want = fused(x), _per_step(model, x)
    assert torch.equal(got, want)


def test_fuse_draws_no_random_numbers():
    model = _net(snntorch.Leaky)
    torch.manual_seed(0)
    fuse(model)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))


@pytest.mark.parametrize("build,match", [
    (lambda: nn.Sequential(nn.Linear(3, 2), snntorch.Leaky(beta=0.9)), "init_hidden=True"),
    (lambda: nn.Sequential(nn.Linear(3, 2), snntorch.Leaky(beta=0.9, init_hidden=True,
                                                            output=True),
                           nn.Linear(2, 2), snntorch.Leaky(beta=0.9, init_hidden=True)),
     "output=True"),
    (lambda: nn.Sequential(nn.Linear(3, 2), snntorch.RLeaky(beta=0.9, linear_features=2,
                                                             init_hidden=True)),
     "layer 1 .*RLeaky has no whole-sequence form"),
    (lambda: nn.Sequential(nn.Linear(3, 2), nn.LSTM(2, 2)), "layer 1 .*stateless="),
    (lambda: nn.Sequential(nn.Flatten(0)), "start_dim=0"),
    (lambda: nn.Sequential(nn.MaxPool2d(2, return_indices=True)), "return_indices"),
    (lambda: nn.Linear(3, 2), "nn.Sequential"),
])
@pytest.mark.filterwarnings("ignore:Inhibition is an unstable feature")
def test_unsupported_models(build, match):
    with pytest.raises(ValueError, match=match):
        fuse(build())


def test_fused_output_is_finite_for_random_input():
    fused = fuse(_net(snntorch.Leaky))
    spk, mem = fused(torch.rand(T, B, 2, 3, 4))
    assert spk.shape == (T, B, 10) and math.isfinite(mem.sum().item())


def test_bad_backward_blames_backward_not_a_layer():
    net = nn.Sequential(nn.Linear(4, 3), snntorch.Leaky(beta=0.9, init_hidden=True))
    with pytest.raises(ValueError, match="fuse: backward must be one of"):
        fuse(net, backward="x")
