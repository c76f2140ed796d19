"""``SpikingLinear`` (fused Linear + Leaky over the sequence) against ``reference.py``.

Inputs are binary spikes (or values on a coarse dyadic grid) and weights are rounded to
multiples of 2⁻¹⁰, so every current is exact in float64 whatever the GEMM's summation
order: the outputs must be bit-identical to the reference, the gradients equal within
rounding.
"""

import copy
import math

import pytest
import snntorch
import torch
from torch.func import functional_call

from snntorch_sparse import _fused, reference as R, surrogate
from snntorch_sparse.metrics import saved_bytes
from snntorch_sparse.spiking_linear import SpikingLinear

DT = torch.float64
T, B, N_IN, N_OUT = 30, 3, 24, 10
# Band activity levels: (input spike rate, weight mean, weight std, b_th, band fraction range)
ACTIVITY = {
    "0%": (0.2, None, 0.1, 0.2, (0.0, 0.0)),  # weights ≤ 0: the membrane never nears θ
    "2%": (0.2, 0.04, 0.15, 0.03, (0.003, 0.08)),
    "30%": (0.2, 0.06, 0.25, 0.4, (0.05, 0.6)),
    "100%": (0.2, 0.06, 0.25, 1e9, (1.0, 1.0)),
    "dense": (0.2, 0.06, 0.25, None, (1.0, 1.0)),
}
RESETS = ["subtract", "zero", "none"]


def _grid(t, step=2**-10):
    return torch.round(t / step) * step


def _spikes(rate, shape=(T, B, N_IN)):
    return (torch.rand(shape) < rate).to(DT)


def _layer(level, n_in=N_IN, n_out=N_OUT, **kw):
    rate, mean, std, b_th, _ = ACTIVITY[level]
    layer = SpikingLinear(n_in, n_out, b_th=b_th, dtype=DT, **kw)
    with torch.no_grad():
        w = torch.randn(n_out, n_in, dtype=DT) * std
        layer.weight.copy_(_grid(-w.abs() if mean is None else w + mean))
        if layer.bias is not None:
            layer.bias.copy_(_grid(torch.randn(n_out, dtype=DT) * 0.05))
    return layer


def _reference(layer, x, mem0=None):
    reset = R.RESETS.index(layer.reset_mechanism)
    b_th = math.inf if layer.b_th is None or layer.backward == "dense" else layer.b_th
    return R.spiking_linear(x, layer.weight, layer.bias, layer.beta, layer.threshold,
                            layer.graded_spikes_factor, reset, layer.spike_grad.shape,
                            layer.spike_grad.p, b_th, layer.readout, mem0)


def _membrane(layer, x):
    """The reference membrane (to measure the band activity)."""
    cur = x @ layer.weight.t() + (0 if layer.bias is None else layer.bias)
    return R.lif_sequence(cur, torch.zeros_like(cur[0]), layer.beta, layer.threshold,
                          reset=R.RESETS.index(layer.reset_mechanism))[1]


def _grads(out, ref, wrt):
    w = torch.randn_like(out)
    got = torch.autograd.grad((out * w).sum(), wrt, allow_unused=True)
    want = torch.autograd.grad((ref * w).sum(), wrt, allow_unused=True)
    return got, want


def _assert_grads(got, want):
    for g, w in zip(got, want):
        if w is None:
            assert g is None or not g.any()
            continue
        assert g is not None and g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


