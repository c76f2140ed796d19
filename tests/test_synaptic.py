"""The sparse Synaptic neuron: the ``syn_fwd`` / ``syn_bwd`` kernels against
``reference.py``, the fused ``_synaptic.synaptic_sequence`` against the plain-autograd
reference and gradcheck, and the drop-in ``snn.Synaptic`` against ``snntorch.Synaptic``
(per step) and against its own per-step calls (``forward_sequence``)."""

import math

import pytest
import snntorch
import torch

import snntorch_sparse
from snntorch_sparse import _fused, _ops, _synaptic, reference as R, surrogate
from snntorch_sparse.metrics import saved_bytes
from snntorch_sparse.synaptic import Synaptic

from conftest import needs_cuda

ops = _ops.ops
F64 = torch.float64
RESETS = [R.SUBTRACT, R.ZERO, R.NONE]
RESET_NAMES = ["subtract", "zero", "none"]


# ------------------------------------------------------------------------- helpers
def scan_inputs(T, M, dtype, g, reset):
    """Random ``syn_fwd`` arguments (per-neuron α/β/θ) and the matching ``syn_bwd`` ones."""
    r = lambda *s: torch.randn(*s, dtype=F64, generator=g)  # noqa: E731
    u = lambda *s: torch.rand(*s, dtype=F64, generator=g)  # noqa: E731
    cur = (r(T, M) * 0.6 + 0.25).to(dtype)
    syn0, mem0 = r(M).to(dtype), r(M).to(dtype)
    alpha, beta = (u(M) * 0.5 + 0.5).to(dtype), (u(M) * 0.5 + 0.5).to(dtype)
    theta = (u(M) * 0.5 + 0.75).to(dtype)
    _, mem = R.syn_fwd(cur, syn0, mem0, alpha, beta, theta, reset)
    rbits = R.pack_bits(torch.cat((mem0[None], mem[:-1])) - theta > 0)
    return (cur, syn0, mem0, alpha, beta, theta), (r(T, M).to(dtype), r(T, M).to(dtype), rbits)


def layer_inputs(g, T=15, step=(3, 6), learn=True, states=True):
    """A float64 sequence and per-neuron parameters (leaves) for ``synaptic_sequence``."""
    n = step[-1]
    cur = (torch.randn(T, *step, dtype=F64, generator=g) * 0.5 + 0.25).requires_grad_()
    alpha = (torch.rand(n, dtype=F64, generator=g) * 0.3 + 0.6).requires_grad_(learn)
    beta = (torch.rand(n, dtype=F64, generator=g) * 0.3 + 0.6).requires_grad_(learn)
    theta = (torch.rand(n, dtype=F64, generator=g) * 0.4 + 0.8).requires_grad_(learn)
    syn0 = (torch.randn(*step, dtype=F64, generator=g) * 0.3).requires_grad_() if states else None
    mem0 = (torch.rand(*step, dtype=F64, generator=g) * 0.5).requires_grad_() if states else None
    return cur, syn0, mem0, alpha, beta, theta


def weighted_grads(outs, wrt, g):
    """Gradients of a loss that reads every output (spikes, current, membrane)."""
    ws = [torch.randn(o.shape, dtype=F64, generator=g) for o in outs]
    loss = sum((o * w).sum() for o, w in zip(outs, ws))
    return torch.autograd.grad(loss, wrt)


# ------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reset", RESETS, ids=RESET_NAMES)
@pytest.mark.parametrize("T,M", [(1, 1), (7, 5), (13, 1100)])  # 1100: several 512-blocks
def test_kernels_equal_reference(dtype, reset, T, M, gen):
    """Same expression order as the reference: equal bit for bit (float32 too)."""
    fwd_args, (eps, gsyn, rbits) = scan_inputs(T, M, dtype, gen, reset)
    got, want = ops.syn_fwd(*fwd_args, reset), R.syn_fwd(*fwd_args, reset)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    alpha, beta = fwd_args[3], fwd_args[4]
    for grad_syn in (gsyn, eps.new_empty(0)):
        got = ops.syn_bwd(eps, grad_syn, alpha, beta, rbits, reset)
        want = R.syn_bwd(eps, grad_syn, alpha, beta, rbits, reset)
        assert [t.shape for t in got] == [(T, M), (M,), (M,)]
        assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("reset", RESETS, ids=RESET_NAMES)
