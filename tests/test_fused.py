"""The fused whole-sequence Leaky (``_fused.lif_sequence``) against the reference and
against ``T`` per-step calls of ``snntorch.Leaky`` (float64)."""

import math

import pytest
import snntorch
import torch

from snntorch_sparse import _fused, _ops, reference as R
from snntorch_sparse.metrics import saved_bytes

DT = torch.float64
# Activity levels of the band |U − θ| < B_th, made by the input current's mean/std and
# the band: (mean, std, b_th, lowest and highest band fraction accepted).
ACTIVITY = {
    "0%": (-0.5, 0.05, 0.2, 0.0, 0.0),
    "2%": (0.1, 0.3, 0.03, 0.003, 0.08),
    "30%": (0.3, 0.5, 0.4, 0.1, 0.6),
    "100%": (0.3, 0.5, 1e9, 1.0, 1.0),
    "dense": (0.1, 0.3, None, 1.0, 1.0),
}


def test_compiled_kernels_serve_cpu():
    """Every op on the CPU runs a compiled kernel, not the reference."""
    cpu = _ops.BACKENDS["cpu"]
    assert cpu.startswith("compiled") and "reference" not in cpu, cpu


@pytest.mark.parametrize("n", [1, 31, 32, 33, 1000])
def test_pack_bits_matches_reference(n):
    mask = torch.rand(n) < 0.3
    bits = _fused.pack_bits(mask)
    assert torch.equal(bits, R.pack_bits(mask))
    assert torch.equal(_fused.unpack_bits(bits, n), mask)


def _inputs(level, step, T=40, per_neuron=False, learn=False, mem0=False):
    mean, std, b_th, lo, hi = ACTIVITY[level]
    cur = (torch.randn(T, *step, dtype=DT) * std + mean).requires_grad_()
    n = step[-1]
    if per_neuron:
        beta = torch.rand(n, dtype=DT) * 0.3 + 0.65
        theta = torch.rand(n, dtype=DT) * 0.4 + 0.8
    else:
        beta, theta = torch.tensor(0.9, dtype=DT), torch.tensor(1.0, dtype=DT)
    beta.requires_grad_(learn)
    theta.requires_grad_(learn)
    m0 = (torch.rand(*step, dtype=DT) * 0.5).requires_grad_() if mem0 else None
    return cur, m0, beta, theta, b_th, (lo, hi)


def _band_fraction(mem, theta, b_th):
    return 1.0 if b_th is None else (mem - theta).abs().lt(b_th).double().mean().item()


@pytest.mark.parametrize("level", list(ACTIVITY))
@pytest.mark.parametrize("reset", [R.SUBTRACT, R.ZERO, R.NONE])
@pytest.mark.parametrize("per_neuron,learn,mem0", [(False, False, False), (True, True, True),
                                                   (False, True, False)])
def test_lif_sequence_matches_reference(level, reset, per_neuron, learn, mem0):
    cur, m0, beta, theta, b_th, (lo, hi) = _inputs(level, (3, 8), per_neuron=per_neuron,
                                                     learn=learn, mem0=mem0)
    gamma = 1.5 if per_neuron else 1.0
    kw = dict(gamma=gamma, reset=reset, shape=R.ATAN, p=2.0, b_th=b_th)
    spk, mem = _fused.lif_sequence(cur, m0, beta.clamp(0, 1), theta, **kw)
    m0_ref = m0 if m0 is not None else torch.zeros_like(cur[0])
    spk_r, mem_r = R.lif_sequence(cur, m0_ref, beta, theta, **kw)
    assert torch.equal(spk, spk_r) and torch.equal(mem, mem_r)
    assert spk.dtype == cur.dtype
    assert lo <= _band_fraction(mem, theta, b_th) <= hi

    # a loss that reads both the spikes and the membrane
    w_spk, w_mem = torch.randn_like(spk), torch.randn_like(mem) * 0.1
    wrt = [t for t in (cur, m0, beta, theta) if t is not None and t.requires_grad]
    got = torch.autograd.grad((spk * w_spk).sum() + (mem * w_mem).sum(), wrt)
    want = torch.autograd.grad((spk_r * w_spk).sum() + (mem_r * w_mem).sum(), wrt)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [R.FAST_SIGMOID, R.SIGMOID, R.TRIANGULAR, R.STRAIGHT_THROUGH])
