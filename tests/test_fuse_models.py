"""``fuse`` on every kind of feed-forward model: convolutions, pooling, BatchNorm, Dropout,
reshapes, nested Sequentials and neurons with no fused form — outputs equal the per-step
model, gradients too. float32 (snnTorch's spikes are float32, so a float64 per-step model
cannot run), weights multiples of 2⁻⁸ and spike inputs: every current is exact in any
summation order, so outputs match bit for bit (BatchNorm's to rounding)."""

import pytest
import snntorch
import snntorch.utils
import torch
from torch import nn

import snntorch_sparse as snn
from snntorch_sparse import _fused, surrogate
from snntorch_sparse._conv import MASKED_DX_MAX_DENSITY
from snntorch_sparse.fuse import fuse

DT = torch.float32


def _grid(model, gen, scale=0.3, shift=0.05):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                w = torch.randn(m.weight.shape, generator=gen, dtype=DT) * scale + shift
                m.weight.copy_(torch.round(w * 256) / 256)
                if m.bias is not None:
                    m.bias.copy_(torch.round(torch.randn(m.bias.shape, generator=gen,
                                                         dtype=DT) * 0.05 * 256) / 256)
    return model


def _per_step(model, x):
    snntorch.utils.reset(model)
    outs = [model(x[t]) for t in range(x.shape[0])]
    if isinstance(outs[0], tuple):
        return tuple(torch.stack(o) for o in zip(*outs))
    return torch.stack(outs)


def _compare(model, fused, x, gen, rtol=1e-4, atol=1e-5):
    got, want = fused(x), _per_step(model, x)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(got, want):
        assert g.shape == w.shape and torch.equal(g.to(w.dtype), w)
    assert got[0].sum() > 0
    weights = [torch.randn(w.shape, generator=gen, dtype=w.dtype) for w in want]
    loss = lambda outs: sum((o.to(w.dtype) * w).sum() for o, w in zip(outs, weights))  # noqa: E731
    params = [p for p in model.parameters()]
    for g, w in zip(torch.autograd.grad(loss(got), params),
                    torch.autograd.grad(loss(want), params)):
        torch.testing.assert_close(g, w.to(g.dtype), rtol=rtol, atol=atol)
    return got


