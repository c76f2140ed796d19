"""snntorch_sparse.surrogate against snnTorch's surrogates and reference.spike_fn."""

import copy
import math
import pickle
import warnings

import pytest
import snntorch
import snntorch.surrogate as snn_sg
import torch

from snntorch_sparse import reference, surrogate

# (our factory, snnTorch factory, shape id, parameter name, a non-default parameter value)
SHAPES = [
    (surrogate.fast_sigmoid, snn_sg.fast_sigmoid, reference.FAST_SIGMOID, "slope", 7.3),
    (surrogate.atan, snn_sg.atan, reference.ATAN, "alpha", 3.1),
    (surrogate.sigmoid, snn_sg.sigmoid, reference.SIGMOID, "slope", 5.3),
    (surrogate.triangular, snn_sg.triangular, reference.TRIANGULAR, "threshold", 0.3),
    (surrogate.straight_through, snn_sg.straight_through_estimator,
     reference.STRAIGHT_THROUGH, None, None),
]
IDS = [s[0].__name__ for s in SHAPES]
# snnTorch forms grad·parameter in float32 for sigmoid and triangular (rounding the
# parameter and the product, see their docstrings): at most 2⁻²³ relative apart.
F32_PRODUCT_RTOL = 2.0**-23 + 1e-12


def make(factory, param, value, b_th):
    if param is None:
        return factory(b_th=b_th)
    return factory(**{param: value, "b_th": b_th})


def snn_make(factory, param, value):
    return factory() if param is None else factory(**{param: value})


def grad_of(fn, u, weight):
    u = u.detach().clone().requires_grad_()
    out = fn(u)
    (g,) = torch.autograd.grad((out * weight).sum(), u)
    return out, g


