"""Regression tests for the traps of issue 8: a gradient is never silently wrong, a bad
argument is named, no call crashes or hangs the interpreter."""

import math

import pytest
import torch

import snntorch_sparse as snn
from snntorch_sparse import _fused, reference as R, surrogate
from snntorch_sparse.reference import ATAN

F64 = torch.float64


# ------------------------------------------------- 1. the band tag cannot go stale
def _hidden_then_linear(transform, tagged):
    """Gradients of (x, W1, W2, extra) for x → SpikingLinear → transform → SpikingLinear.

    ``tagged=False`` removes the band tag before ``transform``: the unmasked ground truth.
    """
    torch.manual_seed(0)
    l1 = snn.SpikingLinear(12, 10, beta=0.9, threshold=0.3, b_th=0.2, dtype=F64)
    l2 = snn.SpikingLinear(10, 6, beta=0.8, threshold=0.2, b_th=0.3, dtype=F64)
    x = (torch.rand(9, 4, 12, dtype=F64) * 0.8).requires_grad_()
    extra = torch.randn(9, 4, 10, dtype=F64, requires_grad=True)
    h = l1(x)
    assert _fused.band_of(h) is not None
    if not tagged:
        del h._snn_sparse_band
    out = l2(transform(h, extra))
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=F64).view(out.shape)).sum()
    return torch.autograd.grad(loss, [x, l1.weight, l2.weight, extra], allow_unused=True)


def _residual(h, skip):
    h += skip
    return h


def _gain(h, g):
    h.mul_(g)
    return h


def _slice_write(h, g):
    h[2:5] = g[2:5]
    return h


def _through_view(h, g):
    h.view(36, 10)[:7].add_(g.view(36, 10)[:7])
    return h


