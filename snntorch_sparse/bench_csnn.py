"""Benchmark of snnTorch's convolutional tutorial models: per-step vs ``fuse`` (dense, sparse).

``python -m snntorch_sparse bench --config csnn`` (or ``csnn-tutorial6`` /
``csnn-tutorial7``).

The models are snnTorch's tutorial 6 CSNN (MNIST shape: a static image shown at each of
``T = 25`` steps) and tutorial 7 CSNN (N-MNIST shape: event frames ``[T, B, 2, 34, 34]``),
built with stock ``snntorch.Leaky``. Three implementations run **in the same process, on
the same model object** (``fuse`` shares its Parameters), interleaved repeat by repeat:

* ``snntorch``: the tutorials' loop — ``utils.reset(net)``, one ``net(x[t])`` per step,
  spikes stacked; dense BPTT by autograd;
* ``fused_dense``: ``fuse(net, backward="dense")(x)`` — every stateless layer once on all
  ``T·B`` samples, fused LIF kernels, snnTorch's dense gradient;
* ``fused_sparse``: ``fuse(net)(x)`` with the hidden neurons' band set to ``--b-th`` —
  band-limited surrogate, sparse convolution backward (∂W over input spikes, ∂X in the
  upstream band).

Loss as the tutorials: ``SF.ce_rate_loss()`` (tutorial 6), ``SF.mse_count_loss(0.8, 0.2)``
(tutorial 7), random labels. Reported per implementation: forward, backward and whole step
(medians of ``--repeats``), bytes kept for backward (``metrics.saved_bytes``), peak memory
of one step (CPU: growth of the peak RSS of a fresh process over the step, after a small
warm-up step; CUDA: peak
allocator bytes above the step's start), ρ per hidden layer (band activity, eq. 13), and
the FLOP floor: the multiply-adds each implementation must do (dense: forward + ∂W + ∂X of
every convolution/linear layer; sparse: ∂W over the input's nonzeros and ∂X over the
upstream band only) divided by this machine's measured GEMM rate.
"""

import statistics
import time

import snntorch
import torch
from snntorch import functional as SF
from snntorch import surrogate, utils
from torch import nn

from . import metrics
from .fuse import fuse

METHODS = ("snntorch", "fused_dense", "fused_sparse")
#: (steps, batch) on cpu / cuda, and the quick size for tests.
SIZES = {"csnn-tutorial6": {"cpu": (25, 128), "cuda": (25, 128), "quick": (6, 4)},
         "csnn-tutorial7": {"cpu": (300, 16), "cuda": (300, 128), "quick": (12, 2)}}
CONFIGS = tuple(SIZES)


# ----------------------------------------------------------------- models and data
def _csnn(snn, spike_grad, c_in, c_mid, hw):
    """The tutorials' CSNN: Conv(c_in→12, 5) → MaxPool 2 → Leaky → Conv(12→c_mid, 5) →
    MaxPool 2 → Leaky → Flatten → Linear(c_mid·hw·hw → 10) → Leaky(output), β = 0.5."""
    def leaky(**kw):
        return snn.Leaky(beta=0.5, spike_grad=spike_grad, init_hidden=True, **kw)
    return nn.Sequential(nn.Conv2d(c_in, 12, 5), nn.MaxPool2d(2), leaky(),
                         nn.Conv2d(12, c_mid, 5), nn.MaxPool2d(2), leaky(),
                         nn.Flatten(), nn.Linear(c_mid * hw * hw, 10), leaky(output=True))


def tutorial6(snn):
    """snnTorch tutorial 6's CSNN (``snn``: ``snntorch`` or ``snntorch_sparse``): MNIST
    images, fast sigmoid (slope 25)."""
    return _csnn(snn, surrogate.fast_sigmoid(slope=25), 1, 64, 4)


def tutorial7(snn):
    """snnTorch tutorial 7's N-MNIST CSNN: two polarities, atan."""
    return _csnn(snn, surrogate.atan(), 2, 32, 5)


def mnist_like(batch, seed, n_batches):
    """``n_batches`` of ``([B, 1, 28, 28] in [0, 1], labels)`` from 10 class prototypes
    (a sparse stroke-like pixel mask each) plus noise."""
    g = torch.Generator().manual_seed(1234)
    protos = (torch.rand(10, 1, 28, 28, generator=g) < 0.18).float()
    g.manual_seed(seed)
    out = []
    for _ in range(n_batches):
        y = torch.randint(0, 10, (batch,), generator=g)
        x = (protos[y] * (0.6 + 0.4 * torch.rand(batch, 1, 28, 28, generator=g))
             * (torch.rand(batch, 1, 28, 28, generator=g) > 0.2))
        out.append((x, y))
    return out