# configurations: (layer kwargs, per-neuron β/θ, initial membrane)
CONFIGS = {
    "plain": (dict(beta=0.9), False, False),
    "full": (dict(beta=0.9, bias=True, learn_beta=True, learn_threshold=True,
                  graded_spikes_factor=1.5), True, True),
    "dense": (dict(beta=0.9, bias=True, learn_threshold=True, backward="dense"), True, False),
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("level", list(ACTIVITY))
@pytest.mark.parametrize("time_chunk", [None, 7])  # 7 → chunks of 16 steps (whole words)
def test_matches_reference(level, reset, config, time_chunk):
    kw, per_neuron, with_mem0 = CONFIGS[config]
    kw = dict(kw, time_chunk=time_chunk)
    if per_neuron:
        kw["beta"] = torch.rand(N_OUT, dtype=DT) * 0.3 + 0.65
        kw["threshold"] = torch.rand(N_OUT, dtype=DT) * 0.4 + 0.8
    layer = _layer(level, reset_mechanism=reset, **kw)
    x = _spikes(ACTIVITY[level][0]).requires_grad_()
    mem0 = (torch.rand(B, N_OUT, dtype=DT) * 0.5).requires_grad_() if with_mem0 else None

    out = layer(x, mem0)
    ref = _reference(layer, x, mem0)
    assert out.dtype == DT and out.shape == (T, B, N_OUT)
    assert torch.equal(out, ref)
    assert layer._report["chunks"] == (1 if time_chunk is None else 2)
    lo, hi = ACTIVITY[level][4]
    if layer.b_th is not None and mem0 is None:
        band = ((_membrane(layer, x) - layer.threshold).abs() < layer.b_th).double().mean()
        assert lo <= band <= hi

    wrt = [x, layer.weight] + [t for t in (layer.bias, layer.beta, layer.threshold, mem0)
                               if t is not None and t.requires_grad]
    _assert_grads(*_grads(out, ref, wrt))


@pytest.mark.parametrize("form", ["spikes", "trace"])
@pytest.mark.parametrize("reset", ["subtract", "none"])
@pytest.mark.parametrize("level", ["0%", "2%", "30%", "100%"])
@pytest.mark.parametrize("values", ["binary", "graded"])
def test_weight_gradient_forms(form, reset, level, values):
    layer = _layer(level, reset_mechanism=reset, beta=0.85, bias=True)
    layer._dw_form = form
    x = _spikes(ACTIVITY[level][0])
    if values == "graded":  # sparse but not binary: the compact input keeps its values
        x = x * _grid(torch.randn_like(x), 2**-6)
    out = layer(x)
    ref = _reference(layer, x)
    assert torch.equal(out, ref)
    _assert_grads(*_grads(out, ref, [layer.weight, layer.bias]))
    assert layer._report["dw"] == form


def _expected_form(layer, x, out):
    """The documented rule: above 25 % nonzeros the input stays dense, and ∂W is the trace
    form when valid (and the input finite) with 8·nnz(band) < T·B·out, else the GEMM;
    below, the smaller of nnz(X)·out (spikes) and in·(T·B + nnz(band)) (trace, when valid
    and the input binary), the latter times ONE_PASS_TRACE_FACTOR where the spikes form
    runs as one op (CPU, no input gradient asked here)."""
    nnz_x = int((x != 0).sum())
    mem = _membrane(layer, x)
    nnz_band = int(((mem - layer.threshold).abs() < layer.b_th).sum())
    t, b, n_in = x.shape
    valid = layer.beta.numel() == 1 and layer.reset_mechanism != "zero"
    if nnz_x > 0.25 * x.numel():
        pays = 8 * nnz_band < t * b * layer.out_features
        return "trace" if valid and bool(x.isfinite().all()) and pays else "dense"
    trace_ok = valid and bool(((x == 0) | (x == 1)).all())
    one_pass = x.device.type == "cpu" and not x.requires_grad
    cost_trace = n_in * (t * b + nnz_band) * (_fused.ONE_PASS_TRACE_FACTOR if one_pass else 1)
    return "trace" if trace_ok and cost_trace < nnz_x * layer.out_features else "spikes"


@pytest.mark.parametrize("rate,n_out,per_neuron,expect", [
    (0.2, 100, False, "trace"),     # dense-ish input, few active outputs
    (0.004, 100, False, "spikes"),  # very sparse input
    (0.5, 20, False, "trace"),      # too dense to keep compact: trace form of a dense input
    (0.5, 20, True, "dense"),       # ... unless the trace form is invalid: the GEMM
    (0.2, 100, True, "spikes"),     # per-neuron β: no trace form
])
def test_weight_gradient_form_choice(rate, n_out, per_neuron, expect):
    beta = torch.full((n_out,), 0.9, dtype=DT) if per_neuron else 0.9
    layer = _layer("2%", n_out=n_out, beta=beta)
    x = _spikes(rate)
    out = layer(x)
    assert _expected_form(layer, x, out) == expect
    ref = _reference(layer, x)
    _assert_grads(*_grads(out, ref, [layer.weight]))
    assert layer._report["dw"] == expect


def test_one_pass_outweighs_a_trace_form_less_than_5x_smaller():
    """Where the input-spike form runs as one op (CPU), a trace form that counts fewer
    multiply-adds, but not ONE_PASS_TRACE_FACTOR times fewer, loses: the raw counts
    would pick it here."""
    layer = _layer("2%", n_out=100, beta=0.9)
    x = _spikes(0.06)
    out = layer(x)
    nnz_x = int((x != 0).sum())
    nnz_band = int(((_membrane(layer, x) - layer.threshold).abs() < layer.b_th).sum())
    t, b, n_in = x.shape
    trace = n_in * (t * b + nnz_band)
    assert trace < nnz_x * 100 < _fused.ONE_PASS_TRACE_FACTOR * trace
    _assert_grads(*_grads(out, _reference(layer, x), [layer.weight]))
    assert layer._report["dw"] == "spikes" and layer._report["bwd"] == "one pass"


@pytest.mark.parametrize("form", [None, "trace"])
@pytest.mark.parametrize("reset", ["subtract", "none"])
@pytest.mark.parametrize("level", ["0%", "2%", "30%"])
def test_trace_form_of_a_dense_input(form, reset, level):
    """A dense graded input (the Open Neuromorphic benchmark's randn): ∂W by the trace
    form (``dw_trace_dense``) equals the reference's; chosen by itself when few outputs
    are in the band."""
    layer = _layer(level, reset_mechanism=reset, beta=0.85, bias=True)
    layer._dw_form = form
    x = _grid(torch.randn(T, B, N_IN, dtype=DT), 2**-6)
    out = layer(x)
    ref = _reference(layer, x)
    assert torch.equal(out, ref)
    _assert_grads(*_grads(out, ref, [layer.weight, layer.bias]))
    assert layer._report["dw"] == (form or _expected_form(layer, x, out))


def test_trace_form_refused_where_invalid():
    layer = _layer("2%", beta=0.9, reset_mechanism="zero")
    layer._dw_form = "trace"
    out = layer(_spikes(0.2))
    with pytest.raises(RuntimeError, match="trace"):
        out.sum().backward()


@pytest.mark.parametrize("backward", ["sparse", "dense"])
@pytest.mark.parametrize("level", ["0%", "2%", "30%"])
def test_readout_matches_reference(backward, level):
    layer = _layer(level, beta=torch.rand(N_OUT, dtype=DT) * 0.3 + 0.65, bias=True,
                   readout=True, learn_beta=True, backward=backward)
    x = _spikes(ACTIVITY[level][0]).requires_grad_()
    mem = layer(x)
    ref = _reference(layer, x)
    assert torch.equal(mem, ref)
    assert _fused.band_of(mem) is None
    _assert_grads(*_grads(mem, ref, [x, layer.weight, layer.bias, layer.beta]))
    assert layer._report["dw"] == ("spikes" if backward == "sparse" else "dense")


@pytest.mark.parametrize("backward", ["sparse", "dense"])
@pytest.mark.parametrize("x_kind", ["spikes", "dense"])
def test_readout_gradcheck(backward, x_kind):
    layer = SpikingLinear(5, 3, beta=torch.tensor([0.6, 0.8, 0.9]), bias=True, readout=True,
                          learn_beta=True, backward=backward, dtype=DT)
    shape = (6, 2, 5)
    x = _spikes(0.2, shape) if x_kind == "spikes" else torch.randn(shape, dtype=DT)
    x.requires_grad_()
    mem0 = torch.randn(2, 3, dtype=DT, requires_grad=True)
    params = (layer.weight.detach().clone().requires_grad_(),
              layer.bias.detach().clone().requires_grad_(),
              layer.beta.detach().clone().requires_grad_())

    def fn(x, mem0, w, b, beta):
        return functional_call(layer, {"weight": w, "bias": b, "beta": beta}, (x, mem0))

    assert torch.autograd.gradcheck(fn, (x, mem0) + params)


@pytest.mark.parametrize("level", ["2%", "30%"])
@pytest.mark.parametrize("second", ["hidden", "readout"])
def test_stacked_input_gradient_only_where_upstream_active(level, second):
    rate, _, _, b_th, _ = ACTIVITY[level]
    l1 = _layer(level, beta=0.9, bias=True, learn_threshold=True)
    l2 = _layer("30%", n_in=N_OUT, n_out=7, beta=0.8, readout=second == "readout",
                learn_beta=True)
    with torch.no_grad():  # make layer 2 busy enough that its gradient reaches layer 1
        l2.weight.mul_(4)
    x = _spikes(rate).requires_grad_()

    spk1 = l1(x)
    spk1.retain_grad()
    out = l2(spk1)
    spk1_r = _reference(l1, x)
    out_r = _reference(l2, spk1_r)
    assert torch.equal(spk1, spk1_r) and torch.equal(out, out_r)
    assert spk1.sum() > 0  # layer 2 sees spikes
    params = [x, l1.weight, l1.bias, l1.threshold, l2.weight, l2.beta]
    w = torch.randn_like(out)
    (out * w).sum().backward()
    got = [p.grad for p in params]
    want = torch.autograd.grad((out_r * w).sum(), params)
    _assert_grads(got, want)
    assert l2._report["dx_masked"] and not l1._report["dx_masked"]

    # the masked input gradient of layer 2 equals the dense one inside layer 1's band
    leaf = spk1_r.detach().requires_grad_()
    (dense,) = torch.autograd.grad((_reference(l2, leaf) * w).sum(), leaf)
    band = (_membrane(l1, x) - l1.threshold).abs() < b_th
    assert band.any() and not band.all()
    torch.testing.assert_close(spk1.grad[band], dense[band], rtol=1e-10, atol=1e-12)
    assert not spk1.grad[~band].any()


@pytest.mark.parametrize("second", ["hidden", "readout"])
@pytest.mark.parametrize("reset", RESETS)
def test_time_chunks_equal_the_whole_sequence(second, reset):
    """Two stacked layers in chunks of 5 steps (uneven: 23 = 5+5+5+5+3) against the same
    layers unchunked: equal outputs, equal gradients (∂W summed per chunk: to rounding),
    the masked input gradient included."""
    n_in, hidden, n_out, steps, batch = 24, 16, 8, 23, 4
    torch.manual_seed(3)
    x = _spikes(0.2, (steps, batch, n_in)).requires_grad_()
    mem0 = (torch.rand(batch, hidden, dtype=DT) * 0.5).requires_grad_()
    runs = []
    for chunk in (None, 5):
        torch.manual_seed(4)
        l1 = _layer("30%", n_in=n_in, n_out=hidden, beta=torch.rand(hidden, dtype=DT) * 0.3 + 0.6,
                    bias=True, learn_beta=True, learn_threshold=True, reset_mechanism=reset,
                    time_chunk=chunk)
        l2 = _layer("30%", n_in=hidden, n_out=n_out, beta=0.8, readout=second == "readout",
                    time_chunk=chunk)
        with torch.no_grad():
            l2.weight.mul_(4)
        out = l2(l1(x, mem0))
        params = [x, mem0, l1.weight, l1.bias, l1.beta, l1.threshold, l2.weight]
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel(), dtype=DT)
                                     .view(out.shape)).sum(), params)
        runs.append((out, grads, l1._report["chunks"], l2._report["chunks"]))
        assert l2._report["dx_masked"]
    (out_a, grads_a, *_), (out_b, grads_b, c1, c2) = runs
    assert (c1, c2) == (5, 5)
    assert torch.equal(out_a, out_b)
    for a, b in zip(grads_a, grads_b):
        assert a.abs().sum() > 0
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("reset", ["subtract", "none"])
def test_time_chunks_of_a_dense_input_share_one_trace_walk(reset):
    """A dense input's trace form runs once over the whole input after the chunks, on
    their stacked active sets: ∂W bit-equal to the unchunked layer's (the same walk),
    the other gradients to rounding."""
    n_in, n_out, steps, batch = 24, 40, 23, 4
    torch.manual_seed(5)
    x = _grid(torch.randn(steps, batch, n_in, dtype=DT), 2**-6).requires_grad_()
    runs = []
    for chunk in (None, 5):
        torch.manual_seed(6)
        layer = _layer("2%", n_in=n_in, n_out=n_out, beta=0.85, bias=True,
                       reset_mechanism=reset, time_chunk=chunk)
        out = layer(x)
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel(), dtype=DT)
                                     .view(out.shape)).sum(), [layer.weight, layer.bias, x])
        runs.append((out, grads, layer._report["chunks"], layer._report["dw"]))
    (out_a, grads_a, ca, form_a), (out_b, grads_b, cb, form_b) = runs
    assert (ca, cb, form_a, form_b) == (1, 5, "trace", "trace")
    assert torch.equal(out_a, out_b)
    assert grads_a[0].abs().sum() > 0 and torch.equal(grads_a[0], grads_b[0])
    for a, b in zip(grads_a[1:], grads_b[1:]):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-13)
    out, ref = layer(x), _reference(layer, x)  # and the trace form's ∂W is the reference's
    _assert_grads(*_grads(out, ref, [layer.weight]))