def test_syn_bwd_is_the_adjoint_of_syn_fwd(reset, gen):
    """The reference scan equals autograd through ``syn_fwd`` (reset flags detached)."""
    (cur, syn0, mem0, alpha, beta, theta), (eps, gsyn, rbits) = scan_inputs(9, 7, F64, gen,
                                                                             reset)
    leaves = [t.clone().requires_grad_() for t in (cur, syn0, mem0)]
    syn, mem = R.syn_fwd(*leaves, alpha, beta, theta, reset)
    want = torch.autograd.grad((mem * eps).sum() + (syn * gsyn).sum(), leaves)
    got = R.syn_bwd(eps, gsyn, alpha, beta, rbits, reset)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["fwd", "bwd", "bwd_zero", "bwd_no_grad_syn"])
def test_opcheck(device, gen, case):
    reset = R.ZERO if case == "bwd_zero" else R.SUBTRACT
    fwd_args, (eps, gsyn, rbits) = scan_inputs(6, 45, F64, gen, reset)
    alpha, beta = fwd_args[3], fwd_args[4]
    if case == "fwd":
        op, args = ops.syn_fwd, (*fwd_args, reset)
    else:
        grad_syn = eps.new_empty(0) if case == "bwd_no_grad_syn" else gsyn
        op, args = ops.syn_bwd, (eps, grad_syn, alpha, beta, rbits, reset)
    torch.library.opcheck(op, tuple(a.to(device) if isinstance(a, torch.Tensor) else a
                                    for a in args))


def bad_calls():
    f64, T, M = F64, 4, 5
    cur, v, e = torch.zeros(T, M, dtype=f64), torch.zeros(M, dtype=f64), torch.empty(0, dtype=f64)
    bits = torch.zeros(1, dtype=torch.int32)
    fwd = lambda **kw: ops.syn_fwd(*[kw.get(k, d) for k, d in (  # noqa: E731
        ("cur", cur), ("syn0", v), ("mem0", v), ("alpha", v), ("beta", v), ("theta", v),
        ("reset", 0))])
    bwd = lambda **kw: ops.syn_bwd(*[kw.get(k, d) for k, d in (  # noqa: E731
        ("eps_mem", cur), ("grad_syn", e), ("alpha", v), ("beta", v), ("rbits", bits),
        ("reset", 1))])
    return [
        (lambda: fwd(cur=torch.zeros(T, M, dtype=torch.int64)), "`cur`"),
        (lambda: fwd(cur=torch.zeros(T * M, dtype=f64)), "`cur`"),
        (lambda: fwd(syn0=torch.zeros(M + 1, dtype=f64)), "`syn0`"),
        (lambda: fwd(mem0=torch.zeros(M, dtype=torch.float32)), "`mem0`"),
        (lambda: fwd(alpha=torch.zeros(1, dtype=f64)), "`alpha`"),
        (lambda: fwd(beta=torch.zeros(M, 1, dtype=f64)), "`beta`"),
        (lambda: fwd(theta=torch.zeros(2, dtype=f64)), "`theta`"),
        (lambda: fwd(reset=3), "`reset`"),
        (lambda: bwd(eps_mem=torch.zeros(T, M, dtype=torch.int32)), "`eps_mem`"),
        (lambda: bwd(grad_syn=torch.zeros(T, M + 1, dtype=f64)), "`grad_syn`"),
        (lambda: bwd(grad_syn=torch.zeros(T, M, dtype=torch.float32)), "`grad_syn`"),
        (lambda: bwd(alpha=torch.zeros(M + 2, dtype=f64)), "`alpha`"),
        (lambda: bwd(beta=torch.zeros(M, dtype=torch.float32)), "`beta`"),
        (lambda: bwd(rbits=torch.zeros(5, dtype=torch.int32)), "`rbits`"),
        (lambda: bwd(rbits=torch.zeros(1, dtype=torch.int64)), "`rbits`"),
        (lambda: bwd(reset=-1), "`reset`"),
    ]


@pytest.mark.parametrize("case", range(len(bad_calls())))
def test_bad_arguments_name_the_argument(case):
    call, name = bad_calls()[case]
    with pytest.raises(RuntimeError, match=name):
        call()


def test_rbits_ignored_unless_zero_reset():
    eps, v = torch.ones(3, 4, dtype=F64), torch.full((4,), 0.5, dtype=F64)
    junk = torch.zeros(7, dtype=torch.int64)
    for reset in (R.SUBTRACT, R.NONE):
        got = ops.syn_bwd(eps, eps.new_empty(0), v, v, junk, reset)
        want = R.syn_bwd(eps, eps.new_empty(0), v, v, junk, reset)
        assert all(torch.equal(a, b) for a, b in zip(got, want))


