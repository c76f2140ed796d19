"""Test accuracy of dense BPTT, sparse and rate-based backpropagation on digits, with a
direct (constant-current) encoding and with the latency encoding, and on a synthetic pure
timing code, over several seeds.

Network: 64 → 128 ``SpikingLinear`` (β = 0.9, θ = 1, fast-sigmoid surrogate, slope 25)
→ 10 readout (β = 0.9); logits = the readout membrane averaged over t; cross-entropy;
Adam (lr 2e-3), batch 64. Backwards: "dense" (full surrogate), "sparse" (band
B_th = 0.2), "rate" (full surrogate, no band: the authors' setting). Encodings:

* direct: ``X[t] = image`` (pixel intensities in [0, 1]) for every t, T = 20 — a rate code;
* latency: ``data.digits`` (one spike per pixel, brighter earlier), T = 30 — a timing code
  that still carries rate information (which pixels fire at all); hidden weights start 4×
  wider (as ``paper.PARAMS["digits"]``), since the input is sparse;
* timing: a synthetic pure timing code (:func:`timing_task`, 2 classes, T = 30): which
  inputs fire is independent of the class; only the order of two input groups tells it.

Writes ``<out>.json`` and ``<out>.md``. Example::

    PYTHONPATH=. python benchmarks/rate_accuracy.py --epochs 10 --seeds 0 1 2
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import snntorch_sparse as snn
from snntorch_sparse import data, surrogate

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = {"dense": dict(backward="dense", b_th=None), "sparse": dict(backward="sparse", b_th=0.2),
         "rate": dict(backward="rate", b_th=None)}
ENCODINGS = {"direct": dict(T=20, gain=1.0), "latency": dict(T=30, gain=4.0),
             "timing": dict(T=30, gain=4.0)}


def timing_task(T, n_train=1000, n_test=400, seed=0):
    """A pure timing code, 2 classes: inputs 0–31 (group A) and 32–63 (group B) each fire
    once with probability 1/2, at a random step of their group's window; class 0 puts A
    in the first third of T and B in the last, class 1 the reverse. Which inputs fire is
    independent of the class, so the input rate x̄ carries no class information: only the
    order of the two groups does."""
    gen = torch.Generator().manual_seed(seed)
    w = T // 3
    out = []
    for n in (n_train, n_test):
        y = torch.randint(0, 2, (n,), generator=gen)
        first = torch.randint(0, w, (n, 64), generator=gen)          # early window
        late = torch.randint(T - w, T, (n, 64), generator=gen)       # late window
        group_a = torch.arange(64) < 32
        a_early = (y == 0).unsqueeze(1)
        t = torch.where(group_a == a_early, first, late)
        fires = torch.rand(n, 64, generator=gen) < 0.5
        x = torch.zeros(T, n, 64)
        x.scatter_(0, t.unsqueeze(0), fires.unsqueeze(0).float())
        out += [x, y]
    return out


def dataset(encoding):
    """``(x_train [T, S, 64], y_train, x_test, y_test)`` as whole tensors."""
    T = ENCODINGS[encoding]["T"]
    if encoding == "timing":
        return timing_task(T)
    train, test = data.digits(num_steps=T)
    out = []
    for ds in (train, test):
        if encoding == "direct":
            x = ds.images.float().unsqueeze(0).expand(T, -1, -1)
        else:
            x = torch.stack([ds[i][0] for i in range(len(ds))], dim=1)
        out += [x, ds.labels.long()]
    return out


def model(mode, gain, seed):
    torch.manual_seed(seed)
    opts = MODES[mode]
    sg = surrogate.fast_sigmoid(slope=25.0, b_th=opts["b_th"])
    hidden = snn.SpikingLinear(64, 128, beta=0.9, spike_grad=sg, **opts)
    readout = snn.SpikingLinear(128, 10, beta=0.9, spike_grad=sg, readout=True, **opts)
    with torch.no_grad():
        hidden.weight.mul_(gain)
    return torch.nn.Sequential(hidden, readout)


def train(mode, encoding, seed, epochs, sets, batch=64, lr=2e-3):
    x_tr, y_tr, x_te, y_te = sets
    net = model(mode, ENCODINGS[encoding]["gain"], seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(y_tr.numel(), generator=gen)
        for i in range(0, perm.numel(), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(net(x_tr[:, idx]).mean(0), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = (net(x_te).mean(0).argmax(1) == y_te).float().mean().item()
    return acc, time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(HERE, "results", "rate_accuracy_cpu"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    t0 = time.time()
    for encoding in ENCODINGS:
        sets = dataset(encoding)
        for mode in MODES:
            accs, secs = [], []
            for seed in args.seeds:
                acc, sec = train(mode, encoding, seed, args.epochs, sets)
                accs.append(acc)
                secs.append(sec)
            rows.append({"encoding": encoding, "mode": mode, "accuracy": accs,
                         "mean": statistics.mean(accs),
                         "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                         "train_seconds": statistics.mean(secs)})
            r = rows[-1]
            print(f"{encoding:8s} {mode:7s} {100 * r['mean']:.1f} ± {100 * r['std']:.1f} %",
                  flush=True)
    meta = {"command": " ".join(["PYTHONPATH=. python benchmarks/rate_accuracy.py",
                                 *(argv if argv is not None else sys.argv[1:])]),
            "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "machine": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
            "torch": torch.__version__, "load_average_1min_end": os.getloadavg()[0],
            "seconds": time.time() - t0, "epochs": args.epochs, "seeds": args.seeds}
    lines = [f"digits (direct, latency) and the synthetic timing task, 64-128-10, {args.epochs} epochs, seeds {args.seeds}; "
             f"{meta['date_utc']} UTC; load {meta['load_average_1min_end']:.1f} on "
             f"{meta['cpus']} cores\n", f"`{meta['command']}`\n",
             "| encoding | backward | test accuracy % (mean ± std) | per seed | train s / run |",
             "|---|---|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['encoding']} (T={ENCODINGS[r['encoding']]['T']}) | {r['mode']} | "
                     f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f} | "
                     f"{', '.join(f'{100 * a:.1f}' for a in r['accuracy'])} | "
                     f"{r['train_seconds']:.1f} |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}.json/.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
