"""Memory and time of the three backwards (dense BPTT, sparse, rate) against T.

Network: the SHD shape cut to one hidden layer, 700 → 200 (``SpikingLinear``) → 20
(readout, loss = cross-entropy of the membrane summed over t, as for SHD). Input: Bernoulli
spikes, p = 2 % per input and step; hidden weights scaled so the band activity ρ (eq. 13)
is ≈ 2 % (measured and reported per row).

Per (backward, T), in a fresh process (so that its peak memory is its own):

* kept: bytes of the distinct storages autograd keeps for backward (parameters and the
  network input excluded: they exist anyway);
* peak: on CUDA, peak allocated bytes of forward + backward above the start; on CPU, the
  growth of the process's peak resident set (``ru_maxrss``) over forward + backward — an
  approximation (the C allocator's caching), but a measured one;
* forward and backward times: medians of ``--repeat`` runs after one warm-up.

Writes ``<out>.json`` and ``<out>.md`` and the figure ``--figure``. Example::

    PYTHONPATH=. python benchmarks/backward_vs_T.py --T 50 100 200 500 1000 2000 --batch 4
"""

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODES = ("dense", "sparse", "rate")
N_IN, N_HID, N_OUT = 700, 200, 20
P_IN, RHO, B_TH, BETA_H, BETA_O = 0.02, 0.02, 0.2, math.exp(-1 / 10), math.exp(-1 / 20)


def _net(mode, scale, device, seed=0):
    import snntorch_sparse as snn
    from snntorch_sparse import surrogate

    torch.manual_seed(seed)
    sg = surrogate.fast_sigmoid(slope=100.0, b_th=B_TH)
    hidden = snn.SpikingLinear(N_IN, N_HID, beta=BETA_H, spike_grad=sg, b_th=B_TH,
                               backward=mode, device=device)
    readout = snn.SpikingLinear(N_HID, N_OUT, beta=BETA_O, spike_grad=sg, b_th=B_TH,
                                readout=True, backward=mode, device=device)
    with torch.no_grad():
        hidden.weight.mul_(scale)
    return hidden, readout


def _inputs(T, batch, device, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(T, batch, N_IN, generator=gen) < P_IN).float().to(device)
    y = torch.randint(0, N_OUT, (batch,), generator=gen).to(device)
    return x, y


