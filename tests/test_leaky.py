"""snntorch_sparse.Leaky against snntorch.Leaky (per step) and forward_sequence."""

import copy
import pickle
import random
import warnings

import pytest
import snntorch
import snntorch.surrogate as snn_sg
import snntorch.utils
import torch
from snntorch.functional import quant

import snntorch_sparse
from snntorch_sparse import _fused, reference, surrogate
from snntorch_sparse.leaky import Leaky

F64 = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore:Inhibition is an unstable feature")

# Shapes whose dense gradient is bit-identical to snnTorch's in float64 (see
# test_surrogate): (ours, snnTorch's, shape id, parameter).
EXACT_SHAPES = [
    (lambda: surrogate.atan(alpha=2.0, b_th=None), lambda: None, reference.ATAN, 2.0),
    (lambda: surrogate.atan(alpha=3.5, b_th=None), lambda: snn_sg.atan(alpha=3.5),
     reference.ATAN, 3.5),
    (lambda: surrogate.fast_sigmoid(slope=10, b_th=None), lambda: snn_sg.fast_sigmoid(10),
     reference.FAST_SIGMOID, 10.0),
    (lambda: surrogate.triangular(threshold=0.5, b_th=None), lambda: snn_sg.triangular(0.5),
     reference.TRIANGULAR, 0.5),
    (lambda: surrogate.straight_through(b_th=None), snn_sg.straight_through_estimator,
     reference.STRAIGHT_THROUGH, 0.0),
]
# sigmoid's dense gradient is compared with reference.spike_fn instead (snnTorch rounds
# grad·slope to float32, see surrogate.sigmoid).
SIGMOID = (lambda: surrogate.sigmoid(slope=8.0, b_th=None), None, reference.SIGMOID, 8.0)


def ref_spike_grad(shape, p, b_th):
    """reference.spike_fn as a snnTorch spike_grad (float32 spikes, as snnTorch)."""
    return lambda u: reference.spike_fn(u, shape, p, b_th).float()


# ------------------------------------------------------------------ config sampling
def sample_configs(n, seed):
    rng = random.Random(seed)
    configs = []
    for i in range(n):
        inhibition = rng.random() < 0.15
        cfg = dict(
            reset_mechanism=rng.choice(["subtract", "zero", "none"]),
            reset_delay=rng.random() < 0.7,
            init_hidden=rng.random() < 0.4,
            output=rng.random() < 0.5,
            inhibition=inhibition,
            learn_beta=rng.random() < 0.5,
            learn_threshold=rng.random() < 0.5,
            learn_graded_spikes_factor=rng.random() < 0.3,
            graded_spikes_factor=rng.choice([1.0, 1.0, 0.5, 1.5]),
            tensor_beta=rng.random() < 0.4,
            tensor_threshold=rng.random() < 0.4,
            state_quant=rng.random() < 0.15,
            surrogate_disable=rng.random() < 0.1,
            rank=2 if inhibition else rng.choice([1, 2, 3, 4]),
            activity=rng.choice(["rare", "medium", "frequent"]),
            shape_idx=rng.randrange(len(EXACT_SHAPES) + 1),
            steps=rng.choice([3, 5, 7]),
            seed=1000 + i,
        )
        configs.append(cfg)
    return configs


CONFIGS = sample_configs(48, seed=20240601)


def cfg_id(cfg):
    flags = [cfg["reset_mechanism"], f"{cfg['rank']}d", cfg["activity"]]
    for key in ("init_hidden", "output", "inhibition", "learn_beta", "learn_threshold",
                "learn_graded_spikes_factor", "tensor_beta", "tensor_threshold",
                "state_quant", "surrogate_disable"):
        if cfg[key]:
            flags.append(key)
    if not cfg["reset_delay"]:
        flags.append("no_delay")
    return "-".join(flags)


STEP_SHAPES = {1: (6,), 2: (3, 6), 3: (2, 3, 6), 4: (2, 2, 3, 6)}
INPUT = {"rare": (0.05, 0.15), "medium": (0.3, 0.4), "frequent": (0.9, 1.0)}