def nmnist_like(batch, steps, seed, n_batches):
    """``n_batches`` of event frames ``[T, B, 2, 34, 34]`` (0/1) and labels, from per-class
    per-pixel event rates."""
    g = torch.Generator().manual_seed(4321)
    rates = 0.08 * (torch.rand(10, 2, 34, 34, generator=g) < 0.15).float()
    g.manual_seed(seed)
    out = []
    for _ in range(n_batches):
        y = torch.randint(0, 10, (batch,), generator=g)
        x = (torch.rand(steps, batch, 2, 34, 34, generator=g) < rates[y]).float()
        out.append((x, y))
    return out


def problem(name, steps, batch, seed=0):
    """``(model, x [T, B, ...], labels, loss_fn)``: the stock model and one batch."""
    torch.manual_seed(seed)
    if name == "csnn-tutorial6":
        net = tutorial6(snntorch)
        img, y = mnist_like(batch, seed, 1)[0]
        x = img.unsqueeze(0).expand(steps, *img.shape)  # the same image at every step
        return net, x, y, SF.ce_rate_loss()
    net = tutorial7(snntorch)
    x, y = nmnist_like(batch, steps, seed, 1)[0]
    return net, x, y, SF.mse_count_loss(correct_rate=0.8, incorrect_rate=0.2)


def per_step(net, x):
    """The tutorials' loop: reset, one call per step, output spikes stacked."""
    utils.reset(net)
    return torch.stack([net(x[t])[0] for t in range(x.shape[0])])


def implementations(net, b_th):
    """``{method: x ↦ output spikes [T, B, 10]}`` and the fused sparse model."""
    dense = fuse(net, backward="dense")
    sparse = fuse(net)
    for m in sparse.modules():  # the hidden neurons' band (the output neuron stays dense)
        if hasattr(m, "b_th") and hasattr(m, "spike_grad") and m.b_th is not None:
            m.b_th = b_th
    return {"snntorch": lambda x: per_step(net, x), "fused_dense": lambda x: dense(x)[0],
            "fused_sparse": lambda x: sparse(x)[0]}, sparse


# ------------------------------------------------------------------- FLOP counting
def layer_costs(net, fused_sparse, x):
    """Per convolution/linear layer of ``net``: dense multiply-adds of its forward ``M``,
    the share of nonzeros of its input, and the band share ρ of the neuron feeding it
    (None for the first layer, whose input gradient is not needed)."""
    stats, hooks = [], []
    weighted = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    def hook(mod, inp, out):
        x = inp[0]
        k = mod.weight[0].numel()  # C_in/groups · K² (conv) or n_in (linear)
        stats.append({"layer": type(mod).__name__, "macs": out.numel() * k,
                      "in_density": (x != 0).float().mean().item()})

    for m in weighted:
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            per_step(net, x)
    finally:
        for h in hooks:
            h.remove()
    T = x.shape[0]
    merged = []
    for i, m in enumerate(weighted):  # per-step hooks fire T times per layer, in order
        rows = stats[i::len(weighted)]
        merged.append({"layer": rows[0]["layer"], "macs": sum(r["macs"] for r in rows),
                       "in_density": sum(r["in_density"] for r in rows) / T})
    rhos = [r["rho"] for r in metrics.band_report(fused_sparse, reset=False)]
    for i, row in enumerate(merged):
        row["upstream_rho"] = None if i == 0 else (rhos[i - 1] if i - 1 < len(rhos) else None)
    return merged


def flop_floor(costs, method, T, static):
    """Multiply-adds of a training step, ``{"fwd": …, "bwd": …}``: forward, and ∂W + ∂X (no
    ∂X for the first layer). Fused: a static input's first layer runs once per step, not
    ``T`` times. Sparse: the forward and ∂W over the input's nonzeros (the forward only
    where the event-driven form runs: input density ≤ the cost entry's ``events_max``,
    default the convolution's 10 %), ∂W over the layer's own band instead when that is
    fewer (the trace form; cost entry ``own_rho``), ∂X over the upstream band."""
    fwd = bwd = 0.0
    for i, c in enumerate(costs):
        once = 1.0 / T if (i == 0 and static and method != "snntorch") else 1.0
        d = c["in_density"] if method == "fused_sparse" else 1.0
        events = d if d <= c.get("events_max", 0.1) else 1.0
        dw = min(d, c.get("own_rho") or 1.0) if method == "fused_sparse" else 1.0
        dx = 0.0 if i == 0 else ((c["upstream_rho"] or 0.0) if method == "fused_sparse"
                                 else 1.0)
        fwd += c["macs"] * events * once
        bwd += c["macs"] * (dw * once + dx)
    return {"fwd": fwd, "bwd": bwd}


