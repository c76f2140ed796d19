"""snntorch_sparse.paper: the loss against a hand computation, the network against the
reference, training behaviour and the records of a run."""

import math

import pytest
import torch

from snntorch_sparse import data, metrics, paper, reference


# ---------------------------------------------------------------------------- loss
def _hand_loss(mem, spikes, labels, logits, lam_low, nu_low, lam_up, nu_up):
    """Supplementary E.4 written out element by element."""
    T, B, C = mem.shape
    total = 0.0
    for b in range(B):
        a = [max(mem[t, b, c].item() for t in range(T)) if logits == "max"
             else sum(mem[t, b, c].item() for t in range(T)) for c in range(C)]
        log_z = math.log(sum(math.exp(v) for v in a))
        total += -(a[labels[b]] - log_z) / B
    for spk in spikes:
        N = spk.shape[2]
        for b in range(B):
            zeta = [sum(spk[t, b, i].item() for t in range(T)) for i in range(N)]
            low = lam_low / N * sum(max(0.0, nu_low - z) ** 2 for z in zeta)
            up = lam_up * max(0.0, sum(zeta) / N - nu_up)
            total += (low + up) / B
    return total


@pytest.mark.parametrize("logits", ["max", "sum"])
def test_loss_matches_hand_computation(logits):
    g = torch.Generator().manual_seed(0)
    T, B, C = 6, 4, 3
    mem = torch.randn(T, B, C, generator=g, dtype=torch.float64)
    # layer 1: some silent neurons (lower penalty); layer 2: busy (upper penalty)
    s1 = (torch.rand(T, B, 5, generator=g) < 0.15).double()
    s2 = (torch.rand(T, B, 7, generator=g) < 0.6).double()
    labels = torch.tensor([0, 2, 1, 2])
    consts = dict(lambda_low=100.0, nu_low=0.5, lambda_up=0.06, nu_up=1.0)
    loss, parts = paper.paper_loss(mem, [s1, s2], labels, logits=logits, **consts)
    expected = _hand_loss(mem, [s1, s2], labels.tolist(), logits, 100.0, 0.5, 0.06, 1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert parts["low"] > 0 and parts["up"] > 0
    assert parts["ce"] + parts["low"] + parts["up"] == pytest.approx(expected, rel=1e-12)


def test_loss_regularisers_vanish_in_range():
    T, B, N = 10, 3, 4
    spk = torch.zeros(T, B, N)
    spk[0] = 1  # every neuron fires once: above ν_low, mean count 1 = ν_up
    loss, parts = paper.paper_loss(torch.zeros(T, B, 2), [spk], torch.zeros(B, dtype=torch.long))
    assert parts["low"] == 0 and parts["up"] == 0
    assert loss.item() == pytest.approx(math.log(2))


def test_logits_mode_rejected():
    with pytest.raises(ValueError, match="'max' or 'sum'"):
        paper.logits_of(torch.zeros(2, 2, 2), "mean")


# --------------------------------------------------------------------------- model
def test_init_and_backward_modes():
    torch.manual_seed(0)
    net = paper.PaperNet(64, 50, 10, 0.9, 0.8, backward=("dense", "sparse", "sparse"),
                         init_gain=3.0)
    assert [layer.backward for layer in net.layers] == ["dense", "sparse", "sparse"]
    assert net.readout.readout and not net.hidden[0].readout
    for layer in net.layers:
        bound = 3.0 / math.sqrt(layer.in_features)
        w = layer.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert float(net.hidden[0].beta) == pytest.approx(0.9)
    assert float(net.readout.beta) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="three"):
        paper.PaperNet(4, 4, 2, 0.9, 0.9, backward=("dense", "sparse"))


@pytest.mark.parametrize("backward", ["dense", "sparse"])
def test_network_matches_reference(backward):
    """Outputs and weight gradients of the paper's network equal a plain-autograd chain of
    ``reference.spiking_linear`` with the fast-sigmoid surrogate (slope 100) and the band
    (sparse) or without it (dense), in float64."""
    torch.manual_seed(1)
    T, B = 20, 6
    net = paper.PaperNet(12, 16, 4, 0.9, 0.85, b_th=0.2, backward=backward,
                         init_gain=5.0).double()
    x = (torch.rand(T, B, 12, dtype=torch.float64) < 0.3).double()
    y = torch.randint(0, 4, (B,))
    out, spikes, mems = net.run(x)
    loss, _ = paper.paper_loss(out, spikes, y)
    loss.backward()

    b_th = 0.2 if backward == "sparse" else None
    ws = [layer.weight.detach().clone().requires_grad_() for layer in net.layers]
    kw = dict(shape=reference.FAST_SIGMOID, p=100.0, b_th=b_th)
    # β and θ as the layers hold them (float32 constants cast to float64)
    hs, h = [], x
    for layer, w in zip(net.hidden, ws):
        h = reference.spiking_linear(h, w, None, layer.beta, layer.threshold, **kw)
        hs.append(h)
    ref_out = reference.spiking_linear(h, ws[2], None, net.readout.beta, None, readout=True,
                                       **kw)
    ref_loss, _ = paper.paper_loss(ref_out, hs, y)
    ref_loss.backward()
    assert 0 < spikes[0].mean() < 0.5 and 0 < spikes[1].mean() < 0.5  # the test has spikes
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(loss, ref_loss)
    for layer, w in zip(net.layers, ws):
        assert w.grad.abs().sum() > 0
        torch.testing.assert_close(layer.weight.grad, w.grad)


