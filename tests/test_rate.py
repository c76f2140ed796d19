"""Rate-based backpropagation (``backward="rate"``) against ``reference.rate_spiking_linear``
(the straight-through form of DESIGN.md §2), against BPTT where the rule is exact, and its
memory kept for backward against T."""


import pytest
import torch
from torch import nn

import snntorch_sparse as snn
from snntorch_sparse import _fused, reference as R

DT = torch.float64
T, B, N_IN, N_OUT = 20, 3, 6, 5
RESETS = ["subtract", "zero", "none"]


def _layer(backward, reset="subtract", per_neuron=False, b_th=0.4, readout=False, gen=None,
           bias=True):
    beta = (0.5 + 0.45 * torch.rand(N_OUT, generator=gen, dtype=DT)) if per_neuron else 0.85
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    return snn.SpikingLinear(N_IN, N_OUT, beta=beta, threshold=0.6, bias=bias, b_th=b_th,
                             reset_mechanism=reset, readout=readout, backward=backward,
                             dtype=DT)


def _copy(layer, backward):
    other = snn.SpikingLinear(N_IN, N_OUT, beta=layer.beta, threshold=layer.threshold,
                              bias=layer.bias is not None, b_th=layer.b_th,
                              reset_mechanism=layer.reset_mechanism, readout=layer.readout,
                              backward=backward, dtype=DT)
    other.load_state_dict(layer.state_dict())
    return other


def _ref(layer, x, W, b):
    sg = layer.spike_grad
    return R.rate_spiking_linear(x, W, b, layer.beta, layer.threshold,
                                 reset=R.RESETS.index(layer.reset_mechanism), shape=sg.shape,
                                 p=sg.p, b_th=layer.b_th, readout=layer.readout)


def _grads(layer, x, G):
    x = x.detach().clone().requires_grad_()
    layer.zero_grad()
    out = layer(x)
    (out * G).sum().backward()
    return out.detach(), [x.grad, layer.weight.grad, layer.bias.grad]


@pytest.mark.parametrize("readout", [False, True], ids=["hidden", "readout"])
@pytest.mark.parametrize("b_th", [0.4, None], ids=["band", "noband"])
@pytest.mark.parametrize("per_neuron", [False, True], ids=["scalar", "perneuron"])
@pytest.mark.parametrize("reset", RESETS)
def test_rate_equals_reference(reset, per_neuron, b_th, readout, gen):
    layer = _layer("rate", reset, per_neuron, b_th, readout, gen)
    x = 2 * torch.rand(T, B, N_IN, generator=gen, dtype=DT)  # time-varying input
    G = torch.randn(T, B, N_OUT, generator=gen, dtype=DT)   # time-varying upstream grad
    out, got = _grads(layer, x, G)
    # forward bitwise equal to dense mode
    assert torch.equal(out, _copy(layer, "dense")(x))
    xr = x.clone().requires_grad_()
    W = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    ref = _ref(layer, xr, W, b)
    assert torch.equal(ref.detach(), out)
    (ref * G).sum().backward()
    for name, g, r in zip("xWb", got, (xr.grad, W.grad, b.grad)):
        assert r.abs().max() > 0, name  # a test that cannot fail is a defect
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12, msg=name)
    if not readout:  # the band limits the eligibility (so it reaches the gradients)
        assert out.sum() > 0


@pytest.mark.parametrize("reset", RESETS)
def test_eligibility_is_kappa_recursion(reset, gen):
    """``mean_t lif_bwd(dS/dU, a)`` (the op path) equals the literal κ recursion, and the
    literal recursion is checked against its closed form for a never-firing neuron."""
    from snntorch_sparse._rate import _eligibility

    beta = 0.5 + 0.45 * torch.rand(B * N_OUT, generator=gen, dtype=DT)
    theta = torch.full((B * N_OUT,), 0.5, dtype=DT)
    cur = torch.rand(T, B * N_OUT, generator=gen, dtype=DT)
    mem0 = torch.zeros(B * N_OUT, dtype=DT)
    mem = R.lif_fwd(cur, mem0, beta, theta, RESETS.index(reset))
    nrn = _fused.Neuron(1.5, RESETS.index(reset), R.FAST_SIGMOID, 5.0, 0.3)
    _, bits, vals = R.spike(mem - theta, nrn.shape, nrn.p, nrn.b_th, nrn.gamma)
    e = _eligibility(mem, mem0, beta, theta, bits, vals, nrn)
    kappa, e_ref = R.rate_eligibility(mem, mem0, beta, theta, 1.5, RESETS.index(reset),
                                      R.FAST_SIGMOID, 5.0, 0.3)
    assert e_ref.abs().max() > 0
    torch.testing.assert_close(e, e_ref, rtol=1e-12, atol=1e-14)
    # κ[t] = Σ_{s<t} βˢ when nothing resets (reset none)
    if reset == "none":
        t = torch.arange(1, T + 1, dtype=DT).unsqueeze(1)
        torch.testing.assert_close(kappa, (1 - beta ** t) / (1 - beta))