def leaky_kwargs(cfg):
    gen = torch.Generator().manual_seed(cfg["seed"])
    n = STEP_SHAPES[cfg["rank"]][-1]
    # Per-neuron β crosses 1 on purpose: snnTorch clamps it (and its gradient) to [0, 1].
    beta = torch.rand(n, generator=gen, dtype=F64) * 0.7 + 0.4 if cfg["tensor_beta"] else 0.85
    threshold = (torch.rand(n, generator=gen, dtype=F64) * 0.5 + 0.75
                 if cfg["tensor_threshold"] else 1.0)
    kw = dict(beta=beta, threshold=threshold, reset_mechanism=cfg["reset_mechanism"],
              reset_delay=cfg["reset_delay"], init_hidden=cfg["init_hidden"],
              output=cfg["output"], inhibition=cfg["inhibition"],
              learn_beta=cfg["learn_beta"], learn_threshold=cfg["learn_threshold"],
              learn_graded_spikes_factor=cfg["learn_graded_spikes_factor"],
              graded_spikes_factor=cfg["graded_spikes_factor"],
              surrogate_disable=cfg["surrogate_disable"])
    if cfg["state_quant"]:
        kw["state_quant"] = quant.state_quant(num_bits=4, uniform=True, threshold=1.0)
    return kw


def make_input(cfg):
    gen = torch.Generator().manual_seed(cfg["seed"] + 1)
    lo, spread = INPUT[cfg["activity"]]
    shape = (cfg["steps"],) + STEP_SHAPES[cfg["rank"]]
    return lo + spread * torch.randn(shape, generator=gen, dtype=F64)


def run_steps(model, x, cfg):
    """T per-step calls the way a user writes them; returns (spk [T,...], mem [T,...])."""
    spks, mems = [], []
    mem = None if cfg["init_hidden"] else model.init_leaky()
    for t in range(x.shape[0]):
        if cfg["init_hidden"]:
            out = model(x[t])
            spk = out[0] if isinstance(out, tuple) else out
            mem = out[1] if isinstance(out, tuple) else model.mem
        else:
            spk, mem = model(x[t], mem)
        spks.append(spk)
        mems.append(mem)
    return torch.stack(spks), torch.stack(mems)


def loss_weights(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=F64), torch.randn(shape, generator=gen,
                                                                      dtype=F64)


def learnables(model):
    return [p for p in (model.beta, model.threshold, model.graded_spikes_factor)
            if isinstance(p, torch.nn.Parameter)]


def outputs_and_grads(model, cfg):
    x = make_input(cfg).requires_grad_()
    spk, mem = run_steps(model, x, cfg)
    w_spk, w_mem = loss_weights(spk.shape, cfg["seed"] + 2)
    loss = (spk * w_spk).sum() + (mem * w_mem).sum()
    # allow_unused: e.g. θ gets no gradient with surrogate_disable and reset "zero"
    grads = torch.autograd.grad(loss, [x] + learnables(model), allow_unused=True)
    return spk, mem, grads


def assert_same(ours, ref):
    spk, mem, grads = ours
    ref_spk, ref_mem, ref_grads = ref
    assert spk.dtype == ref_spk.dtype
    assert torch.equal(spk, ref_spk)
    assert torch.equal(mem, ref_mem)
    assert len(grads) == len(ref_grads)
    for g, rg in zip(grads, ref_grads):
        assert (g is None) == (rg is None)
        assert g is None or (g.dtype == rg.dtype and torch.equal(g, rg))


# ----------------------------------------------------------------------- grid tests
@pytest.mark.parametrize("cfg", CONFIGS, ids=[cfg_id(c) for c in CONFIGS])
def test_dense_equals_snntorch(cfg):
    """b_th=None: forward and float64 gradients bit-identical to snntorch.Leaky."""
    kw = leaky_kwargs(cfg)
    if cfg["shape_idx"] < len(EXACT_SHAPES):
        ours_sg, snn_sg_f, _, _ = EXACT_SHAPES[cfg["shape_idx"]]
        ref_sg = snn_sg_f()
    else:
        ours_sg, _, shape, p = SIGMOID
        ref_sg = ref_spike_grad(shape, p, None)
    ours = Leaky(**kw, spike_grad=ours_sg(), b_th=None).double()
    ref = snntorch.Leaky(**kw, spike_grad=ref_sg).double()
    result = outputs_and_grads(ours, cfg)
    assert_same(result, outputs_and_grads(ref, cfg))
    assert result[2][0].abs().sum() > 0