def test_lif_sequence_surrogate_shapes(shape):
    cur, _, beta, theta, b_th, _ = _inputs("30%", (2, 3, 5), learn=True)
    kw = dict(reset=R.SUBTRACT, shape=shape, p=3.0, b_th=b_th)
    spk, mem = _fused.lif_sequence(cur, None, beta, theta, **kw)
    spk_r, _ = R.lif_sequence(cur, torch.zeros_like(cur[0]), beta, theta, **kw)
    assert torch.equal(spk, spk_r)
    got = torch.autograd.grad(spk.sum(), [cur, beta, theta])
    want = torch.autograd.grad(spk_r.sum(), [cur, beta, theta])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_lif_sequence_spike_only_or_membrane_only_gradients():
    cur, _, beta, theta, b_th, _ = _inputs("30%", (4, 6), learn=True)
    for pick in (0, 1):
        out = _fused.lif_sequence(cur, None, beta, theta, b_th=b_th)[pick]
        ref = R.lif_sequence(cur, torch.zeros_like(cur[0]), beta, theta, b_th=b_th)[pick]
        w = torch.randn_like(out)
        got = torch.autograd.grad((out * w).sum(), [cur, beta, theta])
        want = torch.autograd.grad((ref * w).sum(), [cur, beta, theta])
        for g, r in zip(got, want):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("level", ["2%", "30%", "dense"])
@pytest.mark.parametrize("per_neuron", [False, True])
def test_lif_sequence_equals_per_step_snntorch_leaky(reset, level, per_neuron):
    cur, _, beta, theta, b_th, _ = _inputs(level, (3, 7), per_neuron=per_neuron, learn=True)
    gamma = 2.0
    spike_grad = lambda u: R.spike_fn(u, R.ATAN, 2.0, b_th)  # noqa: E731
    lif = snntorch.Leaky(beta=beta.detach().clone(), threshold=theta.detach().clone(),
                         spike_grad=spike_grad, reset_mechanism=reset, learn_beta=True,
                         learn_threshold=True, graded_spikes_factor=gamma)
    mem = torch.zeros_like(cur[0])
    spks, mems = [], []
    for t in range(cur.shape[0]):
        s, mem = lif(cur[t], mem)
        spks.append(s)
        mems.append(mem)
    spk_step, mem_step = torch.stack(spks), torch.stack(mems)

    spk, mem_seq = _fused.lif_sequence(cur, None, beta.clamp(0, 1), theta, gamma=gamma,
                                       reset=R.RESETS.index(reset), b_th=b_th)
    assert torch.equal(spk, spk_step) and torch.equal(mem_seq, mem_step)

    w_spk, w_mem = torch.randn_like(spk), torch.randn_like(spk) * 0.1
    loss = lambda s, m: (s * w_spk).sum() + (m * w_mem).sum()  # noqa: E731
    got = torch.autograd.grad(loss(spk, mem_seq), [cur, beta, theta])
    want = torch.autograd.grad(loss(spk_step, mem_step), [cur, lif.beta, lif.threshold])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w.reshape(g.shape), rtol=1e-10, atol=1e-12)


def test_lif_sequence_marks_its_band():
    cur, _, beta, theta, _, _ = _inputs("2%", (2, 5))
    spk, _ = _fused.lif_sequence(cur, None, beta, theta, b_th=0.1)
    bits = _fused.band_of(spk)
    mem = R.lif_sequence(cur, torch.zeros_like(cur[0]), beta, theta, b_th=0.1)[1]
    assert torch.equal(bits, R.pack_bits((mem - theta).abs() < 0.1))
    dense, _ = _fused.lif_sequence(cur, None, beta, theta, b_th=None)
    assert _fused.band_of(dense) is None