# ------------------------------------------------------------------- fused sequence
@pytest.mark.parametrize("reset", RESETS, ids=RESET_NAMES)
@pytest.mark.parametrize("b_th", [None, 0.05, 0.3, 1e9])
@pytest.mark.parametrize("learn,states", [(True, True), (False, False)])
def test_synaptic_sequence_matches_reference(reset, b_th, learn, states, gen):
    cur, syn0, mem0, alpha, beta, theta = layer_inputs(gen, learn=learn, states=states)
    kw = dict(gamma=1.5, reset=reset, shape=R.ATAN, p=2.0, b_th=b_th)
    outs = _synaptic.synaptic_sequence(cur, syn0, mem0, alpha.clamp(0, 1), beta.clamp(0, 1),
                                       theta, **kw)
    zeros = torch.zeros_like(cur[0])
    ref = R.synaptic_sequence(cur, zeros if syn0 is None else syn0,
                              zeros if mem0 is None else mem0, alpha, beta, theta, **kw)
    assert all(torch.equal(a, b) for a, b in zip(outs, ref))
    assert 0 < outs[0].sum() < outs[0].numel() * 1.5  # some spikes, not all
    wrt = [t for t in (cur, syn0, mem0, alpha, beta, theta) if t is not None and t.requires_grad]
    got = weighted_grads(outs, wrt, torch.Generator().manual_seed(7))
    want = weighted_grads(ref, wrt, torch.Generator().manual_seed(7))
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert got[0].abs().sum() > 0


@pytest.mark.parametrize("pick", [0, 1, 2])
def test_synaptic_sequence_single_output_gradients(pick, gen):
    """Only the spikes, only the current or only the membrane reach the loss."""
    cur, syn0, mem0, alpha, beta, theta = layer_inputs(gen)
    wrt = [cur, syn0, mem0, alpha, beta, theta]
    out = _synaptic.synaptic_sequence(cur, syn0, mem0, alpha, beta, theta, b_th=0.3)[pick]
    ref = R.synaptic_sequence(cur, syn0, mem0, alpha, beta, theta, b_th=0.3)[pick]
    w = torch.randn(out.shape, dtype=F64, generator=gen)
    got = torch.autograd.grad((out * w).sum(), wrt, allow_unused=True)
    want = torch.autograd.grad((ref * w).sum(), wrt, allow_unused=True)
    for a, b in zip(got, want):
        if b is None:  # e.g. θ does not reach the current
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reset", RESETS, ids=RESET_NAMES)
@pytest.mark.parametrize("b_th", [None, 0.3])
def test_synaptic_sequence_gradcheck(reset, b_th, gen):
    """Finite differences of the current and membrane outputs (the spikes' surrogate has
    no finite-difference counterpart: it is checked against the reference above)."""
    args = [t.detach().requires_grad_() for t in layer_inputs(gen, T=6, step=(2, 3))]

    def f(cur, syn0, mem0, alpha, beta, theta):
        return _synaptic.synaptic_sequence(cur, syn0, mem0, alpha, beta, theta, reset=reset,
                                           b_th=b_th)[1:]

    assert torch.autograd.gradcheck(f, args)