@pytest.mark.parametrize("cfg", CONFIGS, ids=[cfg_id(c) for c in CONFIGS])
def test_band_equals_reference(cfg):
    """A finite band: equal to snntorch.Leaky driven by reference.spike_fn with the band."""
    kw = leaky_kwargs(cfg)
    entries = EXACT_SHAPES + [SIGMOID]
    ours_sg, _, shape, p = entries[cfg["shape_idx"]]
    b_th = [0.1, 0.2, 0.5][cfg["seed"] % 3]
    ours = Leaky(**kw, spike_grad=ours_sg(), b_th=b_th).double()
    ref = snntorch.Leaky(**kw, spike_grad=ref_spike_grad(shape, p, b_th)).double()
    assert_same(outputs_and_grads(ours, cfg), outputs_and_grads(ref, cfg))


def test_grid_covers_every_option():
    for key in ("init_hidden", "output", "inhibition", "learn_beta", "learn_threshold",
                "learn_graded_spikes_factor", "tensor_beta", "tensor_threshold",
                "state_quant", "surrogate_disable"):
        assert {c[key] for c in CONFIGS} == {True, False}, key
    assert {c["reset_mechanism"] for c in CONFIGS} == {"subtract", "zero", "none"}
    assert {c["reset_delay"] for c in CONFIGS} == {True, False}
    assert {c["rank"] for c in CONFIGS} == {1, 2, 3, 4}
    assert {c["activity"] for c in CONFIGS} == set(INPUT)
    assert {c["shape_idx"] for c in CONFIGS} == set(range(len(EXACT_SHAPES) + 1))


def test_activity_levels_differ():
    rates = {}
    for level in INPUT:
        cfg = dict(CONFIGS[0], activity=level, rank=2, steps=7, seed=5)
        spk, _ = run_steps(Leaky(beta=0.85), make_input(cfg), dict(cfg, init_hidden=False))
        rates[level] = spk.mean().item()
    assert rates["rare"] < 0.05 < rates["medium"] < rates["frequent"]


# ------------------------------------------------------------------ state handling
@pytest.mark.filterwarnings("ignore:The module snntorch.backprop will be deprecated")
def test_one_import_switch():
    snn = snntorch_sparse
    assert snn.Leaky is Leaky and snn.surrogate is surrogate
    assert snn.sparsify is snntorch_sparse.convert.sparsify
    from snntorch_sparse.spiking_linear import SpikingLinear
    assert snn.SpikingLinear is SpikingLinear and callable(snn.fuse)
    assert snn.Synaptic is snntorch_sparse.synaptic.Synaptic
    for name in ("Alpha", "RLeaky", "RSynaptic", "Lapicque", "LinearLeaky",
                 "SpikingNeuron", "LIF"):
        assert getattr(snn, name) is getattr(snntorch, name), name
    for name in ("utils", "functional", "spikegen", "backprop"):
        assert getattr(snn, name) is getattr(snntorch, name), name
    from snntorch_sparse import functional, utils
    assert functional is snntorch.functional and utils is snntorch.utils
    assert snn.functional.quant is quant
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        snn.not_a_name
    listed = dir(snn)
    assert {"Leaky", "SpikingLinear", "sparsify", "surrogate", "fuse", "Synaptic", "utils",
            "functional", "spikegen"} <= set(listed)
    assert set(snn.__all__) == {"AdaptiveBand", "Leaky", "SpikingConv2d", "SpikingLinear",
                                "Synaptic", "empty_cache", "fuse", "sparsify", "surrogate"}
    assert snn.empty_cache is snntorch_sparse._ops.empty_cache


def test_default_is_atan_with_band():
    lif = Leaky(beta=0.9)
    sg = lif.spike_grad
    assert isinstance(sg, surrogate.AdaptiveSurrogate)
    assert (sg.shape, sg.p, sg.band, sg.b_th) == (surrogate.reference.ATAN, 2.0,
                                                   surrogate.DEFAULT_B_TH, 4.0)  # starts wide
    assert lif.b_th == surrogate.DEFAULT_B_TH
    assert Leaky(beta=0.9, b_th=0.2).spike_grad == surrogate.atan(alpha=2.0, b_th=0.2)
    assert Leaky(beta=0.9, b_th=None).spike_grad == surrogate.atan(alpha=2.0, b_th=None)
    assert isinstance(lif, snntorch.Leaky) and isinstance(lif, snntorch.SpikingNeuron)
    assert snntorch_sparse.Leaky is Leaky