@pytest.mark.parametrize("reset,learn_beta,learn_theta", [
    (R.SUBTRACT, False, False), (R.ZERO, False, False), (R.SUBTRACT, False, True),
    (R.NONE, True, False),
])
def test_lif_sequence_saved_bytes_follow_compact_formula(reset, learn_beta, learn_theta):
    T, B, N = 50, 4, 32
    cur, _, beta, theta, _, _ = _inputs("2%", (B, N), T=T)
    cur = cur.detach().requires_grad_()  # a leaf: not counted, it exists anyway
    beta = torch.rand(N, dtype=DT).requires_grad_(learn_beta)
    theta = torch.tensor(1.0, dtype=DT, requires_grad=learn_theta)
    with saved_bytes() as kept:
        spk, mem = _fused.lif_sequence(cur, None, beta, theta, reset=reset, b_th=0.05)
    n = T * B * N
    nnz = int(((mem - theta).abs() < 0.05).sum())
    words = (n + 31) // 32
    expected = 4 * words + 8 * nnz  # band bits + in-band values
    if not learn_beta:
        expected += 8 * N  # β itself (not a parameter here)
    if reset == R.ZERO or (reset == R.SUBTRACT and learn_theta):
        expected += 4 * words  # reset flags r[t]
    if learn_beta:
        expected += 8 * n + 8 * B * N  # the membrane and U[0]: ∂U[t]/∂β = U[t−1]
    assert kept["bytes"] == expected
    assert 0 < nnz < 0.1 * n
    if not learn_beta:
        assert kept["bytes"] < 0.2 * 8 * n  # vs. the float64 membrane per-step snnTorch keeps


def test_lif_sequence_bad_input():
    with pytest.raises(ValueError, match="floating-point"):
        _fused.lif_sequence(torch.ones(4, 3, dtype=torch.int64), None, 0.9, 1.0)
    with pytest.raises(ValueError, match=r"\[T, B"):
        _fused.lif_sequence(torch.ones(4), None, 0.9, 1.0)
    with pytest.raises(ValueError, match="T = 0"):
        _fused.lif_sequence(torch.ones(0, 2, 3), None, 0.9, 1.0)
    with pytest.raises(ValueError, match="beta"):
        _fused.lif_sequence(torch.ones(4, 2, 3), None, torch.ones(5), 1.0)
    with pytest.raises(ValueError, match="mem"):
        _fused.lif_sequence(torch.ones(4, 2, 3), torch.zeros(7), 0.9, 1.0)


def test_lif_sequence_does_not_mutate_inputs():
    cur, m0, beta, theta, _, _ = _inputs("30%", (2, 4), mem0=True, learn=True)
    before = [t.detach().clone() for t in (cur, m0, beta, theta)]
    spk, mem = _fused.lif_sequence(cur, m0, beta, theta, reset=R.ZERO)
    (spk.sum() + mem.sum()).backward()
    for t, b in zip((cur, m0, beta, theta), before):
        assert torch.equal(t.detach(), b)
    assert math.isfinite(cur.grad.sum().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.cuda
@pytest.mark.parametrize("reset", [R.SUBTRACT, R.ZERO, R.NONE])
@pytest.mark.parametrize("level", list(ACTIVITY))
def test_lif_sequence_cuda_matches_reference(level, reset):
    """On the GPU against the CPU reference (to rounding: the CUDA compiler may fuse
    multiply-adds)."""
    cur, m0, beta, theta, b_th, _ = _inputs(level, (3, 8), per_neuron=True, learn=True,
                                            mem0=True)
    kw = dict(reset=reset, b_th=b_th)
    spk_r, mem_r = R.lif_sequence(cur, m0, beta, theta, **kw)
    w = torch.randn_like(spk_r)
    want = torch.autograd.grad((spk_r * w).sum() + mem_r.sum(), [cur, m0, beta, theta])
    dev = [t.detach().cuda().requires_grad_() for t in (cur, m0, beta, theta)]
    spk, mem = _fused.lif_sequence(dev[0], dev[1], dev[2].clamp(0, 1), dev[3], **kw)
    torch.testing.assert_close(spk.cpu(), spk_r)
    torch.testing.assert_close(mem.cpu(), mem_r, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad((spk * w.cuda()).sum() + mem.sum(), dev)
    for g, r in zip(got, want):
        torch.testing.assert_close(g.cpu(), r, rtol=1e-10, atol=1e-12)