def test_synaptic_sequence_marks_its_band_and_keeps_no_membrane(gen):
    T, B, N = 40, 4, 32
    cur, _, _, _, _, _ = layer_inputs(gen, T=T, step=(B, N), learn=False, states=False)
    cur = cur.detach().requires_grad_()
    alpha, beta, theta = (torch.tensor(v, dtype=F64) for v in (0.8, 0.7, 1.0))
    with saved_bytes() as kept:
        spk, syn, mem = _synaptic.synaptic_sequence(cur, None, None, alpha, beta, theta,
                                                    b_th=0.05)
    inband = (mem - theta).abs() < 0.05
    assert torch.equal(_fused.band_of(spk), R.pack_bits(inband))
    n, nnz = T * B * N, int(inband.sum())
    assert 0 < nnz < 0.2 * n
    # band bits and values, α and β (0-dim): neither the current nor the membrane
    assert kept["bytes"] == 4 * ((n + 31) // 32) + 8 * nnz + 2 * 8
    dense, _, _ = _synaptic.synaptic_sequence(cur, None, None, alpha, beta, theta, b_th=None)
    assert _fused.band_of(dense) is None


def test_synaptic_sequence_half_precision_on_cpu(gen):
    cur, syn0, mem0, alpha, beta, theta = layer_inputs(gen, learn=False)
    half = cur.detach().to(torch.bfloat16).requires_grad_()
    spk, syn, mem = _synaptic.synaptic_sequence(half, syn0.detach().bfloat16(), None,
                                                alpha, beta, theta)
    assert spk.dtype == syn.dtype == mem.dtype == torch.bfloat16
    (spk.sum() + syn.sum()).backward()
    assert half.grad.dtype == torch.bfloat16 and half.grad.abs().sum() > 0


def test_synaptic_sequence_bad_input():
    with pytest.raises(ValueError, match="floating-point"):
        _synaptic.synaptic_sequence(torch.ones(4, 3, dtype=torch.int64), None, None, 0.9, 0.8,
                                    1.0)
    with pytest.raises(ValueError, match="T = 0"):
        _synaptic.synaptic_sequence(torch.ones(0, 2, 3), None, None, 0.9, 0.8, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        _synaptic.synaptic_sequence(torch.ones(4, 2, 3), None, None, torch.ones(5), 0.8, 1.0)
    with pytest.raises(ValueError, match="syn"):
        _synaptic.synaptic_sequence(torch.ones(4, 2, 3), torch.zeros(7), None, 0.9, 0.8, 1.0)
    with pytest.raises(TypeError, match="mem0"):
        _synaptic.synaptic_sequence(torch.ones(4, 2, 3), None, [0.0], 0.9, 0.8, 1.0)
    with pytest.raises(ValueError, match="fixed b_th"):
        _synaptic.synaptic_sequence(torch.ones(4, 2, 3), None, None, 0.9, 0.8, 1.0,
                                    b_th="auto")


# ------------------------------------------------------------------ snn.Synaptic
def test_one_import_switch_and_defaults():
    assert snntorch_sparse.Synaptic is Synaptic and "Synaptic" in snntorch_sparse.__all__
    syn = Synaptic(alpha=0.9, beta=0.8)
    assert isinstance(syn, snntorch.Synaptic)
    assert syn.b_th == surrogate.DEFAULT_B_TH
    assert isinstance(syn.spike_grad, surrogate.AdaptiveSurrogate)
    assert Synaptic(alpha=0.9, beta=0.8, output=True).b_th is None  # band_for
    syn = Synaptic(alpha=0.9, beta=0.8, spike_grad=surrogate.fast_sigmoid(5, b_th=0.7), b_th=0.3)
    assert syn.spike_grad == surrogate.fast_sigmoid(5, b_th=0.3)
    syn.b_th = None
    assert syn.spike_grad == surrogate.fast_sigmoid(5, b_th=None) and "b_th=None" in repr(syn)
    with pytest.raises(TypeError):
        Synaptic(0.9, 0.8, 1.0, None, False, False, False, False, False, False, "subtract",
                 False, False, True, 0.2)  # b_th is keyword-only


def run_steps(neuron, x, syn, mem):
    spks, syns, mems = [], [], []
    for t in range(x.shape[0]):
        spk, syn, mem = neuron(x[t], syn, mem)
        spks.append(spk)
        syns.append(syn)
        mems.append(mem)
    return torch.stack(spks), torch.stack(syns), torch.stack(mems)


def synaptic_pair(reset, g, scalar=False, **extra):
    """Our Synaptic and stock snntorch.Synaptic with the same learnable float64 parameters."""
    n = 6
    if scalar:
        params = dict(alpha=torch.tensor(0.75), beta=torch.tensor(0.875),
                      threshold=torch.tensor(1.0))
    else:
        params = dict(alpha=torch.rand(n, dtype=F64, generator=g) * 0.3 + 0.6,
                      beta=torch.rand(n, dtype=F64, generator=g) * 0.3 + 0.6,
                      threshold=torch.rand(n, dtype=F64, generator=g) * 0.4 + 0.8)
    kw = dict(reset_mechanism=reset, learn_alpha=True, learn_beta=True, learn_threshold=True,
              **params)
    ours = Synaptic(**kw, **extra).double()
    stock = snntorch.Synaptic(**kw).double()
    return ours, stock


def learnables(neuron):
    return [neuron.alpha, neuron.beta, neuron.threshold]


@pytest.mark.parametrize("reset", RESET_NAMES)
@pytest.mark.parametrize("scalar", [False, True])
def test_dense_per_step_equals_snntorch(reset, scalar, gen):
    """b_th=None: snnTorch's own forward and (atan) gradient, bit for bit."""
    ours, stock = synaptic_pair(reset, gen, scalar=scalar, b_th=None)
    x = (torch.randn(12, 3, 6, dtype=F64, generator=gen) * 0.5 + 0.3).requires_grad_()
    s0 = torch.randn(3, 6, dtype=F64, generator=gen) * 0.3
    results = []
    for neuron in (ours, stock):
        outs = run_steps(neuron, x, s0, torch.zeros(3, 6, dtype=F64))
        grads = weighted_grads(outs, [x] + learnables(neuron), torch.Generator().manual_seed(3))
        results.append((outs, grads))
    (outs, grads), (ref_outs, ref_grads) = results
    assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(outs, ref_outs))
    assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(grads, ref_grads))
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("reset", RESET_NAMES)
@pytest.mark.parametrize("backward,b_th", [("sparse", 0.3), ("sparse", None), ("dense", 0.3)])
def test_forward_sequence_equals_per_step_calls(reset, backward, b_th, gen, monkeypatch):
    calls = []
    fused = _synaptic.synaptic_sequence
    monkeypatch.setattr(_synaptic, "synaptic_sequence",
                        lambda *a, **k: calls.append(k["b_th"]) or fused(*a, **k))
    ours, _ = synaptic_pair(reset, gen, b_th=b_th)
    x = (torch.randn(20, 3, 6, dtype=F64, generator=gen) * 0.5 + 0.3).requires_grad_()
    s0 = (torch.randn(3, 6, dtype=F64, generator=gen) * 0.3).requires_grad_()
    m0 = (torch.rand(3, 6, dtype=F64, generator=gen) * 0.5).requires_grad_()
    wrt = [x, s0, m0] + learnables(ours)
    outs = ours.forward_sequence(x, s0, m0, backward=backward)
    assert calls == [b_th if backward == "sparse" else None]
    assert torch.equal(ours.syn, outs[1][-1]) and torch.equal(ours.mem, outs[2][-1])
    grads = weighted_grads(outs, wrt, torch.Generator().manual_seed(5))
    with ours._band(None if backward == "dense" else b_th):
        ref = run_steps(ours, x, s0, m0)
    ref_grads = weighted_grads(ref, wrt, torch.Generator().manual_seed(5))
    assert outs[0].dtype == ref[0].dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(outs, ref))
    for a, b in zip(grads, ref_grads):  # summed over time in another order
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("reset", RESET_NAMES)
def test_forward_sequence_learnable_parameters_match_reference(reset, gen):
    ours, _ = synaptic_pair(reset, gen, b_th=0.2)
    x = (torch.randn(30, 4, 6, dtype=F64, generator=gen) * 0.5 + 0.3).requires_grad_()
    outs = ours.forward_sequence(x)
    zeros = torch.zeros_like(x[0])
    spk, isyn, mem = R.synaptic_sequence(x, zeros, zeros, ours.alpha, ours.beta,
                                         ours.threshold, reset=R.RESETS.index(reset), b_th=0.2)
    ref = (spk.float(), isyn, mem)  # spikes are float32 per step (snnTorch's convention)
    assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(outs, ref))
    wrt = [x] + learnables(ours)
    got = weighted_grads(outs, wrt, torch.Generator().manual_seed(2))
    want = weighted_grads(ref, wrt, torch.Generator().manual_seed(2))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert b.abs().sum() > 0


