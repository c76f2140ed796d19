"""Adaptive band (DESIGN.md §2): B_th follows the membrane so that ρ tracks a target."""

import math
import os
import warnings

import pytest
import snntorch
import torch
import torch.multiprocessing as mp
from torch import nn

import snntorch_sparse as snn
from snntorch_sparse import metrics, surrogate
from snntorch_sparse.surrogate import AdaptiveBand, AdaptiveSurrogate, EmptyBandWarning


def _replay(band, counts_totals):
    """The widths the rule gives for a sequence of ``(count, total)`` observations."""
    width, out = band.init, []
    for count, total in counts_totals:
        width = band.next_width(width, count, total)
        out.append(width)
    return out


# ------------------------------------------------------------------ settings, validation
def test_auto_is_the_default_settings():
    assert surrogate._check_b_th("auto") == AdaptiveBand()
    band = AdaptiveBand(target=0.05, init=0.3, min=0.1, max=1.0)
    assert surrogate._check_b_th(band) is band
    assert surrogate._check_b_th(0.2) == 0.2 and surrogate._check_b_th(None) is None


@pytest.mark.parametrize("bad", ["Auto", "dense", -0.1, 0.0, math.inf, True])
def test_bad_b_th_is_a_clear_error(bad):
    with pytest.raises(ValueError, match='b_th must be None .*"auto" or an AdaptiveBand'):
        surrogate._check_b_th(bad)


@pytest.mark.parametrize("kw, match", [
    (dict(target=0.0), "target"), (dict(target=1.0), "target"), (dict(init=5.0), "min <= init"),
    (dict(min=0.0), "min <= init"), (dict(rate=0.0), "rate"), (dict(max_step=1.0), "max_step"),
    (dict(target="x"), "target"),
])
def test_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveBand(**kw)


def test_rule():
    band = AdaptiveBand(target=0.02, init=0.2, min=0.05, max=1.0, rate=0.5, max_step=2.0)
    assert band.next_width(0.2, 0, 100) == 0.4                      # empty: widest step
    assert band.next_width(0.2, 2, 100) == pytest.approx(0.2)       # on target: unchanged
    assert band.next_width(0.2, 8, 100) == pytest.approx(0.1)       # 4x too many: /2
    assert band.next_width(0.2, 100, 100) == pytest.approx(0.1)     # capped at 1/max_step
    assert band.next_width(0.06, 100, 100) == 0.05                  # clipped at min
    assert band.next_width(0.8, 0, 100) == 1.0                      # clipped at max


def test_eager_surrogate_refuses_an_adaptive_band():
    with pytest.raises(ValueError, match="adaptive band .* compiled surrogate shapes"):
        surrogate.sparse(lambda u: (u > 0).float(), b_th="auto")


# ------------------------------------------------------------------ the mechanism
def _mem(seed, shape=(20, 8, 64), scale=0.6):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * scale