@pytest.mark.parametrize("readout", [False, True], ids=["hidden", "readout"])
@pytest.mark.parametrize("reset", RESETS)
def test_rate_equals_bptt_iff_constant_in_t(reset, readout, gen):
    """Constant input and upstream gradient: rate = BPTT (same band, detached reset) for
    the gradients of the constant input, W and b. Time-varying: they differ."""
    layer = _layer("rate", reset, True, 0.4, readout, gen)
    dense = _copy(layer, "dense")
    dense.b_th = layer.b_th  # BPTT with the same band-limited surrogate
    dense.backward = "sparse"
    x0 = 2 * torch.rand(B, N_IN, generator=gen, dtype=DT)
    g0 = torch.randn(B, N_OUT, generator=gen, dtype=DT)

    def grads(m, x, G, expand):
        x = x.clone().requires_grad_()
        m.zero_grad()
        xs = x.unsqueeze(0).expand(T, B, N_IN) if expand else x
        (m(xs) * G).sum().backward()
        return [x.grad, m.weight.grad.clone(), m.bias.grad.clone()]

    G = g0.expand(T, B, N_OUT)
    for r, d in zip(grads(layer, x0, G, True), grads(dense, x0, G, True)):
        assert d.abs().max() > 0
        torch.testing.assert_close(r, d, rtol=1e-10, atol=1e-12)
    x = 2 * torch.rand(T, B, N_IN, generator=gen, dtype=DT)
    G = torch.randn(T, B, N_OUT, generator=gen, dtype=DT)
    r, d = grads(layer, x, G, False), grads(dense, x, G, False)
    assert not torch.allclose(r[1], d[1], rtol=1e-3, atol=1e-6)  # an accidental BPTT fails


@pytest.mark.parametrize("reset", RESETS)
def test_leaky_forward_sequence_rate(reset, gen):
    lif = snn.Leaky(beta=0.8, threshold=0.6, reset_mechanism=reset, b_th=0.4)
    cur = 1.5 * torch.rand(T, B, N_OUT, generator=gen, dtype=DT)
    # float32-exact: Leaky's spikes are float32 (snnTorch's convention), so is their grad
    G = torch.randn(T, B, N_OUT, generator=gen).to(DT)
    spk_d, _ = lif.forward_sequence(cur, backward="dense")
    c = cur.clone().requires_grad_()
    spk, mem = lif.forward_sequence(c, backward="rate")
    assert torch.equal(spk, spk_d)
    assert _fused.band_of(spk) is None  # no band tag
    (spk * G).sum().backward()
    cr = cur.clone().requires_grad_()
    sg = lif.spike_grad
    ref = R.rate_spiking_linear(cr, None, None, lif.beta.to(DT), lif.threshold.to(DT),
                                reset=RESETS.index(reset), shape=sg.shape, p=sg.p, b_th=0.4)
    assert torch.equal(ref.detach().float(), spk)
    (ref * G).sum().backward()
    assert cr.grad.abs().max() > 0
    torch.testing.assert_close(c.grad, cr.grad, rtol=1e-12, atol=1e-12)


def test_rate_errors():
    with pytest.raises(ValueError, match="learnable"):
        snn.SpikingLinear(4, 3, beta=0.9, learn_beta=True, backward="rate")
    layer = snn.SpikingLinear(4, 3, beta=0.9, backward="rate")
    with pytest.raises(ValueError, match="mem"):
        layer(torch.rand(5, 2, 4), torch.zeros(2, 3, requires_grad=True))
    lif = snn.Leaky(beta=0.9, learn_beta=True)
    with pytest.raises(ValueError, match="beta"):
        lif.forward_sequence(torch.rand(5, 2, 3), backward="rate")
    # a hidden membrane has no rate gradient: clear error, not a silent zero
    x = torch.rand(5, 2, 4, requires_grad=True)
    _, mem = layer._run(x, None)
    with pytest.raises(RuntimeError, match="membrane"):
        mem.sum().backward()


def test_output_has_no_band_tag():
    layer = snn.SpikingLinear(4, 3, beta=0.9, b_th=0.2, backward="rate")
    spk = layer(torch.rand(5, 2, 4))
    assert _fused.band_of(spk) is None


def _kept_bytes(layer, x):
    """Bytes of the distinct storages saved for backward by ``layer(x)``, the layer's
    parameters excluded (they exist anyway). Counted by hand: ``metrics.saved_bytes``
    skips tensors that look like leaves, which a view made inside a Function may be."""
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    return out, sum(seen.values())