def calibrate(batch, device):
    """Hidden weight scale giving ρ ≈ RHO (on T = 200; ρ hardly depends on T)."""
    from snntorch_sparse.bench import calibrate_scale

    hidden, _ = _net("dense", 1.0, device)
    x, _ = _inputs(200, batch, device)
    cur0 = (x @ hidden.weight.detach().t())
    return calibrate_scale(cur0, BETA_H, RHO, B_TH)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def child(mode, T, batch, scale, device, repeat):
    """One (mode, T) measurement in this process; returns a dict."""
    import torch.nn.functional as F

    from snntorch_sparse import metrics

    device = torch.device(device)
    hidden, readout = _net(mode, scale, device)
    params = {p.untyped_storage().data_ptr() for m in (hidden, readout) for p in m.parameters()}

    def step(x, y, kept=None):
        seen = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params and ptr != x.untyped_storage().data_ptr():
                seen[ptr] = t.untyped_storage().nbytes()
            return t

        _sync(device)
        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            spk, mem_h = hidden._run(x, None)
            out = readout(spk)
        loss = F.cross_entropy(out.sum(0), y)
        _sync(device)
        t1 = time.perf_counter()
        loss.backward()
        _sync(device)
        t2 = time.perf_counter()
        rho = metrics.activity(mem_h.detach(), hidden.threshold, B_TH)
        for m in (hidden, readout):
            m.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1, sum(seen.values()), rho

    step(*_inputs(5, batch, device))  # lazy initialisation outside the peak
    x, y = _inputs(T, batch, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    fwd, bwd, kept, rho = step(x, y)
    peak = (torch.cuda.max_memory_allocated(device) - start if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0)
    times = [step(x, y)[:2] for _ in range(repeat)]
    return {"mode": mode, "T": T, "batch": batch, "kept_bytes": kept, "peak_bytes": peak,
            "peak_kind": "cuda_allocated" if device.type == "cuda" else "cpu_maxrss_growth",
            "forward_ms": 1e3 * statistics.median(t[0] for t in times),
            "backward_ms": 1e3 * statistics.median(t[1] for t in times), "rho": rho}


def table(rows):
    lines = ["| T | backward | ρ % | kept MB | peak MB | forward ms | backward ms |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['T']} | {r['mode']} | {100 * r['rho']:.2f} | "
                     f"{r['kept_bytes'] / 1e6:.3f} | {r['peak_bytes'] / 1e6:.1f} | "
                     f"{r['forward_ms']:.1f} | {r['backward_ms']:.1f} |")
    return "\n".join(lines)


def figure(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for mode, c in zip(MODES, ("tab:blue", "tab:orange", "tab:green")):
        rs = [r for r in rows if r["mode"] == mode]
        Ts = [r["T"] for r in rs]
        axes[0].plot(Ts, [r["kept_bytes"] / 1e6 for r in rs], "o-", color=c, label=mode)
        pk = [r for r in rs if r["peak_bytes"] > 0]  # CPU RSS growth may read 0 at small T
        axes[1].plot([r["T"] for r in pk], [r["peak_bytes"] / 1e6 for r in pk], "o-", color=c,
                     label=mode)
        axes[2].plot(Ts, [r["backward_ms"] for r in rs], "o-", color=c, label=f"{mode} backward")
        axes[2].plot(Ts, [r["forward_ms"] for r in rs], ":", color=c, label=f"{mode} forward")
    axes[0].set(title="kept for backward", ylabel="MB")
    axes[1].set(title="peak memory (fwd + bwd)", ylabel="MB")
    axes[2].set(title="time per batch", ylabel="ms")
    for ax in axes:
        ax.set(xscale="log", yscale="log", xlabel="T (time steps)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--T", type=int, nargs="+", default=[50, 100, 200, 500, 1000, 2000])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=os.path.join(HERE, "results", "backward_vs_T_cpu"))
    p.add_argument("--figure", default=os.path.join(ROOT, "docs", "img", "backward_vs_T.png"))
    p.add_argument("--child", nargs=3, metavar=("MODE", "T", "SCALE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        mode, T, scale = args.child
        print(json.dumps(child(mode, int(T), args.batch, float(scale), args.device,
                               args.repeat)))
        return 0
    scale = calibrate(args.batch, torch.device(args.device))
    rows = []
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.time()
    for T in args.T:
        for mode in MODES:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, str(T),
                   repr(scale), "--batch", str(args.batch), "--device", args.device,
                   "--threads", str(args.threads), "--repeat", str(args.repeat)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None
    meta = {
        "command": " ".join(["PYTHONPATH=. python benchmarks/backward_vs_T.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": platform.platform(), "processor": platform.processor(), "gpu": gpu,
        "cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
        "load_average_1min_end": os.getloadavg()[0], "seconds": time.time() - t0,
        "network": f"{N_IN}-{N_HID} hidden + {N_OUT} readout, input p={P_IN}, "
                   f"b_th={B_TH}, hidden weight scale {scale:.3g} (target ρ {RHO})",
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    md = (f"{meta['network']}; batch {args.batch}; {args.device}"
          f"{' (' + gpu + ')' if gpu else ''}; {meta['date_utc']} UTC; load "
          f"{meta['load_average_1min_end']:.1f} on {meta['cpus']} cores; "
          f"{args.threads} thread(s)\n\n`{meta['command']}`\n\n" + table(rows) + "\n")
    with open(args.out + ".md", "w") as f:
        f.write(md)
    if args.figure:
        figure(rows, args.figure, f"{meta['network']}, batch {args.batch}, {args.device}")
    print(f"wrote {args.out}.json/.md and {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
