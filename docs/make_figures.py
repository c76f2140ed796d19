"""Generate the figures of docs/how-it-works.md and docs/choosing-bth.md into docs/img/.

    python docs/make_figures.py        # a few seconds on CPU, deterministic
"""

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from snntorch_sparse import data, paper, reference  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "img")
B_TH = 0.2


def surrogates():
    """g(u) of the common surrogates with the band shaded, and the share of each
    surrogate's integral that lies inside the band (analytic)."""
    u = torch.linspace(-1.5, 1.5, 1201, dtype=torch.float64)
    one = torch.ones_like(u)
    shapes = [("fast sigmoid, slope 100 (paper)", reference.FAST_SIGMOID, 100.0,
               lambda k: k * B_TH / (k * B_TH + 1)),
              ("fast sigmoid, slope 25 (snnTorch default)", reference.FAST_SIGMOID, 25.0,
               lambda k: k * B_TH / (k * B_TH + 1)),
              ("atan, alpha 2 (snnTorch Leaky default)", reference.ATAN, 2.0,
               lambda a: 2 / math.pi * math.atan(math.pi / 2 * a * B_TH))]
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.axvspan(-B_TH, B_TH, color="0.85", label=f"band |u| < B_th = {B_TH}")
    for name, shape, p, kept in shapes:
        g = reference.surrogate_grad(one, u, shape, p)
        ax.plot(u, g / g.max(), label=f"{name}: {100 * kept(p):.0f} % of ∫g in band")
    ax.set(xlabel="u = U − θ", ylabel="g(u) / g(0)", yscale="log", ylim=(1e-3, 1.5))
    ax.legend(fontsize=7, loc="lower center")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "surrogate_band.png"), dpi=100)
    plt.close(fig)


def network_activity():
    """Membrane traces of hidden neurons of the paper's network on digits, with the band,
    and the map of active (t, neuron) entries of one sample."""
    torch.manual_seed(0)
    cfg = paper.Config().resolved()
    net = cfg.network(64, 10)
    train, _ = data.load("digits")
    x, _ = next(iter(data.loader(train, 32)))
    with torch.no_grad():
        _, spikes, mems = net.run(x)
    mem = mems[0][:, 0]                                   # [T, N] of sample 0, layer 1
    active = (mem - 1.0).abs() < B_TH
    rho = ((mems[0] - 1.0).abs() < B_TH).float().mean().item()
    order = active.sum(0).argsort(descending=True)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [1.4, 1]})
    a.axhspan(1 - B_TH, 1 + B_TH, color="0.85", label="band |U − θ| < B_th")
    a.axhline(1.0, color="k", lw=0.6, ls="--", label="θ")
    for j in order[:4].tolist():
        line, = a.plot(mem[:, j], lw=1)
        hit = active[:, j].nonzero().flatten()
        a.plot(hit, mem[hit, j], "o", ms=4, color=line.get_color())
    a.set(title="hidden neurons: gradient flows only at the dots", xlabel="time step t",
          ylabel="membrane U")
    a.legend(fontsize=7)
    b.imshow(active.T.float(), aspect="auto", cmap="Greys", interpolation="nearest")
    b.set(title=f"active (t, neuron), one sample (batch ρ = {100 * rho:.1f} %)",
          xlabel="time step t", ylabel="hidden neuron")
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "membrane_band.png"), dpi=100)
    plt.close(fig)


def delta_scan():
    """ε[t] is non-zero only at active steps; Δ[t] = ε[t] + β·Δ[t+1] decays between them
    (Proposition 1), so the scan can jump from one active step to the previous one.
    Fast sigmoid with slope 25 so that every active step's ε is visible."""
    T, beta = 40, 0.9
    t = torch.arange(T, dtype=torch.float64)
    u = 0.8 * torch.sin(t / 4.0) - 0.45 + 0.15 * torch.cos(t * 1.7)
    band = u.abs() < B_TH
    g = torch.Generator().manual_seed(3)
    e = torch.randn(T, generator=g, dtype=torch.float64)
    eps = reference.band_grad(e, reference.pack_bits(band), u[band], reference.FAST_SIGMOID,
                              25.0, 1.0, False)
    delta, _ = reference.lif_bwd(eps.view(T, 1), torch.full((1,), beta, dtype=torch.float64),
                                 torch.empty(0, dtype=torch.int32), reference.SUBTRACT)
    fig, axes = plt.subplots(3, 1, figsize=(7, 4.8), sharex=True)
    axes[0].axhspan(-B_TH, B_TH, color="0.85")
    axes[0].plot(t, u, "k", lw=1)
    axes[0].plot(t[band], u[band], "o", ms=4, color="tab:orange")
    axes[0].set_ylabel("u = U − θ")
    axes[1].axhline(0, color="k", lw=0.6)
    axes[1].stem(t[band], eps[band], basefmt=" ")
    axes[1].set_ylabel("ε[t]")
    axes[2].plot(t, delta[:, 0], "-o", ms=3, color="tab:green")
    axes[2].set(ylabel="Δ[t]", xlabel="time step t")
    axes[0].set_title("only the orange steps contribute; Δ decays by β between them")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "delta_scan.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    surrogates()
    network_activity()
    delta_scan()
    print(f"wrote {OUT}/surrogate_band.png, membrane_band.png, delta_scan.png")