def test_layer_band_wins_and_setter_rebands():
    lif = Leaky(beta=0.9, spike_grad=surrogate.fast_sigmoid(slope=5, b_th=0.7), b_th=0.3)
    assert lif.spike_grad == surrogate.fast_sigmoid(slope=5, b_th=0.3)
    lif = Leaky(beta=0.9, spike_grad=snn_sg.sigmoid(slope=4.0), b_th=0.1)
    assert lif.spike_grad == surrogate.sigmoid(slope=4.0, b_th=0.1)
    lif.b_th = None
    assert lif.b_th is None and lif.spike_grad == surrogate.sigmoid(slope=4.0, b_th=None)
    assert "b_th=None" in repr(lif) and "sigmoid(slope=4.0" in repr(lif)
    with pytest.raises(ValueError, match="b_th"):
        lif.b_th = -1.0
    with pytest.raises(ValueError, match="b_th"):
        Leaky(beta=0.9, b_th=0)
    with pytest.raises(TypeError):
        Leaky(0.9, 1.0, None, False, False, False, False, False, "subtract", False, False,
              1.0, False, True, 0.2)  # b_th is keyword-only


def test_surrogate_disable_keeps_snntorch_bypass():
    lif = Leaky(beta=0.9, surrogate_disable=True, spike_grad=lambda u: u, b_th=0.2)
    assert lif.spike_grad.__name__ == "_surrogate_bypass"
    lif.b_th = 0.4
    assert lif.spike_grad.__name__ == "_surrogate_bypass"