def test_activity_is_equation_13():
    torch.manual_seed(2)
    net = paper.PaperNet(10, 8, 3, 0.9, 0.9, init_gain=4.0)
    x = (torch.rand(15, 5, 10) < 0.4).float()
    _, _, mems = net.run(x)
    cur = x @ net.hidden[0].weight.detach().t()
    _, mem_ref = reference.lif_sequence(cur, torch.zeros(5, 8), torch.tensor(0.9),
                                        torch.tensor(1.0))
    torch.testing.assert_close(mems[0], mem_ref)
    band = ((mem_ref - 1.0).abs() < 0.2).double().mean().item()
    assert metrics.activity(mems[0], 1.0, 0.2) == pytest.approx(band)


# ------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def test_training_steps_reduce_loss(digits):
    torch.manual_seed(0)
    cfg = paper.Config(hidden=64).resolved()
    net = cfg.network(64, 10)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    x, y = next(iter(data.loader(digits[0], 64, shuffle=True, seed=0)))
    losses = [paper.train_step(net, opt, x, y, cfg)["loss"] for _ in range(20)]
    assert losses[-1] < 0.8 * losses[0]
    assert max(losses[-5:]) < min(losses[:5])


def test_dense_and_sparse_start_identical_and_record(digits):
    runs = {}
    for mode in ("dense", "sparse"):
        cfg = paper.Config(backward=mode, hidden=48, epochs=2, max_batches=3, seed=5)
        runs[mode] = paper.train(cfg, datasets=digits)
    d, s = runs["dense"], runs["sparse"]
    # same seed: same initial weights and the same first batch, so the same first forward —
    # up to float32 rounding: the sparse mode's CPU forward sums the input spikes' weights
    # (event-driven) in another order than the dense GEMM (bitwise equality of the two
    # forwards on exact sums: tests/test_events.py)
    assert math.isclose(d["history"][0]["loss"], s["history"][0]["loss"], rel_tol=1e-6)
    assert d["history"][0]["activity"] == s["history"][0]["activity"]
    for res in (d, s):
        assert len(res["history"]) == 6 and len(res["epochs"]) == 2
        assert 0 <= res["test_accuracy"] <= 1
        rec = res["history"][-1]
        assert len(rec["activity"]) == 2 and all(0 < a < 0.2 for a in rec["activity"])
        assert rec["forward_ms"] > 0 and rec["backward_ms"] > 0
        assert len(rec["backward_ms_layers"]) == 3
        assert all(t >= 0 for t in rec["backward_ms_layers"])
        assert sum(rec["backward_ms_layers"]) <= rec["backward_ms"] * 1.01
        assert rec["peak_bytes"] is None  # CPU: no allocator peak
        assert res["summary"]["batches"] == 5  # the first batch is warm-up
    # the sparse run keeps far less for backward (compact band and input)
    assert s["summary"]["saved_bytes"] < 0.5 * d["summary"]["saved_bytes"]


def test_config_validation():
    with pytest.raises(ValueError, match="unknown dataset"):
        paper.Config(dataset="mnist").resolved()
    for bad in (0, -0.1, math.inf):
        with pytest.raises(ValueError, match="b_th"):
            paper.Config(b_th=bad).resolved()
    with pytest.raises(ValueError, match="hidden"):
        paper.Config(hidden=0).resolved()
    cfg = paper.Config(dataset="shd").resolved()
    assert (cfg.hidden, cfg.epochs, cfg.batch_size, cfg.lr, cfg.num_steps) == (200, 200, 256,
                                                                               1e-3, 500)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_clear():
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        paper.Config(device="cuda").resolved()


def test_wrong_input_width_is_a_data_error():
    bad = data.LatencyDataset(torch.rand(8, 5), torch.zeros(8, dtype=torch.long), 10)
    with pytest.raises(data.DataError, match=r"\[T, B, 64\]"):
        paper.train(paper.Config(hidden=8, epochs=1), datasets=(bad, bad))