def membrane(n, dtype, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(n, generator=gen, dtype=torch.float64) * scale
    u[:4] = torch.tensor([0.0, -0.0, 0.2, -0.2])  # the step and the band edges
    return u.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("default", [True, False], ids=["default_param", "other_param"])
@pytest.mark.parametrize("entry", SHAPES, ids=IDS)
def test_dense_matches_snntorch(entry, default, dtype):
    ours_f, snn_f, _, param, value = entry
    ours = ours_f(b_th=None) if default else make(ours_f, param, value, None)
    theirs = snn_f() if default else snn_make(snn_f, param, value)
    for seed, scale in ((0, 0.05), (1, 0.5), (2, 3.0)):  # activity: tight .. wide spread
        u = membrane(2000, dtype, scale, seed)
        weight = torch.randn(u.shape, generator=torch.Generator().manual_seed(seed + 10))
        out, g = grad_of(ours, u, weight)
        ref_out, ref_g = grad_of(theirs, u, weight)
        assert out.dtype == torch.float32 == ref_out.dtype
        assert torch.equal(out, ref_out)
        assert g.dtype == dtype
        exact = ours.shape in (reference.FAST_SIGMOID, reference.ATAN,
                               reference.STRAIGHT_THROUGH)
        exact |= ours.shape == reference.TRIANGULAR and (dtype == torch.float32 or default)
        if exact:
            assert torch.equal(g, ref_g)
        elif dtype == torch.float64:
            torch.testing.assert_close(g, ref_g, rtol=F32_PRODUCT_RTOL, atol=0, equal_nan=True)
        else:  # float32 sigmoid: the compiled exp may differ from PyTorch's by an ulp;
            # both overflow to NaN (inf/inf) at the same large negative u.
            torch.testing.assert_close(g, ref_g, rtol=4 * 2.0**-23, atol=1e-30, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("b_th", [0.05, 0.2, 1.0])
@pytest.mark.parametrize("entry", SHAPES, ids=IDS)
def test_band_matches_reference(entry, b_th, dtype):
    ours_f, _, shape, param, value = entry
    p = 0.0 if value is None else value
    ours = make(ours_f, param, value, b_th)
    for seed, scale in ((3, 0.05), (4, 0.5), (5, 3.0)):
        u = membrane(3000, dtype, scale, seed)
        weight = torch.randn(u.shape, generator=torch.Generator().manual_seed(seed))
        out, g = grad_of(ours, u, weight)
        ref_out, ref_g = grad_of(lambda x: reference.spike_fn(x, shape, p, b_th).float(),
                                 u, weight)
        assert torch.equal(out, ref_out)
        assert torch.equal(g == 0, ref_g == 0)
        assert torch.all(g[u.abs() >= b_th] == 0)
        if dtype == torch.float64 or shape != reference.SIGMOID:
            assert torch.equal(g, ref_g)
        else:
            torch.testing.assert_close(g, ref_g, rtol=4 * 2.0**-23, atol=1e-30)


def test_attributes_repr_pickle():
    sg = surrogate.fast_sigmoid(slope=10, b_th=0.3)
    assert (sg.shape, sg.p, sg.b_th, sg.name) == (reference.FAST_SIGMOID, 10.0, 0.3,
                                                 "fast_sigmoid")
    assert repr(sg) == "fast_sigmoid(slope=10.0, b_th=0.3)"
    assert repr(surrogate.straight_through(b_th=None)) == "straight_through(b_th=None)"
    assert repr(surrogate.atan()) == "atan(alpha=2.0, b_th=0.2)"
    for sg in (surrogate.atan(alpha=3.0, b_th=None), surrogate.triangular(0.5, b_th=0.1)):
        assert pickle.loads(pickle.dumps(sg)) == sg
        assert copy.deepcopy(sg) == sg
    assert surrogate.straight_through_estimator(b_th=0.4) == surrogate.straight_through(0.4)
    assert surrogate.atan(b_th=0.1) != surrogate.atan(b_th=0.2)
    assert len({surrogate.atan(), surrogate.atan(), surrogate.sigmoid()}) == 2


def test_superset_of_snntorch():
    public = [n for n, v in vars(snn_sg).items()
              if not n.startswith("_") and getattr(v, "__module__", None) == snn_sg.__name__]
    assert len(public) >= 20
    ours = {"fast_sigmoid", "atan", "sigmoid", "triangular", "straight_through_estimator"}
    for name in public:
        assert hasattr(surrogate, name), name
        assert name in surrogate.__all__
        if name not in ours:
            assert getattr(surrogate, name) is getattr(snn_sg, name), name


@pytest.mark.parametrize("entry", SHAPES, ids=IDS)
def test_sparse_recognises_snntorch(entry, recwarn):
    _, snn_f, shape, param, value = entry
    for v in ([value] if param is None else [value, 11.0, 1]):
        sg = surrogate.sparse(snn_make(snn_f, param, v), b_th=0.15)
        assert isinstance(sg, surrogate.SparseSurrogate)
        assert (sg.shape, sg.p, sg.b_th) == (shape, 0.0 if v is None else float(v), 0.15)
    dense = surrogate.sparse(snn_make(snn_f, param, value), b_th=None)
    assert isinstance(dense, surrogate.SparseSurrogate) and dense.b_th is None
    assert not [w for w in recwarn if issubclass(w.category, surrogate.SlowPathWarning)]


def test_sparse_recognises_default_leaky_surrogate():
    sg = surrogate.sparse(snntorch.Leaky(beta=0.5).spike_grad, b_th=0.2)
    assert sg == surrogate.atan(alpha=2.0, b_th=0.2)


def test_sparse_rebands_ours():
    sg = surrogate.sigmoid(slope=4.0, b_th=0.2)
    re = surrogate.sparse(sg, b_th=0.5)
    assert re == surrogate.sigmoid(slope=4.0, b_th=0.5) and sg.b_th == 0.2
    assert surrogate.sparse(sg, None) == surrogate.sigmoid(slope=4.0, b_th=None)


def test_sparse_unknown_callable_slow_path():
    def my_surrogate_for_this_test(slope=3.0):
        def inner(x):
            return snn_sg.FastSigmoid.apply(x, slope)  # known math, unknown wrapper
        return inner

    with pytest.warns(surrogate.SlowPathWarning, match="slow path") as record:
        first = surrogate.sparse(my_surrogate_for_this_test(), b_th=0.3)
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = surrogate.sparse(my_surrogate_for_this_test(slope=3.0), b_th=0.3)
        rebanded = surrogate.sparse(first, b_th=0.1)
    assert isinstance(first, surrogate.EagerBandSurrogate)
    assert rebanded.b_th == 0.1 and rebanded.fn is first.fn
    assert surrogate.sparse(first, None) is first.fn
    u = membrane(2000, torch.float64, 0.5, 7)
    weight = torch.randn(u.shape, dtype=torch.float64)
    for sg in (first, second):
        out, g = grad_of(sg, u, weight)
        ref_out, ref_g = grad_of(
            lambda x: reference.spike_fn(x, reference.FAST_SIGMOID, 3.0, 0.3).float(),
            u, weight)
        assert torch.equal(out, ref_out)
        assert torch.equal(g, ref_g)


def test_sparse_unknown_callable_dense_is_unchanged():
    fn = snn_sg.heaviside()
    assert surrogate.sparse(fn, b_th=None) is fn


def test_sparse_rejects_non_callable():
    with pytest.raises(TypeError, match="spike_grad"):
        surrogate.sparse(3.0)


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, math.inf, math.nan, "0.2", True])
def test_bad_b_th(bad):
    with pytest.raises(ValueError, match="b_th"):
        surrogate.atan(b_th=bad)
    with pytest.raises(ValueError, match="b_th"):
        surrogate.sparse(snn_sg.atan(), b_th=bad)