@pytest.mark.parametrize("init_hidden", [True, False])
def test_batch_size_change_mid_sequence(init_hidden):
    """A new batch size silently restarts the state from zeros, as in snnTorch."""
    results = []
    for cls, extra in ((Leaky, dict(b_th=None)), (snntorch.Leaky, {})):
        lif = cls(beta=0.8, init_hidden=init_hidden, learn_beta=True, **extra).double()
        x1 = (torch.randn(3, 3, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
              + 0.6).requires_grad_()
        x2 = (torch.randn(4, 2, 5, dtype=F64, generator=torch.Generator().manual_seed(1))
              + 0.6).requires_grad_()
        outs = []
        mem = None if init_hidden else lif.init_leaky()
        for x in (x1, x2):  # the stale [3, 5] state meets a [2, 5] input
            for t in range(x.shape[0]):
                if init_hidden:
                    spk, mem = lif(x[t]), lif.mem
                else:
                    spk, mem = lif(x[t], mem)
                outs += [spk, mem]
        loss = sum(o.sum() for o in outs)
        results.append(outs + list(torch.autograd.grad(loss, [x1, x2, lif.beta])))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_reset_mem_init_leaky_and_hidden_helpers():
    snntorch.SpikingNeuron.init()
    ours = Leaky(beta=0.9, init_hidden=True)
    plain = snntorch.Leaky(beta=0.9, init_hidden=True)
    x = torch.rand(4, 3) + 0.5
    for lif in (ours, plain):
        lif(x)
        lif(x)
        assert lif.mem.abs().sum() > 0 and lif.mem.requires_grad is False
    assert torch.equal(ours.mem, plain.mem)
    mem = ours.reset_mem()
    assert torch.equal(mem, torch.zeros(4, 3)) and ours.mem is mem
    assert torch.equal(ours.init_leaky(), torch.zeros(4, 3))
    ours(x.requires_grad_())
    assert ours.mem.requires_grad
    snntorch.Leaky.detach_hidden()  # snnTorch's classmethods see our instances
    assert not ours.mem.requires_grad
    snntorch.Leaky.reset_hidden()
    assert torch.equal(ours.mem, torch.zeros(4, 3))
    ours(x)
    net = torch.nn.Sequential(torch.nn.Identity(), ours)
    snntorch.utils.reset(net)
    assert torch.equal(ours.mem, torch.zeros(4, 3))
    snntorch.SpikingNeuron.init()


def test_state_dict_pickle_deepcopy_interchange():
    ours = Leaky(beta=torch.rand(5), learn_beta=True, threshold=0.7, b_th=0.3)
    plain = snntorch.Leaky(beta=torch.zeros(5), learn_beta=True, threshold=0.2)
    plain.load_state_dict(ours.state_dict())
    assert torch.equal(plain.beta, ours.beta) and torch.equal(plain.threshold, ours.threshold)
    x = torch.rand(2, 5) + 0.6
    clones = (pickle.loads(pickle.dumps(ours)), copy.deepcopy(ours))
    expected = ours(x)
    for clone in clones:
        assert type(clone) is Leaky
        assert clone.b_th == 0.3 and clone.spike_grad == ours.spike_grad
        assert all(torch.equal(a, b) for a, b in zip(clone(x), expected))


# ------------------------------------------------------------------ forward_sequence
def seq_config(rng, i):
    return dict(
        reset_mechanism=rng.choice(["subtract", "zero", "none"]),
        learn_beta=rng.random() < 0.5,
        learn_threshold=rng.random() < 0.5,
        learn_graded_spikes_factor=rng.random() < 0.3,
        graded_spikes_factor=rng.choice([1.0, 0.5]),
        tensor_beta=rng.random() < 0.5,
        tensor_threshold=rng.random() < 0.6,
        init_hidden=rng.random() < 0.3,
        rank=rng.choice([2, 3, 4]),
        activity=rng.choice(["rare", "medium", "frequent"]),
        shape_idx=rng.randrange(len(EXACT_SHAPES) + 1),
        backward=rng.choice(["sparse", "dense"]),
        b_th=rng.choice([0.1, 0.3]),
        steps=rng.choice([4, 9]),
        seed=5000 + i,
        # not covered by the fused path: the per-step fallback
        reset_delay=True, inhibition=False, state_quant=False, surrogate_disable=False,
        output=False,
    )


_RNG = random.Random(77)
SEQ_CONFIGS = [seq_config(_RNG, i) for i in range(16)]


def _sequence_pair(cfg, spike_grad=None):
    kw = leaky_kwargs(cfg)
    entries = EXACT_SHAPES + [SIGMOID]
    ours_sg = spike_grad if spike_grad is not None else entries[cfg["shape_idx"]][0]()
    lif = Leaky(**kw, spike_grad=ours_sg, b_th=cfg["b_th"]).double()
    x = make_input(cfg).requires_grad_()
    w_spk, w_mem = loss_weights(x.shape, cfg["seed"] + 3)
    return lif, x, w_spk, w_mem


def _grads(lif, x, spk, mem, w_spk, w_mem):
    loss = (spk * w_spk).sum() + (mem * w_mem).sum()
    return torch.autograd.grad(loss, [x] + learnables(lif), allow_unused=True)


def _per_step_reference(lif, x, cfg):
    """T per-step calls with the band that forward_sequence(backward=...) uses."""
    saved = lif.b_th
    if cfg["backward"] == "dense":
        lif.b_th = None
    try:
        return run_steps(lif, x, cfg)
    finally:
        lif.b_th = saved


@pytest.mark.parametrize("cfg", SEQ_CONFIGS, ids=[cfg_id(c) for c in SEQ_CONFIGS])
def test_forward_sequence_fused_matches_steps(cfg, monkeypatch):
    calls = []
    fused = _fused.lif_sequence
    monkeypatch.setattr(_fused, "lif_sequence",
                        lambda *a, **k: calls.append(k["b_th"]) or fused(*a, **k))
    lif, x, w_spk, w_mem = _sequence_pair(cfg)
    spk, mem = lif.forward_sequence(x, backward=cfg["backward"])
    assert calls == [cfg["b_th"] if cfg["backward"] == "sparse" else None]
    assert torch.equal(lif.mem, mem[-1])
    grads = _grads(lif, x, spk, mem, w_spk, w_mem)
    lif.mem = torch.zeros(0, dtype=F64)
    ref_spk, ref_mem = _per_step_reference(lif, x, cfg)
    ref_grads = _grads(lif, x, ref_spk, ref_mem, w_spk, w_mem)
    assert spk.dtype == ref_spk.dtype == torch.float32
    assert torch.equal(spk, ref_spk) and torch.equal(mem, ref_mem)
    # The fused backward sums over time in another order than autograd does. Two
    # gradients are float32 sums per step (snnTorch's spikes and reset flags are
    # float32): γ's, and a scalar θ's with reset "subtract" (see
    # test_forward_sequence_scalar_threshold_grad); there only float32 accuracy holds.
    float32_sums = [lif.graded_spikes_factor]
    if not cfg["tensor_threshold"] and cfg["reset_mechanism"] == "subtract":
        float32_sums.append(lif.threshold)
    for g, rg, param in zip(grads, ref_grads, [x] + learnables(lif)):
        rtol = 1e-6 if any(param is q for q in float32_sums) else 1e-12
        torch.testing.assert_close(g, rg, rtol=rtol, atol=1e-12)
    assert grads[0].abs().sum() > 0


def test_forward_sequence_scalar_threshold_grad():
    """snnTorch forms reset·θ in float32 (the reset flag is float32 and θ a 0-dim
    tensor), so its per-step ∂L/∂θ is float32-accurate; the fused one is float64 and
    equals the float64 oracle reference.lif_sequence."""
    lif = Leaky(beta=0.9, threshold=1.0, learn_threshold=True, b_th=0.3).double()
    x = (0.6 + torch.randn(9, 3, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
         ).requires_grad_()
    w = torch.randint(-8, 9, x.shape, generator=torch.Generator().manual_seed(4)).to(F64) / 4
    spk, mem = lif.forward_sequence(x)
    g_fused = torch.autograd.grad((spk * w).sum() + (mem * w).sum(), [x, lif.threshold])
    r_spk, r_mem = reference.lif_sequence(x, torch.zeros_like(x[0]), lif.beta, lif.threshold,
                                          b_th=0.3)
    g_ref = torch.autograd.grad((r_spk * w).sum() + (r_mem * w).sum(), [x, lif.threshold])
    for g, rg in zip(g_fused, g_ref):
        torch.testing.assert_close(g, rg, rtol=1e-12, atol=1e-12)
    lif.mem = torch.zeros(0, dtype=F64)
    s_spk, s_mem = run_steps(lif, x, dict(init_hidden=False))
    g_step = torch.autograd.grad((s_spk * w).sum() + (s_mem * w).sum(), [x, lif.threshold])
    torch.testing.assert_close(g_fused[1], g_step[1], rtol=1e-6, atol=0)


def test_forward_sequence_float64_theta_not_in_float32():
    """θ = 0.7 (a 0-dim float64): the fused membrane is the exact float64 one
    (reference.lif_sequence); snnTorch's per-step reset subtracts float32(0.7)."""
    lif = Leaky(beta=0.9, threshold=torch.tensor(0.7, dtype=F64), b_th=0.3).double()
    x = 0.5 + torch.randn(9, 3, 6, dtype=F64, generator=torch.Generator().manual_seed(8))
    spk, mem = lif.forward_sequence(x)
    r_spk, r_mem = reference.lif_sequence(x, torch.zeros_like(x[0]), lif.beta, lif.threshold,
                                          b_th=0.3)
    assert torch.equal(spk, r_spk.float()) and torch.equal(mem, r_mem)
    lif.mem = torch.zeros(0, dtype=F64)
    s_spk, s_mem = run_steps(lif, x, dict(init_hidden=False))
    assert spk.sum() > 0 and not torch.equal(mem, s_mem)
    torch.testing.assert_close(mem, s_mem, rtol=0, atol=1e-6)


def test_forward_sequence_wider_parameters_run_per_step(monkeypatch):
    monkeypatch.setattr(_fused, "lif_sequence", None)  # must not be reached
    lif = Leaky(beta=torch.rand(6, dtype=F64) * 0.5 + 0.5, b_th=0.3)
    x = torch.rand(5, 2, 6) * 1.5
    spk, mem = lif.forward_sequence(x)
    lif.mem = torch.zeros(0)
    s_spk, s_mem = run_steps(lif, x, dict(init_hidden=False))
    assert mem.dtype == s_mem.dtype == F64
    assert torch.equal(spk, s_spk) and torch.equal(mem, s_mem)


@pytest.mark.parametrize("option", ["inhibition", "state_quant", "no_delay",
                                    "surrogate_disable", "slow_path"])
@pytest.mark.parametrize("backward", ["sparse", "dense"])
def test_forward_sequence_fallback_is_exact(option, backward, monkeypatch):
    monkeypatch.setattr(_fused, "lif_sequence", None)  # must not be reached
    cfg = dict(SEQ_CONFIGS[0], rank=2, backward=backward, init_hidden=option == "no_delay",
               inhibition=option == "inhibition", state_quant=option == "state_quant",
               reset_delay=option != "no_delay",
               surrogate_disable=option == "surrogate_disable", activity="frequent")
    slow = None
    if option == "slow_path":
        def slow_fn_for_sequence_test(u):
            return snn_sg.FastSigmoid.apply(u, 4.0)
        slow = slow_fn_for_sequence_test
        with warnings.catch_warnings():  # warned once per kind (test_surrogate checks it)
            warnings.simplefilter("ignore", surrogate.SlowPathWarning)
            lif, x, w_spk, w_mem = _sequence_pair(cfg, spike_grad=slow)
    else:
        lif, x, w_spk, w_mem = _sequence_pair(cfg)
    spk, mem = lif.forward_sequence(x, backward=backward)
    grads = _grads(lif, x, spk, mem, w_spk, w_mem)
    lif.mem = torch.zeros(0, dtype=F64)
    ref_spk, ref_mem = _per_step_reference(lif, x, cfg)
    ref_grads = _grads(lif, x, ref_spk, ref_mem, w_spk, w_mem)
    assert torch.equal(spk, ref_spk) and torch.equal(mem, ref_mem)
    for g, rg in zip(grads, ref_grads):
        assert (g is None) == (rg is None)
        assert g is None or torch.equal(g, rg)
    if option == "slow_path":  # "dense" really removes the band
        assert (lif.spike_grad.fn is slow) and lif.b_th == cfg["b_th"]


@pytest.mark.parametrize("learn_gamma", [False, True])
def test_forward_sequence_feeds_spiking_linear(learn_gamma):
    """The sequence output tells a downstream SpikingLinear where its band is (so the
    layer may skip input gradients outside it); the gradients are those without that
    hint. A learnable γ reads the gradient everywhere: then no hint."""
    results = []
    for hint in (True, False):
        torch.manual_seed(0)
        # float32: the sequence's spikes are float32 (snnTorch's convention), and a cast
        # would be a new tensor without the hint.
        lif = Leaky(beta=0.9, b_th=0.3, graded_spikes_factor=1.5,
                    learn_graded_spikes_factor=learn_gamma)
        layer = snntorch_sparse.SpikingLinear(6, 4, beta=0.8, threshold=0.2, b_th=0.5)
        cur = (torch.rand(7, 3, 6, generator=torch.Generator().manual_seed(1))
               * 1.2).requires_grad_()
        spk, _ = lif.forward_sequence(cur)
        assert (_fused.band_of(spk) is not None) == (not learn_gamma)
        if not hint and _fused.band_of(spk) is not None:
            del spk._snn_sparse_band
        out = layer(spk)
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum()
        results.append(torch.autograd.grad(loss, [cur, layer.weight] + learnables(lif)))
    for g, ref in zip(*results):  # the masked input gradient sums in another order
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6)
    assert results[0][0].abs().sum() > 0


def test_forward_sequence_state_handling():
    lif = Leaky(beta=0.8, init_hidden=True, b_th=0.2)
    x = torch.rand(5, 2, 3) + 0.3
    spk, mem = lif.forward_sequence(x)
    assert torch.equal(lif.mem, mem[-1])
    # init_hidden: the stored state (one step's shape) is the initial membrane
    spk2, mem2 = lif.forward_sequence(x)
    lif.mem = mem[-1]
    ref_spk, ref_mem = run_steps(lif, x, dict(init_hidden=True))
    assert torch.equal(spk2, ref_spk) and torch.equal(mem2, ref_mem)
    # an explicit initial membrane
    mem0 = torch.rand(2, 3)
    plain = Leaky(beta=0.8, b_th=0.2)
    spk3, mem3 = plain.forward_sequence(x, mem0)
    out = [plain(x[0], mem0)]
    for t in range(1, 5):
        out.append(plain(x[t], out[-1][1]))
    assert torch.equal(spk3, torch.stack([o[0] for o in out]))
    assert torch.equal(mem3, torch.stack([o[1] for o in out]))
    # without init_hidden, None means zeros whatever the stored state
    plain.mem = torch.full((2, 3), 5.0)
    assert torch.equal(plain.forward_sequence(x)[1], Leaky(beta=0.8).forward_sequence(x)[1])
    with pytest.raises(ValueError, match="backward"):
        lif.forward_sequence(x, backward="fast")
    with pytest.raises(ValueError, match="cur_seq"):
        lif.forward_sequence(torch.rand(3))