@pytest.mark.parametrize("readout", [False, True], ids=["hidden", "readout"])
def test_kept_bytes_flat_in_T(readout):
    """Bytes kept for backward do not depend on T (rate); they grow with T (dense)."""
    torch.manual_seed(0)
    kept = {}
    for backward in ("rate", "dense"):
        layer = snn.SpikingLinear(30, 20, beta=0.9, b_th=0.2, readout=readout,
                                  backward=backward)
        for steps in (50, 500, 5000):
            x = (torch.rand(steps, 4, 30) < 0.1).float().requires_grad_()
            out, kept[backward, steps] = _kept_bytes(layer, x)
            out.sum().backward()
            assert x.grad.abs().sum() > 0
    assert kept["rate", 50] == kept["rate", 500] == kept["rate", 5000] > 0
    assert kept["rate", 5000] <= 4 * (4 * 30 + 4 * 20 + 1)  # x̄, e, β
    assert kept["dense", 5000] > 50 * kept["rate", 5000]


def test_mixed_stack_and_fuse(gen):
    """rate, sparse and dense layers in one network; fuse(..., backward="rate")."""
    import snntorch

    torch.manual_seed(0)
    net = nn.Sequential(snn.SpikingLinear(8, 16, beta=0.9, b_th=0.3, backward="sparse"),
                        snn.SpikingLinear(16, 16, beta=0.9, b_th=0.3, backward="rate"),
                        snn.SpikingLinear(16, 12, beta=0.9, b_th=0.3, backward="sparse"),
                        snn.SpikingLinear(12, 4, beta=0.9, readout=True, backward="dense"))
    x = (torch.rand(30, 2, 8, generator=gen) < 0.5).float()
    for layer in net:  # enough activity to reach every layer
        layer.weight.data.mul_(3)
    net(x).sum().backward()
    for layer in net:
        assert layer.weight.grad.abs().sum() > 0

    seq = nn.Sequential(nn.Linear(8, 16), snntorch.Leaky(beta=0.9, init_hidden=True),
                        nn.Linear(16, 4), snntorch.Leaky(beta=0.9, init_hidden=True))
    fused = snn.fuse(seq, backward="rate")
    assert all(m.backward == "rate" for m in fused.modules()
               if isinstance(m, snn.SpikingLinear))


def test_paper_and_demo_accept_rate(tmp_path):
    from snntorch_sparse import demo, paper

    datasets = None
    grads = {}
    for scale in (False, True):
        cfg = paper.Config(dataset="digits", backward="rate", epochs=1, max_batches=1,
                           hidden=16, batch_size=8, grad_scale_T=scale).resolved()
        if datasets is None:
            from snntorch_sparse import data
            datasets = data.load("digits", num_steps=cfg.num_steps)
        torch.manual_seed(0)
        net = cfg.network(64, 10)
        x, y = next(iter(data.loader(datasets[0], 8)))
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        paper.train_step(net, opt, x, y, cfg)
        grads[scale] = net.readout.weight.grad.clone()
    assert grads[False].abs().max() > 0
    torch.testing.assert_close(grads[True], grads[False] / cfg.num_steps)
    assert demo.main(["--backward", "rate", "--epochs", "1", "--max-batches", "1",
                      "--hidden", "16", "--batch-size", "8", "--no-progress",
                      "--out", str(tmp_path)]) == 0


def test_half_precision_on_cpu_computes_in_float32():
    torch.manual_seed(0)
    ref = snn.SpikingLinear(6, 4, beta=0.9, backward="rate")
    half = snn.SpikingLinear(6, 4, beta=0.9, backward="rate", dtype=torch.bfloat16)
    half.weight.data.copy_(ref.weight.data)
    x = (torch.rand(10, 2, 6) < 0.5).float()
    xh = x.to(torch.bfloat16).requires_grad_()
    out = half(xh)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert xh.grad.dtype == torch.bfloat16 and half.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("readout", [False, True], ids=["hidden", "readout"])
def test_input_gradient_is_expanded_not_materialised(readout):
    """∂X[t] = δW/T is one [B, in] tensor broadcast over T (stride 0 in time)."""
    layer = snn.SpikingLinear(6, 4, beta=0.9, readout=readout, backward="rate")
    x = torch.rand(50, 3, 6, requires_grad=True)
    seen = []
    x.register_hook(lambda g: seen.append(g))
    (layer(x) * torch.randn(50, 3, 4)).sum().backward()
    g = seen[0]
    assert g.stride()[0] == 0 and g.shape == x.shape
    assert torch.equal(g[0], g[-1]) and g.abs().sum() > 0