def test_auto_chunks_only_long_sequences():
    # SHD at B = 128 (51 MB per [T·B, out] tensor) runs whole: chunking would cost time there.
    assert _fused.chunk_steps("auto", 500, 128, 200, 200, 4) == 500
    # T = 20 000, B = 8 (128 MB): chunks of at most 40 MiB.
    steps = _fused.chunk_steps("auto", 20_000, 8, 200, 200, 4)
    assert 20_000 // 4 < steps < 20_000 and steps * 8 * 200 * 4 <= _fused.CHUNK_BYTES
    assert _fused.chunk_steps(None, 20_000, 8, 200, 200, 4) == 20_000


@pytest.mark.parametrize("bad", [0, -3, 2.5, "whole"])
def test_time_chunk_must_be_steps(bad):
    with pytest.raises(ValueError, match="time_chunk"):
        SpikingLinear(4, 3, beta=0.9, time_chunk=bad)


def test_leaky_sequence_feeds_masked_input_gradient():
    cur = (torch.randn(T, B, N_IN, dtype=DT) * 0.3 + 0.1).requires_grad_()
    beta, theta = torch.tensor(0.9, dtype=DT), torch.tensor(1.0, dtype=DT)
    spk, _ = _fused.lif_sequence(cur, None, beta, theta, b_th=0.1)
    layer = _layer("30%", beta=0.9, readout=True)
    out = layer(spk)
    spk_r, _ = R.lif_sequence(cur, torch.zeros_like(cur[0]), beta, theta, b_th=0.1)
    _assert_grads(*_grads(out, _reference(layer, spk_r), [cur, layer.weight]))
    assert layer._report["dx_masked"]