@pytest.mark.parametrize("bad", [math.inf, math.nan, "2"])
def test_bad_parameter(bad):
    with pytest.raises(ValueError, match="alpha"):
        surrogate.atan(alpha=bad)


@pytest.mark.parametrize("bad", [torch.arange(4), torch.ones(3, dtype=torch.bool), [0.1, 0.3]])
def test_bad_input_dtype(bad):
    for sg in (surrogate.fast_sigmoid(), surrogate.atan(b_th=None)):
        with pytest.raises(TypeError, match=r"u .*floating-point tensor.*float32/float64"):
            sg(bad)


@pytest.mark.parametrize("entry", SHAPES, ids=IDS)
def test_nan_membrane(entry):
    ours_f, snn_f, _, param, value = entry
    u = torch.tensor([math.nan, 0.1, -0.1, 1.0], dtype=torch.float64)
    out, g = grad_of(make(ours_f, param, value, 0.2), u, torch.ones(4))
    assert torch.equal(out, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert g[0] == 0 and not torch.isnan(g).any()  # NaN is never in the band
    assert g[3] == 0  # outside the band
    # Dense: exactly snnTorch's gradient, NaN included (NaN for the shapes that read |u|
    # or e^u; triangular and straight-through give their constant).
    out, g = grad_of(make(ours_f, param, value, None), u, torch.ones(4))
    _, ref_g = grad_of(snn_make(snn_f, param, value), u, torch.ones(4))
    assert out[0] == 0
    torch.testing.assert_close(g, ref_g, rtol=F32_PRODUCT_RTOL, atol=0, equal_nan=True)
    reads_u = ours_f in (surrogate.fast_sigmoid, surrogate.atan, surrogate.sigmoid)
    assert bool(torch.isnan(g[0])) == reads_u
    assert not torch.isnan(g[1:]).any()


def test_inputs_not_mutated():
    for sg in (surrogate.triangular(b_th=0.3), surrogate.atan(b_th=None)):
        u = membrane(500, torch.float64, 0.5, 9).requires_grad_()
        before = u.detach().clone()
        weight = torch.randn(500)
        w_before = weight.clone()
        (sg(u) * weight).sum().backward()
        assert torch.equal(u.detach(), before) and torch.equal(weight, w_before)


def _neuron(name, sg):
    """A fresh neuron keeping its own state (init_hidden=True, so neuron(x) -> spk)."""
    kw = dict(spike_grad=sg, init_hidden=True)
    return {
        "Leaky": lambda: snntorch.Leaky(beta=0.8, **kw),
        "Synaptic": lambda: snntorch.Synaptic(alpha=0.9, beta=0.8, **kw),
        "Alpha": lambda: snntorch.Alpha(alpha=0.9, beta=0.8, **kw),
        "RLeaky": lambda: snntorch.RLeaky(beta=0.8, linear_features=6, **kw),
        "RSynaptic": lambda: snntorch.RSynaptic(alpha=0.9, beta=0.8, linear_features=6, **kw),
        "Lapicque": lambda: snntorch.Lapicque(beta=0.8, **kw),
    }[name]()


@pytest.mark.parametrize("name", ["Leaky", "Synaptic", "Alpha", "RLeaky", "RSynaptic",
                                  "Lapicque"])
def test_every_snntorch_neuron_trains_with_ours(name):
    """Each neuron with our surrogate gives the gradients of the same neuron driven by
    reference.spike_fn (float32 spikes, as snnTorch), then takes an optimizer step."""
    # float32: the recurrent neurons feed their (float32) spikes to a float32 Linear.
    x = torch.rand(8, 3, 4, generator=torch.Generator().manual_seed(1))
    ref_sg = lambda u: reference.spike_fn(u, reference.FAST_SIGMOID, 5.0, 0.4).float()  # noqa
    grads = []
    for sg in (surrogate.fast_sigmoid(slope=5.0, b_th=0.4), ref_sg):
        torch.manual_seed(0)
        lin = torch.nn.Linear(4, 6)
        neuron = _neuron(name, sg)
        params = list(lin.parameters()) + list(neuron.parameters())
        opt = torch.optim.SGD(params, lr=0.1)
        loss = 0
        for t in range(8):
            out = neuron(2.0 * lin(x[t]))
            spk = out[0] if isinstance(out, tuple) else out
            loss = loss + ((spk - 0.5) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        grads.append([p.grad.clone() for p in params])
        before = lin.weight.detach().clone()
        opt.step()
        assert not torch.equal(before, lin.weight.detach())
    for ours, ref in zip(*grads):
        assert torch.equal(ours, ref)
    assert grads[0][0].abs().sum() > 0