TRANSFORMS = {
    "residual_add": _residual,
    "gain_mul": _gain,
    "slice_assign": _slice_write,
    "slice": lambda h, g: torch.cat([h[:5], h[5:] + g[5:]]),
    "view": lambda h, g: h.view(36, 10).add_(g.view(36, 10)).view(9, 4, 10),
    "in_place_through_view": _through_view,
    "clone": lambda h, g: h.clone().add_(g),
    "cat": lambda h, g: torch.cat([h[:, :2], g[:, 2:]], dim=1),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_band_tag_never_masks_a_modified_input(name):
    got = _hidden_then_linear(TRANSFORMS[name], tagged=True)
    want = _hidden_then_linear(TRANSFORMS[name], tagged=False)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert got[3].count_nonzero() > 0


@pytest.mark.parametrize("name", ["residual_add", "gain_mul", "slice_assign",
                                  "in_place_through_view"])
def test_leaky_sequence_band_tag_never_masks_a_modified_input(name):
    """Leaky.forward_sequence → in-place change → SpikingLinear: the gradients equal plain
    autograd on reference.py, where no band hint exists."""
    torch.manual_seed(0)
    cur = (torch.rand(9, 4, 10, dtype=F64) * 0.5).requires_grad_()
    extra = torch.randn(9, 4, 10, requires_grad=True)
    l2 = snn.SpikingLinear(10, 6, beta=0.8, threshold=0.2, b_th=0.3)
    w_out = torch.randn(9, 4, 6)
    h, _ = snn.Leaky(beta=0.9, threshold=0.5, b_th=0.3).forward_sequence(cur)
    assert _fused.band_of(h) is not None and h.dtype == torch.float32
    loss = (l2(TRANSFORMS[name](h, extra)) * w_out).sum()
    got = torch.autograd.grad(loss, [cur, extra, l2.weight], allow_unused=True)

    h_ref = R.lif_sequence(cur, torch.zeros_like(cur[0]), torch.tensor(0.9, dtype=F64),
                           torch.tensor(0.5, dtype=F64), b_th=0.3)[0].float()
    out_ref = R.spiking_linear(TRANSFORMS[name](h_ref, extra), l2.weight, None, l2.beta,
                               l2.threshold, b_th=0.3)
    want = torch.autograd.grad((out_ref * w_out).sum(), [cur, extra, l2.weight],
                               allow_unused=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert not l2._report["dx_masked"] and got[1].count_nonzero() > 0


def test_band_tag_voided_by_data_replacement():
    """``t.data = ...`` bumps no version counter; the tag still notices."""
    h = snn.SpikingLinear(12, 10, beta=0.9, threshold=0.3, b_th=0.2)(torch.rand(9, 4, 12))
    assert _fused.band_of(h) is not None
    h.data = torch.ones_like(h)
    assert _fused.band_of(h) is None


def test_band_tag_of_leaky_sequence_voided_by_in_place_ops():
    lif = snn.Leaky(beta=0.9, b_th=0.3)
    spk, _ = lif.forward_sequence(torch.rand(7, 3, 6, requires_grad=True) * 1.2)
    assert _fused.band_of(spk) is not None
    spk.mul_(2.0)
    assert _fused.band_of(spk) is None


def test_band_tag_kept_while_unmodified():
    """The hint still does its job: an unmodified spike output masks ∂x (eq. 12)."""
    l1 = snn.SpikingLinear(12, 10, beta=0.9, threshold=0.3, b_th=0.2)
    l2 = snn.SpikingLinear(10, 6, beta=0.8, b_th=0.3)
    h = l1(torch.rand(9, 4, 12) * 0.8)
    h.retain_grad()
    l2(h).sum().backward()
    assert l2._report["dx_masked"]


# ---------------------------------------------------- 2. double backward is an error
def _double(loss_of):
    """Differentiate a create_graph gradient again; returns the error raised."""
    torch.manual_seed(0)
    x = (torch.rand(6, 3, 8, dtype=F64) * 1.5).requires_grad_()
    loss, params = loss_of(x)
    grads = torch.autograd.grad(loss, [x] + params, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported by snntorch_sparse"):
        sum(g.pow(2).sum() for g in grads if g.requires_grad).backward()


def test_double_backward_surrogate_raises():
    lif = snn.Leaky(beta=0.9, b_th=0.5)
    _double(lambda x: (lif(x[0], torch.zeros_like(x[0]))[0].sum(), []))


def test_double_backward_forward_sequence_raises():
    lif = snn.Leaky(beta=0.9, b_th=0.5)
    _double(lambda x: (lif.forward_sequence(x)[1].pow(2).sum(), []))


@pytest.mark.parametrize("readout", [False, True])
def test_double_backward_spiking_linear_raises(readout):
    layer = snn.SpikingLinear(8, 5, beta=0.9, readout=readout, dtype=F64)
    _double(lambda x: (layer(x).pow(2).sum(), [layer.weight]))


def test_create_graph_first_order_values_unchanged():
    """create_graph=True alone (no second differentiation) still gives the gradient."""
    layer = snn.SpikingLinear(8, 5, beta=0.9, readout=True, dtype=F64)
    x = torch.rand(6, 3, 8, dtype=F64, requires_grad=True)
    g1, = torch.autograd.grad(layer(x).pow(2).sum(), x, create_graph=True)
    g2, = torch.autograd.grad(layer(x).pow(2).sum(), x)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)


# ------------------------------------------------ 4, 5. one validator, named arguments
BAD_B_TH = [0.0, -0.2, math.nan, -math.inf, math.inf, "wide"]


@pytest.mark.parametrize("b_th", BAD_B_TH)
def test_every_entry_point_rejects_bad_b_th(b_th):
    cur = torch.rand(4, 2, 3)
    calls = [
        lambda: _fused.lif_sequence(cur, None, torch.tensor(0.9), torch.tensor(1.0), b_th=b_th),
        lambda: snn.Leaky(beta=0.9, b_th=b_th),
        lambda: snn.SpikingLinear(3, 2, beta=0.9, b_th=b_th),
        lambda: surrogate.atan(b_th=b_th),
        lambda: surrogate.fast_sigmoid(b_th=b_th),
        lambda: snn.sparsify(torch.nn.Sequential(snn.Leaky(beta=0.9)), b_th=b_th),
        lambda: setattr(snn.Leaky(beta=0.9), "b_th", b_th),
        lambda: setattr(snn.SpikingLinear(3, 2, beta=0.9), "b_th", b_th),
        lambda: surrogate.sparse(surrogate.sigmoid(), b_th=b_th),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="b_th"):
            call()


def test_forward_sequence_rejects_empty_sequence():
    with pytest.raises(ValueError, match="T = 0"):
        snn.Leaky(beta=0.9).forward_sequence(torch.rand(0, 2, 3))


def test_spiking_linear_b_th_setter_rebands_its_surrogate():
    layer = snn.SpikingLinear(3, 2, beta=0.9, b_th=0.2)
    layer.b_th = 0.5
    assert layer.b_th == 0.5 and layer.spike_grad.b_th == 0.5
    layer.b_th = None
    assert layer._config().neuron.b_th == math.inf


@pytest.mark.parametrize("mem", [0.5, "0.5", [0.5]], ids=["float", "str", "list"])
def test_forward_sequence_names_a_bad_mem(mem):
    with pytest.raises(TypeError, match="mem must be a tensor"):
        snn.Leaky(beta=0.9).forward_sequence(torch.rand(4, 2, 3), mem=mem)


def test_lif_sequence_names_a_bad_mem0():
    with pytest.raises(TypeError, match="mem0"):
        _fused.lif_sequence(torch.rand(4, 2, 3), 0.5, torch.tensor(0.9), torch.tensor(1.0),
                            shape=ATAN)


# ------------------------------------------- 6. the ∂W form never hides a NaN or Inf
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_weight_gradient_form_keeps_non_finite_input_visible(bad):
    """A graded, sparse input (where the trace form would be cheapest) with one NaN/Inf:
    the automatically chosen form shows it in ∂W exactly where the input-spike form
    does (the input's column; a NaN membrane is outside the band, so no further)."""
    torch.manual_seed(0)
    x = (torch.rand(40, 4, 30, dtype=F64) < 0.2).to(F64) * 0.5
    x[3, 1, 7] = bad
    grads = {}
    for form in (None, "spikes"):
        torch.manual_seed(1)
        layer = snn.SpikingLinear(30, 100, beta=0.9, threshold=0.3, b_th=0.05, dtype=F64)
        torch.nn.init.uniform_(layer.weight, -0.1, 0.3)
        layer._dw_form = form
        layer(x).sum().backward()
        grads[form] = layer.weight.grad
    assert torch.equal(grads[None].isnan(), grads["spikes"].isnan())
    assert grads[None][:, 7].isnan().all()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_dense_input_with_a_non_finite_value_keeps_the_gemm(bad):
    """A dense input is offered the trace form only when finite: with one NaN/Inf the
    GEMM forms ∂W and shows it in the input's whole column, as without the trace form."""
    torch.manual_seed(0)
    x = torch.randn(40, 4, 30, dtype=F64)
    x[3, 1, 7] = bad
    layer = snn.SpikingLinear(30, 100, beta=0.9, threshold=0.3, b_th=0.05, dtype=F64)
    layer(x).sum().backward()
    assert layer._report["dw"] == "dense"
    assert layer.weight.grad[:, 7].isnan().all()
    layer.weight.grad = None
    layer(x.nan_to_num()).sum().backward()  # the same input, finite: the trace form
    assert layer._report["dw"] == "trace"


def test_trace_form_still_serves_binary_input():
    torch.manual_seed(0)
    layer = snn.SpikingLinear(30, 100, beta=0.9, threshold=0.3, b_th=0.05, dtype=F64)
    torch.nn.init.uniform_(layer.weight, -0.1, 0.3)
    layer((torch.rand(40, 4, 30, dtype=F64) < 0.2).to(F64)).sum().backward()
    assert layer._report["dw"] == "trace"


# --------------------------------------- 8. float16/bfloat16 on the CPU, like snnTorch
HALF = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", HALF)
def test_per_step_leaky_half_matches_snntorch(dtype):
    import snntorch

    torch.manual_seed(0)
    cur = (torch.rand(6, 3, 8) * 1.5).to(dtype)
    outs = []
    for cls, kw in ((snntorch.Leaky, {}), (snn.Leaky, {"b_th": None})):
        lif = cls(beta=0.9, **kw)
        c = cur.clone().requires_grad_()
        mem, loss = torch.zeros(3, 8, dtype=dtype), 0
        for t in range(6):
            spk, mem = lif(c[t], mem)
            loss = loss + spk.sum() + 0.1 * mem.sum()
        loss.backward()
        outs.append((spk, mem, c.grad))
    for got, want in zip(outs[1], outs[0]):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", HALF)
def test_forward_sequence_half_equals_its_per_step_loop(dtype):
    torch.manual_seed(0)
    cur = (torch.rand(12, 3, 8) * 1.5).to(dtype)
    lif = snn.Leaky(beta=0.9, b_th=0.4)
    c1 = cur.clone().requires_grad_()
    spk, mem = lif.forward_sequence(c1)
    (spk.sum() + 0.1 * mem.sum()).backward()
    c2 = cur.clone().requires_grad_()
    m, spks, mems = torch.zeros(3, 8, dtype=dtype), [], []
    for t in range(12):
        s, m = lif(c2[t], m)
        spks.append(s)
        mems.append(m)
    (torch.stack(spks).sum() + 0.1 * torch.stack(mems).sum()).backward()
    assert spk.dtype == spks[0].dtype and mem.dtype == mems[0].dtype and c1.grad.dtype == dtype
    torch.testing.assert_close(spk, torch.stack(spks))
    torch.testing.assert_close(mem, torch.stack(mems))
    torch.testing.assert_close(c1.grad, c2.grad)
    assert c1.grad.count_nonzero() > 0


@pytest.mark.parametrize("dtype", HALF)
def test_spiking_linear_half_on_cpu_computes_in_float32(dtype):
    torch.manual_seed(0)
    grads, outs = {}, {}
    x = (torch.rand(10, 4, 16) < 0.3).to(dtype)
    for dt in (dtype, torch.float32):
        torch.manual_seed(1)
        hidden = snn.SpikingLinear(16, 12, beta=0.9, threshold=0.3, b_th=0.3, dtype=dtype)
        readout = snn.SpikingLinear(12, 5, beta=0.9, readout=True, dtype=dtype)
        hidden.to(dt), readout.to(dt)
        xi = x.to(dt).clone().requires_grad_()
        out = readout(hidden(xi))
        out.max(0).values.sum().backward()
        outs[dt] = out
        grads[dt] = (xi.grad, hidden.weight.grad, readout.weight.grad)
    assert outs[dtype].dtype == dtype
    torch.testing.assert_close(outs[dtype], outs[torch.float32].to(dtype))
    for g, w in zip(grads[dtype], grads[torch.float32]):
        assert g.dtype == dtype and w.count_nonzero() > 0
        # layer boundaries round the gradient to half precision: compare at that scale
        torch.testing.assert_close(g.float(), w, rtol=2e-2, atol=4e-3 * float(w.abs().max()))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("make", [surrogate.atan, surrogate.fast_sigmoid, surrogate.sigmoid,
                                  surrogate.triangular, surrogate.straight_through])
def test_surrogates_accept_half_on_cpu(dtype, make):
    sg = make(b_th=0.3)
    u = (torch.rand(200) - 0.5).to(dtype)
    got, want = u.clone().requires_grad_(), u.float().requires_grad_()
    sg(got).sum().backward()
    sg(want).sum().backward()
    assert got.grad.dtype == dtype and want.grad.count_nonzero() > 0
    torch.testing.assert_close(got.grad, want.grad.to(dtype))