def test_snntorch_surrogates_are_mapped():
    layer = SpikingLinear(4, 3, beta=0.9, spike_grad=snntorch.surrogate.fast_sigmoid(slope=10),
                          b_th=0.3)
    assert (layer.spike_grad.shape, layer.spike_grad.p, layer.b_th) == (R.FAST_SIGMOID, 10.0, 0.3)
    ours = SpikingLinear(4, 3, beta=0.9, spike_grad=surrogate.sigmoid(slope=5, b_th=0.1))
    assert (ours.spike_grad.shape, ours.spike_grad.p, ours.b_th) == (R.SIGMOID, 5.0,
                                                                     surrogate.DEFAULT_B_TH)
    default = SpikingLinear(4, 3, beta=0.9, b_th=None)
    assert (default.spike_grad.shape, default.spike_grad.p, default.b_th) == (R.ATAN, 2.0, None)


def test_default_init_is_nn_linear():
    torch.manual_seed(3)
    lin = torch.nn.Linear(30, 20, bias=True)
    torch.manual_seed(3)
    layer = SpikingLinear(30, 20, beta=0.9, bias=True)
    assert torch.equal(layer.weight, lin.weight) and torch.equal(layer.bias, lin.bias)


def _compact_bytes(nnz_x, n_in, values):
    return 8 * (n_in + 1) + 4 * nnz_x + (8 * nnz_x if values else 0)


