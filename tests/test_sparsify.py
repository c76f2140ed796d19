"""snntorch_sparse.sparsify on whole snnTorch models."""

import pytest
import snntorch
import snntorch.surrogate as snn_sg
import snntorch.utils
import torch
from torch import nn

import snntorch_sparse
from snntorch_sparse import reference, surrogate
from snntorch_sparse.leaky import Leaky
from snntorch_sparse.synaptic import Synaptic

F64 = torch.float64
T, B, N_IN, N_HID, N_OUT = 6, 4, 10, 16, 5


class ToDtype(nn.Module):
    """snnTorch spikes are float32: a float64 model casts them before the next Linear."""

    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        return x.to(self.dtype)


class Custom(nn.Module):
    """Explicit state passing (init_hidden=False), learnable β, a non-default surrogate."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.cast = ToDtype(dtype)
        self.fc1 = nn.Linear(N_IN, N_HID)
        self.lif1 = snntorch.Leaky(beta=0.9, learn_beta=True,
                                   spike_grad=snn_sg.fast_sigmoid(slope=10))
        self.fc2 = nn.Linear(N_HID, N_OUT)
        self.lif2 = snntorch.Leaky(beta=0.8, reset_mechanism="zero", learn_threshold=True)

    def forward(self, x):
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        out = []
        for t in range(x.shape[0]):
            spk1, mem1 = self.lif1(self.fc1(x[t]), mem1)
            spk2, mem2 = self.lif2(self.fc2(self.cast(spk1)), mem2)
            out.append(spk2 + mem2)
        return torch.stack(out)


def sequential(dtype=torch.float32):
    """Linear–Leaky–Linear–Leaky (with a cast of the spikes when not float32)."""
    cast = [ToDtype(dtype)] if dtype != torch.float32 else []
    return nn.Sequential(nn.Linear(N_IN, N_HID), snntorch.Leaky(beta=0.9, init_hidden=True),
                         *cast, nn.Linear(N_HID, N_OUT),
                         snntorch.Leaky(beta=0.8, init_hidden=True, output=True)).to(dtype)


def run_sequential(net, x):
    snntorch.utils.reset(net)
    out = []
    for t in range(x.shape[0]):
        spk, mem = net(x[t])
        out.append(spk + mem)
    return torch.stack(out)


MODELS = {"sequential": (sequential, run_sequential), "custom": (Custom, lambda n, x: n(x))}
# The surrogate each snnTorch Leaky of the models above carries: (shape, parameter).
SURROGATES = {"sequential": [(reference.ATAN, 2.0)] * 2,
              "custom": [(reference.FAST_SIGMOID, 10.0), (reference.ATAN, 2.0)]}


def leakies(net):
    return [m for m in net.modules() if isinstance(m, snntorch.Leaky)]


def banded_reference_copy(net, name, b_th, build, dtype):
    """The same snnTorch model with reference.spike_fn as its banded surrogate. (Built,
    not deep-copied: snnTorch resets init_hidden states through the instances that
    registered in their constructor.)"""
    ref = build(dtype).to(dtype)
    ref.load_state_dict(net.state_dict())
    for lif, (shape, p) in zip(leakies(ref), SURROGATES[name]):
        lif.spike_grad = (lambda s, q: lambda u: reference.spike_fn(u, s, q, b_th).float())(
            shape, p)
    return ref


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("b_th", [0.1, 0.5])
@pytest.mark.parametrize("name", list(MODELS))
def test_training_gradients_equal_reference(name, b_th, dtype):
    build, run = MODELS[name]
    torch.manual_seed(0)
    net = build(dtype).to(dtype)
    ref = banded_reference_copy(net, name, b_th, build, dtype)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)  # built before sparsify: must still work
    params_before = list(net.parameters())
    initial = [p.detach().clone() for p in params_before]
    assert snntorch_sparse.sparsify(net, b_th=b_th) is net
    assert all(a is b for a, b in zip(net.parameters(), params_before))
    assert len(list(net.parameters())) == len(params_before)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    for step in range(3):
        x = torch.rand(T, B, N_IN, generator=gen, dtype=dtype) * 1.5
        target = torch.rand(T, B, N_OUT, generator=gen, dtype=dtype)
        for model, optim in ((net, opt), (ref, ref_opt)):
            optim.zero_grad()
            ((run(model, x) - target) ** 2).mean().backward()
        for p, rp in zip(net.parameters(), ref.parameters()):
            assert torch.equal(p.grad, rp.grad)
        assert params_before[0].grad.abs().sum() > 0  # the first Linear's weight
        opt.step()
        ref_opt.step()
    for p, rp in zip(net.parameters(), ref.parameters()):
        assert torch.equal(p, rp)
    assert not torch.equal(params_before[0], initial[0])  # the old optimizer stepped them


def test_swap_keeps_options_state_and_registration():
    snntorch.SpikingNeuron.init()
    net = sequential(F64).eval()
    x = torch.rand(B, N_IN, dtype=F64)
    net(x)  # leaves a hidden state behind
    old = leakies(net)
    mems = [lif.mem for lif in old]
    buffers = {k: v for k, v in net.named_buffers()}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    snntorch_sparse.sparsify(net, b_th=0.3)
    new = leakies(net)
    assert [id(m) for m in new] == [id(m) for m in old]  # swapped in place
    assert all(type(m) is Leaky and m.b_th == 0.3 for m in new)
    assert [m.spike_grad for m in new] == [surrogate.atan(2.0, b_th=0.3)] * 2
    assert all(m.mem is mem for m, mem in zip(new, mems))
    assert all(v is buffers[k] for k, v in net.named_buffers())
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert not net.training and not any(m.training for m in net.modules())
    assert all(m.init_hidden and m.beta.dtype == F64 for m in new)
    assert new[1].output and not new[0].output
    instances = snntorch.SpikingNeuron.instances
    assert sum(any(m is i for i in instances) for m in new) == 2 and len(instances) == 2
    snntorch.utils.reset(net)
    assert all(torch.equal(m.mem, torch.zeros_like(m.mem)) for m in new)
    snntorch.SpikingNeuron.init()


def test_twice_is_noop_and_ours_left_alone():
    net = nn.Sequential(nn.Linear(3, 4), snntorch.Leaky(beta=0.5, init_hidden=True),
                        Leaky(beta=0.5, b_th=0.7, init_hidden=True))
    snntorch_sparse.sparsify(net, b_th=0.2)
    first = [(type(m), m.spike_grad, m.b_th) for m in leakies(net)]
    snntorch_sparse.sparsify(net, b_th=0.2)
    snntorch_sparse.sparsify(net, b_th=0.4)  # already ours: left alone
    assert [(type(m), m.spike_grad, m.b_th) for m in leakies(net)] == first
    assert first[1][2] == 0.7


def test_nested_and_shared_modules():
    shared = snntorch.Leaky(beta=0.5, spike_grad=snn_sg.sigmoid(slope=3.0))
    inner = nn.ModuleDict({"a": nn.Sequential(nn.Linear(2, 2), shared),
                           "b": nn.ModuleList([shared, snntorch.Leaky(beta=0.7)])})
    model = nn.Sequential(nn.Sequential(inner), nn.Identity())
    snntorch_sparse.sparsify(model, b_th=0.25)
    assert type(shared) is Leaky and shared.spike_grad == surrogate.sigmoid(3.0, b_th=0.25)
    assert model[0][0]["a"][1] is shared and model[0][0]["b"][0] is shared
    assert type(model[0][0]["b"][1]) is Leaky


def test_single_neuron_model():
    lif = snntorch.Leaky(beta=0.5, spike_grad=snn_sg.triangular(threshold=0.5))
    out = snntorch_sparse.sparsify(lif, b_th=None)
    assert out is lif and type(out) is Leaky
    assert out.spike_grad == surrogate.triangular(threshold=0.5, b_th=None)


def _others(spike_grad):
    return nn.ModuleList([
        snntorch.Synaptic(alpha=0.9, beta=0.8, spike_grad=spike_grad),
        snntorch.Alpha(alpha=0.9, beta=0.8, spike_grad=spike_grad),
        snntorch.RLeaky(beta=0.8, linear_features=3, spike_grad=spike_grad),
        snntorch.RSynaptic(alpha=0.9, beta=0.8, linear_features=3, spike_grad=spike_grad),
        snntorch.Lapicque(beta=0.8, spike_grad=spike_grad),
    ])


def test_all_neurons_option():
    model = _others(snn_sg.fast_sigmoid(slope=7.0))
    snntorch_sparse.sparsify(model, b_th=0.3)  # default: only Leaky and Synaptic (ours)
    assert type(model[0]) is Synaptic
    assert model[0].spike_grad == surrogate.fast_sigmoid(7.0, b_th=0.3)
    assert all(m.spike_grad.__qualname__ == "fast_sigmoid.<locals>.inner" for m in model[1:])
    snntorch_sparse.sparsify(model, b_th=0.3, all_neurons=True)
    assert all(m.spike_grad == surrogate.fast_sigmoid(7.0, b_th=0.3) for m in model)
    snntorch_sparse.sparsify(model, b_th=0.3, all_neurons=True)
    assert all(m.spike_grad == surrogate.fast_sigmoid(7.0, b_th=0.3) for m in model)
    # Default surrogate (atan) of each neuron, and the neurons still run
    model = snntorch_sparse.sparsify(_others(None), b_th=0.2, all_neurons=True)
    assert all(m.spike_grad == surrogate.atan(2.0, b_th=0.2) for m in model)
    x = torch.rand(2, 3, requires_grad=True)
    out = [m(x)[0] for m in model]
    torch.stack(out).sum().backward()
    assert x.grad is not None


def test_leaky_subclass_and_surrogate_disable():
    class MyLeaky(snntorch.Leaky):
        pass

    mine = MyLeaky(beta=0.5)
    off = snntorch.Leaky(beta=0.5, surrogate_disable=True)
    other_off = snntorch.Synaptic(alpha=0.5, beta=0.5, surrogate_disable=True)
    snntorch_sparse.sparsify(nn.ModuleList([mine, off, other_off]), b_th=0.2,
                             all_neurons=True)
    assert type(mine) is MyLeaky and mine.spike_grad == surrogate.atan(2.0, b_th=0.2)
    assert type(off) is Leaky and off.spike_grad.__name__ == "_surrogate_bypass"
    assert other_off.spike_grad.__name__ == "_surrogate_bypass"


def test_bad_arguments():
    with pytest.raises(ValueError, match="b_th"):
        snntorch_sparse.sparsify(sequential(), b_th=-0.1)
    with pytest.raises(TypeError, match="nn.Module"):
        snntorch_sparse.sparsify(lambda x: x)