def gemm_rate(device):
    """Multiply-adds per second of a large float32 GEMM on ``device`` (median of 5)."""
    a = torch.randn(1024, 1024, device=device)
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        a @ a
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1024 ** 3 / statistics.median(times[1:])


# ------------------------------------------------------------------------ measuring
def _step(fn, x, y, loss_fn, params, sync):
    """``(forward ms, backward ms, loss)`` of one training step."""
    for p in params:
        p.grad = None
    t0 = time.perf_counter()
    loss = loss_fn(fn(x), y)
    sync()
    t1 = time.perf_counter()
    loss.backward()
    sync()
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3, loss.item()


def _kept_bytes(fn, x, y, loss_fn):
    """Bytes autograd keeps for the backward of one step (an untimed pass: the hooks that
    count them cost time)."""
    with metrics.saved_bytes() as kept:
        loss = loss_fn(fn(x), y)
    del loss
    return kept["bytes"]


def _peak_setup(name, method, steps, batch, b_th):
    """One training step of ``method`` and its warm-up (one sample, 2 time steps), built
    for :func:`metrics.step_peak_rss` (which runs it in a fresh process)."""
    net, x, y, loss_fn = problem(name, steps, batch)
    fns, _ = implementations(net, b_th)

    def step(x=x, y=y):
        loss_fn(fns[method](x), y).backward()

    def warm_up():
        step(x[:2, :1].contiguous(), y[:1])
        for p in net.parameters():
            p.grad = None
    return step, warm_up


def bench(name, device, repeats=3, warmup=1, b_th=0.2, quick=False, peak=True):
    """One configuration: a dict with a row per implementation and the layer costs."""
    steps, batch = SIZES[name]["quick" if quick else device.type]
    net, x, y, loss_fn = problem(name, steps, batch)
    net = net.to(device)
    x, y = x.to(device), y.to(device)  # tutorial 6: the image broadcast over T, as a user has it
    fns, sparse = implementations(net, b_th)
    params = list(net.parameters())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {m: [] for m in METHODS}
    for i in range(warmup + repeats):
        for m in METHODS:  # interleaved: a load burst hits all three alike
            r = _step(fns[m], x, y, loss_fn, params, sync)
            if i >= warmup:
                times[m].append(r)
    metrics.band_report(sparse)  # restart the counters: ρ of one measured call below
    _step(fns["fused_sparse"], x, y, loss_fn, params, sync)
    costs = layer_costs(net, sparse, x)
    rate = gemm_rate(device)
    rows = []
    for m in METHODS:
        fwd, bwd, loss = (statistics.median(v[k] for v in times[m]) for k in range(3))
        floor_macs = sum(flop_floor(costs, m, steps, static=x.stride(0) == 0).values())
        row = {"method": m, "fwd_ms": fwd, "bwd_ms": bwd, "step_ms": fwd + bwd,
               "kept_bytes": _kept_bytes(fns[m], x, y, loss_fn), "loss": loss,
               "floor_ms": floor_macs / rate * 1e3, "floor_gmacs": floor_macs / 1e9}
        if peak and device.type == "cpu" and metrics.peak_rss_supported():
            row["peak_bytes"], _ = metrics.step_peak_rss(
                "snntorch_sparse.bench_csnn:_peak_setup", name, m, steps, batch, b_th)
        rows.append(row)
    base = rows[0]
    for r in rows:
        r["step_speedup_vs_snntorch"] = base["step_ms"] / r["step_ms"]
        r["bwd_speedup_vs_snntorch"] = base["bwd_ms"] / r["bwd_ms"]
    rows[2]["bwd_speedup_vs_fused_dense"] = rows[1]["bwd_ms"] / rows[2]["bwd_ms"]
    return {"config": name, "T": steps, "batch": batch, "b_th": b_th, "rows": rows,
            "layers": costs, "gemm_gmacs_per_s": rate / 1e9}