def _csnn(neuron, **kw):
    """snnTorch tutorial 6's CSNN, at a small image size: Conv → MaxPool → Leaky, twice,
    then Flatten → Linear → Leaky(output)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), neuron(beta=0.5, init_hidden=True, **kw),
        nn.Conv2d(4, 6, 3), nn.MaxPool2d(2), neuron(beta=0.5, init_hidden=True, **kw),
        nn.Flatten(), nn.Linear(6 * 2 * 2, 5),
        neuron(beta=0.5, init_hidden=True, output=True, **kw),
    ).to(DT)


def test_tutorial6_csnn_fuses_and_equals_per_step(gen):
    model = _grid(_csnn(snn.Leaky, b_th=0.3,
                        spike_grad=surrogate.fast_sigmoid(slope=25)), gen, shift=0.15)
    fused = fuse(model)
    kinds = [type(m).__name__ for m in fused.layers]
    assert kinds == ["_SparseConv", "_Folded", "_NeuronSequence", "_SparseConv", "_Folded",
                     "_NeuronSequence", "_Folded", "SpikingLinear"]
    x = (torch.rand(12, 3, 1, 14, 14, generator=gen) < 0.3).to(DT)
    _compare(model, fused, x, gen)
    # The second convolution's input is the first neuron's spikes: ∂W over them (when
    # they are sparse enough to be kept compact), ∂X only in that neuron's band; the
    # Flatten passes the band on to the SpikingLinear.
    h = fused.layers[2](fused.layers[1](fused.layers[0](x)))
    density, band = (h != 0).float().mean(), _fused.band_size(h) / h.numel()
    assert 0 < band < 1
    assert fused.layers[3]._report == {"dw": "spikes" if density <= 0.25 else "dense",
                                       "dx_masked": band <= MASKED_DX_MAX_DENSITY,
                                       "fwd": "events" if density <= 0.1 else "dense"}
    assert fused.layers[-1]._report["dx_masked"]


def test_conv_then_neuron_becomes_a_spiking_conv(gen):
    model = _grid(nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), snn.Leaky(beta=0.8, init_hidden=True, b_th=0.3),
        nn.Conv2d(4, 4, 3, stride=2, groups=2), snn.Leaky(beta=0.8, init_hidden=True, b_th=0.3),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
        snn.Leaky(beta=0.8, init_hidden=True, output=True, b_th=None)).to(DT), gen, shift=0.2)
    fused = fuse(model)
    convs = [m for m in fused.layers if isinstance(m, snn.SpikingConv2d)]
    assert len(convs) == 2 and convs[0].weight is model[0].weight
    x = (torch.rand(10, 2, 2, 9, 9, generator=gen) < 0.3).to(DT)
    _compare(model, fused, x, gen)
    h = convs[0](x)
    density, band = (h != 0).float().mean(), _fused.band_size(h) / h.numel()
    assert convs[1]._report == {"in_band": convs[1]._report["in_band"],
                                "dx_masked": band <= MASKED_DX_MAX_DENSITY,
                                "dw": "spikes" if density <= 0.25 else "dense",
                                "fwd": "events" if density <= 0.1 else "dense"}


def test_stock_snntorch_csnn_gets_the_default_band_and_equal_outputs(gen):
    model = _grid(_csnn(snntorch.Leaky), gen, shift=0.15)
    fused = fuse(model)
    neurons = [m.neuron for m in fused.layers if type(m).__name__ == "_NeuronSequence"]
    assert all(isinstance(n, snn.Leaky) and n.b_th == surrogate.DEFAULT_B_TH for n in neurons)
    assert all(type(m) is snntorch.Leaky for m in model if isinstance(m, snntorch.Leaky))
    x = (torch.rand(8, 2, 1, 14, 14, generator=gen) < 0.3).to(DT)
    spk, mem = fused(x)
    want = _per_step(model, x)
    assert torch.equal(spk, want[0].to(DT)) and torch.equal(mem, want[1])
    _compare(model, fuse(model, backward="dense"), x, gen)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_uses_each_steps_batch_statistics(gen, momentum):
    def build():
        torch.manual_seed(0)
        return _grid(nn.Sequential(
            nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, momentum=momentum),
            snn.Leaky(beta=0.7, init_hidden=True, b_th=0.3), nn.Flatten(),
            nn.Linear(3 * 5 * 5, 6), nn.BatchNorm1d(6, momentum=momentum),
            snn.Leaky(beta=0.7, init_hidden=True, output=True, b_th=0.3)).to(DT), gen)
    model = build()
    twin = build()
    twin.load_state_dict(model.state_dict())
    fused = fuse(twin)
    x = (torch.rand(7, 4, 1, 7, 7, generator=gen) < 0.4).to(DT)
    got, want = fused(x), _per_step(model, x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
    for name, buf in model.state_dict().items():  # running statistics, T updates each
        torch.testing.assert_close(twin.state_dict()[name], buf, rtol=1e-5, atol=1e-6)
    model.eval()
    twin.eval()
    got, want = fused(x), _per_step(model, x)
    for g, w in zip(got, want):  # the same affine map per element, vectorised differently
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


def test_dropout_is_equal_in_distribution_and_exact_in_eval(gen):
    model = nn.Sequential(nn.Linear(50, 200), snn.Leaky(beta=0.5, init_hidden=True),
                          nn.Dropout(0.5), nn.Linear(200, 4)).to(DT)
    with torch.no_grad():
        model[0].weight.fill_(0.05)
        model[0].bias.fill_(0.5)
    fused = fuse(model)
    x = torch.ones(20, 8, 50, dtype=DT)
    spk = fused.layers[0](x)
    kept = (fused.layers[1](spk) != 0).to(DT)
    firing = (spk != 0).to(DT)
    assert firing.mean() > 0.3
    assert abs(kept.sum() / firing.sum() - 0.5) < 0.03  # 0.5 of the spikes dropped
    model.eval()
    assert torch.equal(fuse(model)(x), _per_step(model, x))


@pytest.mark.filterwarnings("ignore:Inhibition is an unstable feature")
@pytest.mark.filterwarnings("ignore::snntorch_sparse.surrogate.SlowPathWarning")
@pytest.mark.parametrize("option", [
    {"learn_graded_spikes_factor": True},
    {"spike_grad": lambda u: (u > 0).to(u.dtype) + u - u.detach()},
    {"state_quant": lambda u: torch.round(u * 64) / 64},
])
def test_neuron_options_with_no_fused_form_run_on_their_own(gen, option):
    model = _grid(nn.Sequential(
        nn.Linear(12, 8), snn.Leaky(beta=0.75, init_hidden=True, b_th=0.3, **option),
        nn.Linear(8, 4), snn.Leaky(beta=0.75, init_hidden=True, output=True, b_th=0.3)
    ).to(DT), gen, shift=0.1)
    fused = fuse(model)
    assert type(fused.layers[0]) is nn.Linear
    assert type(fused.layers[1]).__name__ == "_NeuronSequence"
    x = (torch.rand(10, 3, 12, generator=gen) < 0.4).to(DT)
    _compare(model, fused, x, gen)


def test_nested_sequentials_unflatten_and_custom_stateless(gen):
    class Scale(nn.Module):
        def forward(self, x):
            return 2 * x

    model = _grid(nn.Sequential(
        nn.Sequential(nn.Unflatten(1, (1, 6, 6)), nn.Identity()),
        nn.Sequential(nn.Conv2d(1, 2, 3), snn.Leaky(beta=0.6, init_hidden=True, b_th=0.3)),
        Scale(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3),
        snn.Leaky(beta=0.6, init_hidden=True, output=True, b_th=0.3)).to(DT), gen, shift=0.15)
    with pytest.raises(ValueError, match=r"layer 4 \(Scale\(\)\).*stateless="):
        fuse(model)
    fused = fuse(model, stateless=(Scale,))
    x = (torch.rand(9, 2, 36, generator=gen) < 0.4).to(DT)
    _compare(model, fused, x, gen)


def test_conv1d_and_pooling_1d(gen):
    model = _grid(nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1), nn.AvgPool1d(2),
        snn.Leaky(beta=0.6, init_hidden=True, b_th=0.3), nn.MaxPool1d(2), nn.Flatten(),
        nn.Linear(4 * 2, 3), snn.Leaky(beta=0.6, init_hidden=True, output=True, b_th=0.3)
    ).to(DT), gen, shift=0.2)
    x = (torch.rand(11, 3, 2, 8, generator=gen) < 0.4).to(DT)
    _compare(model, fuse(model), x, gen)


@pytest.mark.parametrize("make", [
    lambda **kw: snn.Synaptic(alpha=0.75, beta=0.5, b_th=0.3, **kw),
    lambda **kw: snntorch.Synaptic(alpha=0.75, beta=0.5, **kw),
])
def test_synaptic_neurons_run_their_sequence_form(gen, make):
    model = _grid(nn.Sequential(
        nn.Conv2d(1, 3, 3), make(init_hidden=True), nn.Flatten(), nn.Linear(3 * 4 * 4, 4),
        make(init_hidden=True, output=True)).to(DT), gen, shift=0.2)
    fused = fuse(model)
    stages = [m for m in fused.layers if type(m).__name__ == "_NeuronSequence"]
    assert all(isinstance(m.neuron, snn.Synaptic) for m in stages)
    x = (torch.rand(10, 2, 1, 6, 6, generator=gen) < 0.4).to(DT)
    spk, syn, mem = fused(x)
    want = _per_step(model, x)
    assert torch.equal(spk, want[0]) and torch.equal(syn, want[1]) and torch.equal(mem, want[2])
    if isinstance(model[1], snn.Synaptic):  # the same band per step and fused
        _compare(model, fused, x, gen)
    with pytest.raises(ValueError, match="layer 1 .*rate.*Synaptic"):
        fuse(model, backward="rate")


def test_static_input_goes_through_the_stateless_layers_once(gen):
    """Tutorial 6 shows the same image at every step: with ``data.expand(T, ...)`` the
    convolution and pooling before the first neuron run on the B images once; outputs and
    gradients still equal the per-step model's."""
    model = _grid(_csnn(snn.Leaky, b_th=0.3), gen, shift=0.15)
    fused = fuse(model)
    steps_seen = []
    for stage in fused.layers:
        stage.register_forward_pre_hook(lambda m, args: steps_seen.append(args[0].shape[0]))
    data = (torch.rand(3, 1, 14, 14, generator=gen) < 0.4).to(DT)
    x = data.unsqueeze(0).expand(9, *data.shape)
    got = fused(x)
    # conv + pool once; the rest all steps (the last stage, called by _run, is not hooked)
    assert steps_seen == [1, 1, 9, 9, 9, 9, 9]
    _compare(model, fused, x, gen)
    assert torch.equal(got[0], _per_step(model, x)[0])
    steps_seen.clear()
    fused(x.contiguous())  # a materialised copy: every stage sees every step
    assert steps_seen == [9] * 7
