"""``SpikingConv2d`` (fused Conv2d + Leaky over the sequence) against ``reference.py``.

Inputs are binary spikes and weights multiples of 2⁻¹⁰, so every current is exact in
float64 whatever the convolution's summation order: outputs must be bit-identical to the
reference, gradients equal within rounding.
"""

import math

import pytest
import snntorch
import torch
from torch import nn
from torch.func import functional_call

import snntorch_sparse as snn
from snntorch_sparse import reference as R
from snntorch_sparse._conv import MASKED_DX_MAX_DENSITY
from snntorch_sparse._fused import lif_sequence

DT = torch.float64
T, B, C_IN, H, W = 6, 2, 3, 9, 8
GEOMETRIES = [  # (kernel, stride, padding, dilation, groups, out_channels)
    (3, 1, 1, 1, 1, 4),
    ((3, 2), 2, 0, 1, 1, 4),
    (3, 1, 2, 2, 1, 6),
    (3, 2, 1, 1, 3, 6),  # groups = in_channels: depthwise-like
    (1, 1, 0, 1, 1, 5),
]
RESETS = ["subtract", "zero", "none"]


def _grid(t, step=2**-10):
    return torch.round(t / step) * step


def _spikes(gen, rate=0.15, shape=(T, B, C_IN, H, W)):
    return (torch.rand(shape, generator=gen) < rate).to(DT)


def _layer(gen, geo, b_th=0.3, mean=0.15, **kw):
    k, s, p, d, g, c_out = geo
    layer = snn.SpikingConv2d(C_IN, c_out, k, stride=s, padding=p, dilation=d, groups=g,
                              b_th=b_th, dtype=DT, **{"beta": 0.8, **kw})
    with torch.no_grad():
        layer.weight.copy_(_grid(torch.randn(layer.weight.shape, generator=gen, dtype=DT) * 0.3
                                 + mean))
        if layer.bias is not None:
            layer.bias.copy_(_grid(torch.randn(c_out, generator=gen, dtype=DT) * 0.05))
    return layer


def _reference(layer, x, mem0=None, rate=False):
    b_th = math.inf if layer.b_th is None or layer.backward == "dense" else layer.b_th
    fn = R.rate_spiking_conv2d if rate else R.spiking_conv2d
    return fn(x, layer.weight, layer.bias, layer.beta, layer.threshold, layer.stride,
              layer.padding, layer.dilation, layer.groups, layer.graded_spikes_factor,
              R.RESETS.index(layer.reset_mechanism), layer.spike_grad.shape,
              layer.spike_grad.p, b_th, layer.readout, mem0)


def _grads(out, ref, wrt, gen):
    w = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    got = torch.autograd.grad((out * w).sum(), wrt, allow_unused=True)
    want = torch.autograd.grad((ref * w).sum(), wrt, allow_unused=True)
    return got, want


def _assert_close(got, want, rtol=1e-9, atol=1e-10):
    for g, w in zip(got, want):
        assert g is not None and g.shape == w.shape
        torch.testing.assert_close(g, w.to(g.dtype), rtol=rtol, atol=atol)


@pytest.mark.parametrize("geo", GEOMETRIES)
@pytest.mark.parametrize("backward", ["sparse", "dense"])
@pytest.mark.parametrize("reset", RESETS)
def test_forward_and_gradients_equal_reference(gen, geo, backward, reset):
    layer = _layer(gen, geo, backward=backward, reset_mechanism=reset)
    x = _spikes(gen).requires_grad_()
    out = layer(x)
    ref = _reference(layer, x)
    assert torch.equal(out, ref)
    assert 0 < out.mean() < 0.9  # the neurons fire, and not everywhere
    wrt = (x, layer.weight, layer.bias)
    _assert_close(*_grads(out, ref, wrt, gen))
    assert layer._report["dw"] == ("spikes" if backward == "sparse" else "dense")


@pytest.mark.parametrize("geo", GEOMETRIES)
@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2, 0.5])
def test_sparse_forward_and_weight_gradient_at_several_input_densities(gen, geo, rate):
    """Spikes at 1–5 %: event-driven forward and ∂W over the input spikes; 20 %: library
    forward, ∂W over the spikes; 50 %: kept as is, the library's forward and gradient."""
    layer = _layer(gen, geo, mean=0.6)
    x = _spikes(gen, rate)
    out = layer(x)
    assert torch.equal(out, _reference(layer, x))
    _assert_close(*_grads(out, _reference(layer, x), (layer.weight, layer.bias), gen))
    density = (x != 0).double().mean()
    assert layer._report["dw"] == ("spikes" if density <= 0.25 else "dense")
    assert layer._report["fwd"] == ("events" if density <= 0.1 else "dense")


