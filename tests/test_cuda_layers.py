"""End-to-end checks of the fused layers on a GPU: CUDA kernels against the float64
reference computed on the CPU. Skipped (not passed) without a GPU."""

import pytest
import torch

import snntorch_sparse as snn
from snntorch_sparse import reference
from snntorch_sparse._conv import MASKED_DX_MAX_DENSITY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _rel(a, b):
    return ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("backward", ["sparse", "dense"])
@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("in_rate", [0.02, 0.3])
def test_two_layer_stack_matches_reference(backward, reset, in_rate):
    torch.manual_seed(1000 + int(in_rate * 100))
    T, B, n_in, n_hid, n_out = 40, 8, 96, 64, 10
    x = (torch.rand(T, B, n_in, dtype=torch.float64) < in_rate).double()
    f64 = torch.float64  # built in float64, so β is exactly the float64 0.9
    l1 = snn.SpikingLinear(n_in, n_hid, beta=0.9, b_th=0.3, reset_mechanism=reset,
                           backward=backward, dtype=f64)
    l2 = snn.SpikingLinear(n_hid, n_out, beta=0.9, readout=True, backward=backward, dtype=f64)
    with torch.no_grad():
        l1.weight.mul_(4.0)  # some activity in the hidden layer
    b_th = None if backward == "dense" else 0.3
    rid = reference.RESETS.index(reset)

    # Reference on the CPU in float64.
    w1 = l1.weight.detach().clone().requires_grad_()
    w2 = l2.weight.detach().clone().requires_grad_()
    h = reference.spiking_linear(x, w1, None, torch.tensor(0.9, dtype=torch.float64),
                                 torch.tensor(1.0, dtype=torch.float64), reset=rid, b_th=b_th)
    out = reference.spiking_linear(h, w2, None, torch.tensor(0.9, dtype=torch.float64),
                                   torch.tensor(1.0, dtype=torch.float64), readout=True, b_th=b_th)
    target = torch.randn_like(out)
    (out * target).sum().backward()

    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        g1 = l1.to("cuda", dtype)
        g2 = l2.to("cuda", dtype)
        for p in (g1.weight, g2.weight):
            p.grad = None
        xc = x.to("cuda", dtype)
        o = g2(g1(xc))
        assert _rel(o, out.detach()) < tol
        (o * target.to("cuda", dtype)).sum().backward()
        assert _rel(g1.weight.grad, w1.grad) < tol * 10
        assert _rel(g2.weight.grad, w2.grad) < tol * 10


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_layer_close_to_float64(dtype):
    torch.manual_seed(7)
    T, B, n_in, n_out = 30, 16, 128, 64
    x = (torch.rand(T, B, n_in) < 0.05).float()
    layer = snn.SpikingLinear(n_in, n_out, beta=0.9, b_th=0.3)
    with torch.no_grad():
        layer.weight.mul_(4.0)
    ref = snn.SpikingLinear(n_in, n_out, beta=0.9, b_th=0.3, dtype=torch.float64)
    ref.load_state_dict(layer.state_dict())
    spk_ref = ref(x.double())
    half = layer.to("cuda", dtype)
    spk = half(x.to("cuda", dtype))
    assert spk.dtype == dtype and spk.shape == spk_ref.shape
    # Spikes may flip where the membrane is within rounding of θ; require near-agreement.
    agree = (spk.float().cpu() == spk_ref.float()).float().mean().item()
    assert agree > 0.99
    spk.float().sum().backward()
    assert torch.isfinite(half.weight.grad).all()


# the Leaky's band: 45 % of the input (dense transpose for ∂X) or 8 % (the masked kernel)
@pytest.mark.parametrize("backward, b_th", [("sparse", 0.3), ("sparse", 0.05), ("dense", None)])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_conv_stack_matches_reference(backward, b_th, dtype, tol):
    """Leaky sequence → SpikingConv2d (stride 2, groups 2) on the GPU: spikes, the weight
    gradient (over the input spikes) and the input gradient, masked by the Leaky's band
    where that band is narrow (MASKED_DX_MAX_DENSITY), against the CPU float64 reference."""
    torch.manual_seed(11)
    f64 = torch.float64
    T, B = 12, 4
    cur = (torch.rand(T, B, 4, 10, 10, dtype=f64) * 0.7).requires_grad_()
    conv = snn.SpikingConv2d(4, 6, 3, stride=2, padding=1, groups=2, beta=0.75,
                             b_th=b_th or 0.3, backward=backward, dtype=f64)
    with torch.no_grad():
        conv.weight.mul_(3.0)
    beta, theta = torch.tensor(0.875, dtype=f64), torch.tensor(1.0, dtype=f64)
    w = conv.weight.detach().clone().requires_grad_()
    h, mem = reference.lif_sequence(cur, torch.zeros_like(cur[0]), beta, theta, b_th=b_th)
    out = reference.spiking_conv2d(h, w, conv.bias.detach(), torch.tensor(0.75, dtype=f64),
                                   theta, 2, 1, 1, 2, b_th=b_th)
    target = torch.randn_like(out)
    dcur, dw = torch.autograd.grad((out * target).sum(), (cur, w))

    from snntorch_sparse._fused import lif_sequence
    g = conv.to("cuda", dtype)
    c = cur.detach().to("cuda", dtype).requires_grad_()
    hs, _ = lif_sequence(c, None, beta.to("cuda"), theta.to("cuda"), b_th=b_th)
    o = g(hs)
    assert _rel(o, out.detach()) < tol
    (o * target.to("cuda", dtype)).sum().backward()
    assert _rel(g.weight.grad, dw) < tol * 10
    assert _rel(c.grad, dcur) < tol * 10
    if backward == "sparse":
        density = ((mem - theta).abs() < b_th).double().mean()
        assert g._report["dx_masked"] == (density <= MASKED_DX_MAX_DENSITY), density


@pytest.mark.parametrize("form", [None, "trace"])
def test_gpu_runs_a_trace_form_only_when_asked(form):
    """The trace forms lost to the GEMM on a GPU (docs/benchmarks.md): a dense input with few
    outputs in the band, for which the CPU picks the trace form of ∂W, gets the GEMM on
    CUDA, unless the trace form is asked for; either way the CPU's gradients."""
    torch.manual_seed(7)
    layer = snn.SpikingLinear(48, 40, beta=0.85, b_th=0.2, bias=True, dtype=torch.float64)
    layer._dw_form = form
    x = torch.randn(30, 4, 48, dtype=torch.float64)
    target = torch.randn(30, 4, 40, dtype=torch.float64)
    grads = []
    for dev in ("cpu", "cuda"):
        layer.to(dev)
        layer.zero_grad()
        (layer(x.to(dev)) * target.to(dev)).sum().backward()
        # copies: moving the layer moves its .grad tensors in place
        grads.append([p.grad.to("cpu", copy=True) for p in (layer.weight, layer.bias)])
        assert layer._report["dw"] == ("trace" if dev == "cpu" or form else "dense"), dev
    for got, want in zip(*reversed(grads)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