@pytest.mark.parametrize("make", ["surrogate", "leaky_step", "leaky_seq", "linear"])
def test_forward_unchanged_width_follows_rule_and_gradient_uses_old_width(make):
    """Outputs equal the fixed band's; the width after each training call is the rule's
    on that call's band size; the gradient of a call is the fixed band's at the width
    the call started with."""
    torch.manual_seed(0)
    band = AdaptiveBand(target=0.05, init=0.2, rate=0.5)
    for it in range(4):
        cur = _mem(it, scale=2.0 + it).requires_grad_()
        if make == "surrogate":
            if it == 0:
                sg = surrogate.fast_sigmoid(slope=25, b_th=band)
            width = sg.b_th
            fixed = surrogate.fast_sigmoid(slope=25, b_th=width)
            out, ref_fn = sg(cur - 1.0), lambda c: fixed(c - 1.0)
            total = cur.numel()
        elif make in ("leaky_step", "leaky_seq"):
            if it == 0:
                lif = snn.Leaky(beta=0.9, b_th=band)
                sg = lif.spike_grad
            width = sg.b_th
            ref = snn.Leaky(beta=0.9, b_th=width)
            if make == "leaky_seq":
                out = lif.forward_sequence(cur)[0]
                ref_out = ref.forward_sequence(cur.detach().requires_grad_())
                total = cur.numel()
            else:  # per step: one update per surrogate call; compare output only
                out = lif._stepwise_sequence(cur, torch.zeros_like(cur[0]), band)[0]
                ref_out = ref._stepwise_sequence(cur.detach(), torch.zeros_like(cur[0]), width)
                assert torch.equal(out, ref_out[0])
                continue
            ref_fn = None
        else:
            if it == 0:
                layer = snn.SpikingLinear(64, 32, beta=0.9, b_th=band, dtype=torch.float64)
                ref_layer = snn.SpikingLinear(64, 32, beta=0.9, b_th=0.2, dtype=torch.float64)
                ref_layer.load_state_dict({k: v for k, v in layer.state_dict().items()
                                           if "width" not in k})
                sg = layer.spike_grad
            width = sg.b_th
            ref_layer.b_th = width
            out = layer(cur)
            ref_fn, total = None, out.numel()
        before = width
        if ref_fn is not None:
            ref_in = cur.detach().requires_grad_()
            ref_out = ref_fn(ref_in)
        elif make == "linear":
            ref_in = cur.detach().requires_grad_()
            ref_out = ref_layer(ref_in)
        else:
            ref_in = cur.detach().requires_grad_()
            ref_out = ref.forward_sequence(ref_in)[0]
        assert torch.equal(out, ref_out)
        (out * torch.linspace(0, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
        (ref_out * torch.linspace(0, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
        assert torch.equal(cur.grad, ref_in.grad)
        assert cur.grad.abs().sum() > 0
        count = round(sg.last_rho * total)
        assert sg.b_th == band.next_width(before, count, total)
        assert sg.b_th != before


def test_tracks_the_target():
    lif = snn.Leaky(beta=0.9, b_th=AdaptiveBand(target=0.02, init=0.2))
    rhos = []
    for it in range(60):
        cur = (_mem(100 + it, scale=0.5) + 0.05).requires_grad_()
        lif.forward_sequence(cur)
        rhos.append(lif.spike_grad.last_rho)
    assert rhos[0] > 0.06                               # 0.2 starts far too wide here
    assert abs(sum(rhos[-20:]) / 20 - 0.02) < 0.004


def test_deterministic_and_eval_and_no_grad_leave_it():
    def widths():
        lif = snn.Leaky(beta=0.9, b_th="auto")
        out = []
        for it in range(5):
            lif.forward_sequence(_mem(it).requires_grad_())
            out.append(lif.spike_grad.b_th)
        return lif, out
    lif, a = widths()
    assert a == widths()[1] and len(set(a)) > 1
    w = lif.spike_grad.b_th
    with torch.no_grad():
        lif.forward_sequence(_mem(9))
    lif.eval()
    lif.forward_sequence(_mem(9).requires_grad_())
    lif(_mem(9)[0].requires_grad_())
    assert lif.spike_grad.b_th == w


def test_module_state_saved_loaded_moved():
    net = nn.Sequential(nn.Linear(64, 32), snn.Leaky(beta=0.9, init_hidden=True, b_th="auto"))
    for it in range(3):
        for x in _mem(it).float():
            net(x.requires_grad_())
    sg = net[1].spike_grad
    assert isinstance(sg, AdaptiveSurrogate)
    state = net.state_dict()
    assert state["1.spike_grad.width"].item() == sg.b_th != 0.2
    fresh = nn.Sequential(nn.Linear(64, 32), snn.Leaky(beta=0.9, init_hidden=True, b_th="auto"))
    assert fresh[1].spike_grad.b_th == 0.2
    fresh.load_state_dict(state)
    assert fresh[1].spike_grad.b_th == sg.b_th        # host copy refreshed on load
    net.to(torch.float32)
    assert net[1].spike_grad.width.dtype == torch.float32 and sg.b_th == state[
        "1.spike_grad.width"].item()
    if torch.cuda.is_available():
        net.cuda()
        assert net[1].spike_grad.width.is_cuda


def test_setter_switches_between_fixed_and_adaptive():
    lif = snn.Leaky(beta=0.9, b_th=0.2)
    lif.b_th = "auto"
    assert isinstance(lif.spike_grad, AdaptiveSurrogate) and "spike_grad" in lif._modules
    lif.b_th = 0.3
    assert lif.spike_grad == surrogate.atan(alpha=2.0, b_th=0.3)
    assert "spike_grad" not in lif._modules and "spike_grad.width" not in lif.state_dict()
    spk, _ = lif.forward_sequence(_mem(0).requires_grad_(), backward="dense")  # via _band
    assert spk.shape == (20, 8, 64)


def test_sparsify_auto_gives_each_neuron_its_own_band():
    net = nn.Sequential(nn.Linear(4, 8), snntorch.Leaky(beta=0.9, init_hidden=True),
                        nn.Linear(8, 3), snntorch.Synaptic(alpha=0.8, beta=0.9, init_hidden=True))
    snn.sparsify(net, b_th="auto", all_neurons=True)
    a, b = net[1].spike_grad, net[3].spike_grad
    assert isinstance(a, AdaptiveSurrogate) and isinstance(b, AdaptiveSurrogate) and a is not b
    assert (a.layer, b.layer) == ("1", "3")           # named for the empty-band warning
    assert {"1.spike_grad.width", "3.spike_grad.width"} <= set(net.state_dict())


def test_explicit_fixed_band_is_the_paper_band():
    lif = snn.Leaky(beta=0.9, b_th=0.2)
    assert type(lif.spike_grad) is surrogate.SparseSurrogate and lif.spike_grad.b_th == 0.2
    layer = snn.SpikingLinear(4, 3, beta=0.9, b_th=0.2)
    assert layer._config().neuron.b_th == 0.2 and "spike_grad.width" not in layer.state_dict()


# ------------------------------------------------------------------ never silent
def test_empty_band_warns_once_naming_the_layer():
    net = nn.Sequential(nn.Linear(16, 8), snn.Leaky(beta=0.9, init_hidden=True, b_th=0.2),
                        nn.Linear(8, 4), snn.Leaky(beta=0.9, init_hidden=True, b_th=0.2))
    with torch.no_grad():
        net[2].weight.mul_(1e-4)                  # layer 3 never comes near threshold
        net[2].bias.zero_()
    metrics.band_report(net)                      # names the layers
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        for _ in range(surrogate.EMPTY_PATIENCE + 20):
            net(torch.rand(4, 16) * 3)
    empty = [w for w in got if issubclass(w.category, EmptyBandWarning)]
    assert len(empty) == 1
    msg = str(empty[0].message)
    assert "layer '3'" in msg and "0.00%" in msg and 'b_th="auto"' in msg
    rows = metrics.band_report(net)
    assert rows[1]["rho"] == 0 and rows[1]["b_th"] == 0.2


def test_no_warning_while_the_band_is_populated():
    lif = snn.Leaky(beta=0.9, b_th=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyBandWarning)
        for it in range(surrogate.EMPTY_PATIENCE + 5):
            lif.forward_sequence(_mem(it, scale=0.3).requires_grad_() + 0.9)


def test_adaptive_band_rescues_an_empty_layer():
    layer = snn.SpikingLinear(64, 32, beta=0.9, b_th="auto")
    with torch.no_grad():
        layer.weight.mul_(0.05)
    x = _mem(0).float()
    rhos = []
    for _ in range(15):
        layer(x.requires_grad_())
        rhos.append(layer.spike_grad.last_rho)
    assert rhos[0] == 0 and rhos[-1] > 0.005


# ------------------------------------------------------------------ DDP ranks agree
def _rank(rank, world, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}",
                                         rank=rank, world_size=world)
    lif = snn.Leaky(beta=0.9, b_th="auto")
    widths = []
    for it in range(6):  # every rank sees different data
        lif.forward_sequence(_mem(10 * rank + it, scale=0.4 + 0.5 * rank).requires_grad_())
        widths.append(lif.spike_grad.b_th)
    torch.save(widths, os.path.join(out_dir, f"{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_ranks_agree_on_the_summed_count(tmp_path):
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    w0, w1 = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    assert w0 == w1
    # The same as one process observing both ranks' counts summed.
    lif0, lif1 = snn.Leaky(beta=0.9, b_th="auto"), snn.Leaky(beta=0.9, b_th="auto")
    band, obs = lif0.spike_grad.band, []
    for it in range(6):
        counts = []
        for rank, lif in ((0, lif0), (1, lif1)):
            lif.spike_grad._width = w0[it - 1] if it else lif.spike_grad._width
            lif.forward_sequence(_mem(10 * rank + it, scale=0.4 + 0.5 * rank).requires_grad_())
            counts.append(round(lif.spike_grad.last_rho * 20 * 8 * 64))
        obs.append((sum(counts), 2 * 20 * 8 * 64))
    assert _replay(band, obs) == w0


# ------------------------------------------------------------------ reports
def test_paper_train_reports_band_per_layer():
    from snntorch_sparse import demo, paper

    res = {mode: paper.train(paper.Config(backward=mode, b_th="auto", hidden=48, epochs=1,
                                          max_batches=3, seed=5))
           for mode in ("dense", "sparse")}
    bands = res["sparse"]["epochs"][-1]["bands"]
    assert [b["layer"] for b in bands] == ["hidden.0", "hidden.1"]
    assert all(b["rho"] > 0 and b["b_th"] != 0.2 for b in bands)
    assert "AdaptiveBand(target=0.02" in bands[0]["band"]
    table = demo.format_table(paper.Config(b_th="auto").resolved(),
                              demo.compare(res["dense"], res["sparse"]))
    assert "B_th hidden2 (end)" in table and "activity hidden2" in table