def markdown(results):
    """The tables of :func:`bench` results."""
    lines = []
    for res in results:
        rho = ", ".join(f"{c['layer']} in {100 * c['in_density']:.1f} %"
                        + ("" if c["upstream_rho"] is None
                           else f" / band above {100 * c['upstream_rho']:.1f} %")
                        for c in res["layers"])
        lines += [f"**{res['config']}** (T = {res['T']}, B = {res['batch']}, B_th = "
                  f"{res['b_th']}; per layer: input nonzeros / band of the neuron feeding "
                  f"it: {rho}; GEMM rate {res['gemm_gmacs_per_s']:.0f} GMAC/s)", "",
                  "| implementation | fwd ms | bwd ms | step ms | step × vs snnTorch | "
                  "bwd × vs snnTorch | kept MB | peak MB | FLOP floor ms (GMAC) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["rows"]:
            peak = r.get("peak_bytes")
            lines.append(
                f"| {r['method']} | {r['fwd_ms']:.0f} | {r['bwd_ms']:.0f} | {r['step_ms']:.0f} "
                f"| {r['step_speedup_vs_snntorch']:.2f}× | {r['bwd_speedup_vs_snntorch']:.2f}× "
                f"| {r['kept_bytes'] / 2**20:.1f} | "
                + ("—" if peak is None else f"{peak / 2**20:.0f}")
                + f" | {r['floor_ms']:.0f} ({r['floor_gmacs']:.1f}) |")
        sparse = res["rows"][2]
        lines += ["", f"fused sparse backward vs fused dense backward: "
                      f"{sparse['bwd_speedup_vs_fused_dense']:.2f}×", ""]
    return "\n".join(lines)


# ------------------------------------------------------------- one convolutional layer
#: (name, C_in, C_out, H, kernel): the second convolution of tutorials 6 and 7.
CONV_LAYERS = (("tutorial6 conv2", 12, 64, 12, 5), ("tutorial7 conv2", 12, 32, 15, 5))


def conv_layer_bench(device, T=25, B=128, rhos=(0.01, 0.02, 0.05), repeats=5, seed=0):
    """Backward of one ``SpikingConv2d``, ``backward="sparse"`` vs ``"dense"``, on the same
    weights and input: spikes at rate ρ, tagged with an upstream band of the same share
    ρ (as a Leaky layer's output carries it). Times ``autograd.grad(out, [W, x], G)``
    (∂W and ∂X of the layer alone: ``x`` is the tagged input itself, so no other node's
    backward runs; medians of ``repeats``); returns one row per (layer, ρ)."""
    from ._fused import pack_bits, tag_band
    from .spiking_conv import SpikingConv2d

    g = torch.Generator().manual_seed(seed)
    rows = []
    for name, c_in, c_out, h, k in CONV_LAYERS:
        for rho in rhos:
            x0 = (torch.rand(T, B, c_in, h, h, generator=g) < rho).float()
            band = torch.rand(x0.shape, generator=g) < rho
            runs = {}
            for backward in ("dense", "sparse"):
                torch.manual_seed(seed)
                layer = SpikingConv2d(c_in, c_out, k, beta=0.5, b_th=0.2,
                                      backward=backward).to(device)
                with torch.no_grad():
                    layer.weight.mul_(4.0)  # some activity
                # A fresh non-leaf tensor per layer, tagged like a Leaky's output.
                x = x0.to(device).requires_grad_() * 1.0
                tag_band(x, pack_bits(band.to(device)), int(band.sum()))
                out = layer(x)
                grad = torch.randn(out.shape, generator=g).to(device)
                runs[backward] = (layer, x, out, grad)
            times = {"dense": [], "sparse": []}
            for i in range(repeats + 1):  # interleaved: a load burst hits both alike
                for backward, (layer, x, out, grad) in runs.items():
                    t0 = time.perf_counter()
                    torch.autograd.grad(out, (layer.weight, x), grad, retain_graph=True)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    if i:
                        times[backward].append((time.perf_counter() - t0) * 1e3)
            times = {b: statistics.median(v) for b, v in times.items()}
            times["sparse_report"] = dict(runs["sparse"][0]._report)
            rows.append({"layer": name, "T": T, "B": B, "rho": rho,
                         "dense_bwd_ms": times["dense"], "sparse_bwd_ms": times["sparse"],
                         "speedup": times["dense"] / times["sparse"],
                         "sparse_forms": times["sparse_report"]})
    return rows


def conv_layer_markdown(rows):
    lines = ["| layer | T × B | ρ (input spikes = upstream band) | dense bwd ms | sparse bwd ms "
             "| sparse × vs dense | FLOP ratio 1/ρ |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['T']} × {r['B']} | {100 * r['rho']:.0f} % | "
                     f"{r['dense_bwd_ms']:.0f} | {r['sparse_bwd_ms']:.0f} | "
                     f"{r['speedup']:.2f}× | {1 / r['rho']:.0f}× |")
    return "\n".join(lines)