def test_forward_sequence_per_step_fallback(gen, monkeypatch):
    """Options the fused op lacks run T per-step calls, with the same result."""
    monkeypatch.setattr(_synaptic, "synaptic_sequence", None)  # must not be reached
    syn = Synaptic(alpha=0.9, beta=0.8, state_quant=lambda t: t, b_th=0.3).double()
    x = torch.randn(8, 2, 5, dtype=F64, generator=gen) + 0.4
    spk, isyn, mem = syn.forward_sequence(x)
    assert spk.shape == isyn.shape == mem.shape == x.shape
    syn.syn, syn.mem = torch.zeros(0), torch.zeros(0)
    ref = run_steps(syn, x, None, None)
    assert all(torch.equal(a, b) for a, b in zip((spk, isyn, mem), ref))


def test_forward_sequence_state_and_errors():
    syn = Synaptic(alpha=0.9, beta=0.8, init_hidden=True, b_th=0.2)
    x = torch.rand(5, 2, 3)
    _, isyn, mem = syn.forward_sequence(x)
    _, isyn2, _ = syn.forward_sequence(x)  # continues from the stored state
    step = Synaptic(alpha=0.9, beta=0.8, b_th=0.2)
    ref = run_steps(step, torch.cat((x, x)), None, None)[1]
    torch.testing.assert_close(torch.cat((isyn, isyn2)), ref, rtol=0, atol=0)
    with pytest.raises(NotImplementedError, match="rate"):
        syn.forward_sequence(x, backward="rate")
    with pytest.raises(ValueError, match="backward"):
        syn.forward_sequence(x, backward="fast")
    with pytest.raises(TypeError, match="syn"):
        syn.forward_sequence(x, syn=0.0)
    with pytest.raises(ValueError, match="T = 0"):
        syn.forward_sequence(torch.zeros(0, 2, 3))