@pytest.mark.parametrize("case", ["binary", "graded", "dense_input", "dense_backward",
                                  "upstream"])
def test_saved_bytes_follow_compact_formula(case):
    t, b, n_in, n_out = 60, 4, 64, 32
    layer = _layer("2%", n_in=n_in, n_out=n_out, beta=0.9,
                   backward="dense" if case == "dense_backward" else "sparse")
    rate = 0.6 if case == "dense_input" else 0.05
    x = _spikes(rate, (t, b, n_in))
    if case == "graded":
        x = x * _grid(torch.randn_like(x), 2**-6)
    upstream = 0
    if case == "upstream":  # an input marked with an upstream band (whose bits are kept)
        x.requires_grad_()
        _fused.tag_band(x, _fused.pack_bits(torch.rand(x.shape) < 0.1))
        upstream = 4 * ((x.numel() + 31) // 32)
    with saved_bytes() as kept:
        out = layer(x)
    nnz_x = int((x != 0).sum())
    mem = _membrane(layer, x)
    words = (out.numel() + 31) // 32
    beta = 8  # the clamped scalar β
    if case in ("dense_input", "dense_backward"):
        vals = out.numel() if case == "dense_backward" else int(
            ((mem - layer.threshold).abs() < layer.b_th).sum())
        bits = 0 if case == "dense_backward" else 4 * words
        expected = 8 * x.numel() + bits + 8 * vals + beta
    else:
        nnz_band = int(((mem - layer.threshold).abs() < layer.b_th).sum())
        assert 0 < nnz_band < 0.1 * out.numel()
        expected = (_compact_bytes(nnz_x, n_in, case == "graded") + 4 * words
                    + 8 * nnz_band + beta + upstream)
        # far below what the dense baseline keeps (input + membrane, float64)
        assert kept["bytes"] < 0.3 * 8 * (x.numel() + out.numel())
    assert kept["bytes"] == expected


def test_bad_input():
    layer = SpikingLinear(6, 4, beta=0.9)
    with pytest.raises(ValueError, match=r"\[T, B, in_features=6\]"):
        layer(torch.rand(5, 6))
    with pytest.raises(ValueError, match="in_features=6"):
        layer(torch.rand(5, 2, 7))
    with pytest.raises(ValueError, match="T = 0"):
        layer(torch.rand(0, 2, 6))
    with pytest.raises(TypeError, match="floating point"):
        layer(torch.ones(5, 2, 6, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="meta"):
        layer(torch.rand(5, 2, 6, device="meta"))
    with pytest.raises(ValueError, match=r"mem must be a tensor of shape \[B, out_features\]"):
        layer(torch.rand(5, 2, 6), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="backward"):
        SpikingLinear(6, 4, beta=0.9, backward="fast")
    with pytest.raises(ValueError, match="reset_mechanism"):
        SpikingLinear(6, 4, beta=0.9, reset_mechanism="hard")
    with pytest.raises(ValueError, match="beta"):
        SpikingLinear(6, 4, beta=torch.ones(3))
    with pytest.raises(ValueError, match="b_th"):
        SpikingLinear(6, 4, beta=0.9, b_th=-1.0)
    with pytest.raises(ValueError, match="learn_threshold"):
        SpikingLinear(6, 4, beta=0.9, readout=True, learn_threshold=True)
    with pytest.warns(surrogate.SlowPathWarning), pytest.raises(ValueError, match="spike_grad"):
        SpikingLinear(6, 4, beta=0.9, spike_grad=lambda u: (u > 0).float())


def test_inputs_not_mutated():
    layer = _layer("30%", beta=0.9, bias=True, learn_beta=True)
    x = _spikes(0.2).requires_grad_()
    before = x.detach().clone()
    layer(x).sum().backward()
    assert torch.equal(x.detach(), before)


def test_inference_keeps_nothing(monkeypatch):
    layer = _layer("2%", beta=0.9, bias=True, learn_beta=True)
    x = _spikes(0.2).requires_grad_()
    want = _reference(layer, x)

    def refuse(x2d, max_density=_fused.COMPACT_INPUT_MAX_DENSITY):
        # the event-driven forward may compact its input; a compaction to keep for backward
        # (at the backward's density limit) must not run
        if max_density >= _fused.COMPACT_INPUT_MAX_DENSITY:
            raise AssertionError("compact_input ran for backward under no_grad")
        return None

    monkeypatch.setattr(_fused, "compact_input", refuse)
    with torch.no_grad(), saved_bytes() as kept:
        out = layer(x)
    assert torch.equal(out, want) and not out.requires_grad and kept["bytes"] == 0


@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("level", ["2%", "30%"])
def test_float32_matches_reference(reset, level):
    layer = _layer(level, reset_mechanism=reset, beta=0.9, bias=True,
                   learn_threshold=True).float()
    x = _spikes(ACTIVITY[level][0]).float().requires_grad_()
    out = layer(x)
    ref = _reference(layer, x)
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    got, want = _grads(out, ref, [x, layer.weight, layer.bias, layer.threshold])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("level", ["0%", "2%", "30%", "dense"])
def test_cuda_matches_reference(level, reset, dtype):
    """On the GPU, against the reference run on the CPU in the same dtype. The CUDA
    compiler may fuse multiply-adds, so membranes agree to rounding."""
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    l1 = _layer(level, reset_mechanism=reset, beta=0.9, bias=True, learn_threshold=True)
    l2 = _layer("30%", n_in=N_OUT, n_out=7, beta=0.8, readout=True, learn_beta=True)
    l1, l2 = l1.to(dtype), l2.to(dtype)
    x = _spikes(ACTIVITY[level][0]).to(dtype).requires_grad_()
    out_r = _reference(l2, _reference(l1, x))
    params = [x, l1.weight, l1.bias, l1.threshold, l2.weight, l2.beta]
    w = torch.randn_like(out_r)
    want = torch.autograd.grad((out_r * w).sum(), params)

    l1c, l2c = copy.deepcopy(l1).cuda(), copy.deepcopy(l2).cuda()
    xc = x.detach().cuda().requires_grad_()
    out = l2c(l1c(xc))
    torch.testing.assert_close(out.cpu(), out_r.detach(), **tol)
    paramsc = [xc, l1c.weight, l1c.bias, l1c.threshold, l2c.weight, l2c.beta]
    got = torch.autograd.grad((out * w.cuda()).sum(), paramsc)
    for g, r in zip(got, want):
        torch.testing.assert_close(g.cpu(), r, **tol)
    assert l2c._report["dx_masked"] == (l1c.b_th is not None)