def test_event_forward_without_grad_and_with_graded_input(gen):
    layer = _layer(gen, GEOMETRIES[3])
    x = _spikes(gen, 0.03) * _grid(torch.rand(T, B, C_IN, H, W, generator=gen, dtype=DT))
    with torch.no_grad():
        out = layer(x)
    assert layer._report["fwd"] == "events"
    assert torch.equal(out, _reference(layer, x))


def test_graded_input_and_learnable_neuron_parameters(gen):
    layer = _layer(gen, GEOMETRIES[2], learn_beta=True, learn_threshold=True,
                   beta=torch.full((6,), 0.7), threshold=torch.linspace(0.8, 1.2, 6))
    x = (_spikes(gen) * _grid(torch.rand(T, B, C_IN, H, W, generator=gen, dtype=DT))
         ).requires_grad_()
    out = layer(x)
    ref = _reference(layer, x)
    assert torch.equal(out, ref)
    _assert_close(*_grads(out, ref, (x, layer.weight, layer.bias, layer.beta,
                                     layer.threshold), gen))


def test_readout_returns_membrane_and_passes_gradcheck(gen):
    layer = _layer(gen, GEOMETRIES[1], readout=True)
    x = _spikes(gen, 0.3, (3, 2, C_IN, 6, 5))
    out = layer(x)
    torch.testing.assert_close(out, _reference(layer, x), rtol=0, atol=1e-12)

    def fn(x, w, b):
        return functional_call(layer, {"weight": w, "bias": b}, (x,))
    args = (x.requires_grad_(), layer.weight.detach().clone().requires_grad_(),
            layer.bias.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(fn, args)


def test_initial_membrane_and_its_gradient(gen):
    layer = _layer(gen, GEOMETRIES[0])
    x = _spikes(gen)
    mem0 = _grid(torch.rand(B, 4, H, W, generator=gen, dtype=DT)).requires_grad_()
    out = layer(x, mem0)
    ref = _reference(layer, x, mem0)
    assert torch.equal(out, ref)
    _assert_close(*_grads(out, ref, (mem0, layer.weight), gen))


@pytest.mark.parametrize("reset", RESETS)
def test_dense_equals_snntorch_per_step(gen, reset):
    """backward="dense" is nn.Conv2d + snntorch.Leaky run step by step (outputs and
    gradients)."""
    # β = 0.75: exact in snnTorch's float32 β as in our float64 one
    layer = _layer(gen, GEOMETRIES[0], backward="dense", reset_mechanism=reset, b_th=None,
                   beta=0.75)
    conv = nn.Conv2d(C_IN, 4, 3, padding=1, dtype=DT)
    conv.weight, conv.bias = layer.weight, layer.bias
    lif = snntorch.Leaky(beta=0.75, reset_mechanism=reset)
    x = _spikes(gen)
    mem = torch.zeros(B, 4, H, W, dtype=DT)
    spks = []
    for t in range(T):
        spk, mem = lif(conv(x[t]), mem)
        spks.append(spk)
    ref = torch.stack(spks)
    out = layer(x)
    assert torch.equal(out, ref.to(DT))
    # snnTorch's spikes and surrogate are float32 (its atan returns a float32 Heaviside)
    _assert_close(*_grads(out, ref, (layer.weight, layer.bias), gen), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("b_th", [0.05, 0.6])
def test_input_gradient_is_masked_by_the_upstream_band(gen, b_th):
    """Leaky sequence → SpikingConv2d: the conv computes its input gradient only inside
    the Leaky's band when that band is narrow (its report says so), densely when it holds
    more than MASKED_DX_MAX_DENSITY of the input; the gradients at the leaves equal the
    reference chain's either way."""
    layer = _layer(gen, GEOMETRIES[0])
    cur = _grid(torch.rand(T, B, C_IN, H, W, generator=gen, dtype=DT) * 0.6).requires_grad_()
    beta, theta = torch.tensor(0.875, dtype=DT), torch.tensor(1.0, dtype=DT)
    spk, _ = lif_sequence(cur, None, beta, theta, b_th=b_th)  # a float64 Leaky sequence
    out = layer(spk)
    spk_ref, mem_ref = R.lif_sequence(cur, torch.zeros_like(cur[0]), beta, theta, b_th=b_th)
    ref = _reference(layer, spk_ref)
    assert torch.equal(out, ref)
    _assert_close(*_grads(out, ref, (cur, layer.weight), gen))
    density = ((mem_ref - theta).abs() < b_th).double().mean()
    assert 0 < density < 1
    assert layer._report["dx_masked"] == (density <= MASKED_DX_MAX_DENSITY)


def test_rate_backward_equals_reference(gen):
    layer = _layer(gen, GEOMETRIES[3], backward="rate")
    x = _spikes(gen).requires_grad_()
    out = layer(x)
    ref = _reference(layer, x, rate=True)
    assert torch.equal(out, ref)
    _assert_close(*_grads(out, ref, (x, layer.weight, layer.bias), gen))


def test_rate_readout_equals_reference(gen):
    layer = _layer(gen, GEOMETRIES[0], backward="rate", readout=True)
    x = _spikes(gen).requires_grad_()
    out = layer(x)
    ref = _reference(layer, x, rate=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    _assert_close(*_grads(out, ref, (x, layer.weight, layer.bias), gen))


def test_bfloat16_input_runs_in_float32_and_returns_bfloat16(gen):
    layer = snn.SpikingConv2d(C_IN, 4, 3, beta=0.8)
    x = _spikes(gen).to(torch.bfloat16).requires_grad_()
    out = layer(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and layer.weight.grad is not None


def test_padding_same_and_valid_match_nn_conv2d():
    layer = snn.SpikingConv2d(2, 3, 5, padding="same", dilation=2, beta=0.5)
    assert layer.padding == (4, 4)
    assert layer.out_size((10, 7)) == (10, 7)
    assert snn.SpikingConv2d(2, 3, 5, padding="valid", beta=0.5).out_size((10, 7)) == (6, 3)


def test_no_grad_forward_keeps_nothing_and_equals_training_forward(gen):
    layer = _layer(gen, GEOMETRIES[0])
    x = _spikes(gen)
    with torch.no_grad():
        a = layer(x)
    assert torch.equal(a, layer(x)) and not a.requires_grad


@pytest.mark.parametrize("make, match", [
    (lambda: snn.SpikingConv2d(3, 4, 3, groups=2, beta=0.5), "groups=2 must divide"),
    (lambda: snn.SpikingConv2d(3, 4, 0, beta=0.5), "kernel_size must be an int >= 1"),
    (lambda: snn.SpikingConv2d(3, 4, 3, stride=0, beta=0.5), "stride must be an int >= 1"),
    (lambda: snn.SpikingConv2d(3, 4, 3, padding=-1, beta=0.5), "padding must be"),
    (lambda: snn.SpikingConv2d(3, 4, 3, stride=2, padding="same", beta=0.5),
     "padding='same' needs stride=1"),
    (lambda: snn.SpikingConv2d(3, 4, 4, padding="same", beta=0.5), "asymmetric padding"),
    (lambda: snn.SpikingConv2d(3, 4, 3, beta=torch.ones(3)), "beta must be a float or a "
     "tensor with 1 or out_channels=4"),
    (lambda: snn.SpikingConv2d(0, 4, 3, beta=0.5), "in_channels must be a positive int"),
    (lambda: snn.SpikingConv2d(3, 4, 3, beta=0.5, backward="bptt"), "backward must be one"),
])
def test_bad_construction_names_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_name_the_argument_and_shape():
    layer = snn.SpikingConv2d(3, 4, 3, beta=0.5)
    with pytest.raises(ValueError, match=r"input must have shape \[T, B, in_channels=3, H, W\]"):
        layer(torch.rand(5, 2, 3, 8))
    with pytest.raises(ValueError, match=r"in_channels=3"):
        layer(torch.rand(5, 2, 2, 8, 8))
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        layer(torch.rand(5, 2, 3, 2, 8))
    with pytest.raises(TypeError, match="floating point"):
        layer(torch.ones(5, 2, 3, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="at least one time step"):
        layer(torch.rand(0, 2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"mem must be a tensor of shape \[B, out_channels, "
                                         r"Ho, Wo\] = \[2, 4, 6, 6\]"):
        layer(torch.rand(5, 2, 3, 8, 8), torch.zeros(2, 4, 8, 8))


def test_user_input_is_not_mutated(gen):
    layer = _layer(gen, GEOMETRIES[0])
    x = _spikes(gen).requires_grad_()
    before = x.detach().clone()
    layer(x).sum().backward()
    assert torch.equal(x.detach(), before)