def test_forward_sequence_adaptive_band_learns(gen):
    syn = Synaptic(alpha=0.9, beta=0.8, b_th="auto")
    start = syn.spike_grad.b_th
    x = (torch.randn(20, 8, 16, generator=gen) * 3).requires_grad_()
    spk, _, _ = syn.forward_sequence(x)
    spk.sum().backward()
    assert syn.spike_grad.b_th != start and syn.spike_grad.last_rho is not None


def test_sparsify_swaps_stock_synaptic():
    stock = snntorch.Synaptic(alpha=0.9, beta=0.8, learn_alpha=True)
    alpha = stock.alpha
    out = snntorch_sparse.sparsify(torch.nn.Sequential(stock), b_th=0.25)
    assert type(out[0]) is Synaptic and out[0] is stock and stock.alpha is alpha
    assert stock.spike_grad == surrogate.atan(2.0, b_th=0.25) and stock.b_th == 0.25
    spk, isyn, mem = stock.forward_sequence(torch.rand(4, 2, 3))
    assert spk.shape == (4, 2, 3)


# ----------------------------------------------------------------------------- CUDA
@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (torch.float32, 1e-5),
                                       (torch.float16, 5e-3), (torch.bfloat16, 4e-2)],
                         ids=["f64", "f32", "f16", "bf16"])
@pytest.mark.parametrize("reset", RESETS, ids=RESET_NAMES)
def test_cuda_kernels_match_reference(dtype, tol, reset, gen):
    """The CUDA kernels against the float64 reference on the same (rounded) inputs; the
    reset flags of the float64 run are used so that a rounding cannot flip one."""
    fwd_args, (eps, gsyn, rbits) = scan_inputs(40, (1 << 12) + 7, dtype, gen, reset)
    dev = lambda ts: [t.cuda() for t in ts]  # noqa: E731
    wide = [t.double() for t in fwd_args]
    got = ops.syn_fwd(*dev(fwd_args), reset)
    want = R.syn_fwd(*wide, reset)
    if dtype == F64:  # no multiply-add fusion (mul_rn): the CPU's bits
        assert all(torch.equal(a.cpu(), b) for a, b in zip(got, want))
    alpha, beta = fwd_args[3], fwd_args[4]
    for grad_syn in (gsyn, eps.new_empty(0)):
        got = ops.syn_bwd(*dev((eps, grad_syn, alpha, beta, rbits)), reset)
        want = R.syn_bwd(*[t.double() for t in (eps, grad_syn, alpha, beta)], rbits, reset)
        for a, b in zip(got, want):
            scale = b.abs().max().clamp_min(1)
            torch.testing.assert_close(a.double().cpu() / scale, b / scale, rtol=0, atol=tol)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("reset", RESETS, ids=RESET_NAMES)
def test_cuda_synaptic_sequence_matches_reference(reset, gen):
    args = layer_inputs(gen)
    ref = R.synaptic_sequence(*args, reset=reset, b_th=0.3)
    want = weighted_grads(ref, list(args), torch.Generator().manual_seed(4))
    dev = [t.detach().cuda().requires_grad_(t.requires_grad) for t in args]
    outs = _synaptic.synaptic_sequence(dev[0], dev[1], dev[2], dev[3].clamp(0, 1),
                                       dev[4].clamp(0, 1), dev[5], reset=reset, b_th=0.3)
    for a, b in zip(outs, ref):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-12)
    got = weighted_grads([o.cpu() for o in outs], dev, torch.Generator().manual_seed(4))
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-12)
    assert math.isfinite(float(got[0].sum()))
