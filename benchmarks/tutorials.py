"""snnTorch's tutorial models, stock against the one-import switch, on synthetic data.

Each model and training loop follows the snnTorch tutorial it is named after
(jeshraghian/snntorch docs/tutorials, copies in the project's shared reference):

* ``tutorial5`` — 784-1000-10 fully connected net as a class with its own per-step loop,
  β = 0.95, 25 steps, cross-entropy on the membrane summed over steps, Adam 5e-4;
* ``tutorial6`` — conv net ``nn.Sequential`` (Conv 1→12, 5; pool; Leaky; Conv 12→64, 5;
  pool; Leaky; Linear 1024→10; Leaky), ``init_hidden=True``, fast sigmoid (slope 25),
  β = 0.5, 50 steps, ``SF.ce_rate_loss``, Adam 1e-2;
* ``tutorial7`` — the N-MNIST conv net (Conv 2→12, 5; pool; Leaky; Conv 12→32, 5; pool;
  Leaky; Linear 800→10; Leaky) on event frames ``[T, B, 2, 34, 34]``, atan, β = 0.5,
  ``SF.mse_count_loss(0.8, 0.2)``, Adam 2e-2;
* ``population`` — population coding: 784-128-500, fast sigmoid, β = 0.9, one step,
  ``SF.mse_count_loss(population_code=True)``, trained with ``snntorch.backprop.BPTT``,
  Adam 2e-3.

Only the import differs between variants: ``stock`` builds the model with ``import
snntorch as snn``; ``switched`` with ``import snntorch_sparse as snn`` (the package's
default band); ``b_th=...`` variants build it stock and :func:`snntorch_sparse.sparsify`
it with that band (``0.2`` is the paper's fixed band, the default before adaptive bands);
``fused`` / ``fused-dense`` (the CSNNs) build it stock and replace the per-step loop by one
call of ``snntorch_sparse.fuse(net)`` (``backward="dense"``) on ``[T, B, ...]``.

Data is synthetic, of the tutorials' shapes: each class has a random prototype (MNIST:
a sparse stroke-like pixel mask; N-MNIST: per-pixel event rates) plus noise, so a model
that learns reduces its loss.

Run (full sizes; ``--quick`` for the CI sizes used by tests/test_tutorials.py)::

    PYTHONPATH=. python benchmarks/tutorials.py --iters 30
    PYTHONPATH=. python benchmarks/tutorials.py --models tutorial7 --variants stock switched 0.2
    PYTHONPATH=. python benchmarks/tutorials.py --models tutorial7 --batch 16 --iters 15
"""

import argparse
import json
import time

import snntorch
import torch
from snntorch import backprop, surrogate, utils
from snntorch import functional as SF
from torch import nn

import snntorch_sparse
from snntorch_sparse import bench_csnn, metrics

# Sizes: (batch, steps) full as in the tutorials, quick for CI.
SIZES = {
    "tutorial5": {"full": (128, 25), "quick": (32, 25)},
    "tutorial6": {"full": (128, 50), "quick": (16, 12)},
    "tutorial7": {"full": (128, 311), "quick": (8, 60)},
    "population": {"full": (128, 1), "quick": (64, 1)},
}


def parse_band(variant):
    """A variant's band: a number (fixed), ``auto[:target]`` (adaptive) or
    ``widen[:target]`` (adaptive, never narrower than its initial 0.2)."""
    kind, _, target = variant.partition(":")
    kw = {"target": float(target)} if target else {}
    if kind == "auto":
        return snntorch_sparse.AdaptiveBand(**kw)
    if kind == "dense":
        return None
    if kind == "widen":
        return snntorch_sparse.AdaptiveBand(min=0.2, **kw)
    return float(variant)

LR = {"tutorial5": 5e-4, "tutorial6": 1e-2, "tutorial7": 2e-2, "population": 2e-3}


# ----------------------------------------------------------------------------- data
# MNIST-like images and N-MNIST-like event frames: the package's CSNN benchmark data.
mnist_like, nmnist_like = bench_csnn.mnist_like, bench_csnn.nmnist_like


# ----------------------------------------------------------------------------- models
def tutorial5(snn, steps):
    beta = 0.95

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(28 * 28, 1000)
            self.lif1 = snn.Leaky(beta=beta)
            self.fc2 = nn.Linear(1000, 10)
            self.lif2 = snn.Leaky(beta=beta)

        def forward(self, x):
            mem1 = self.lif1.init_leaky()
            mem2 = self.lif2.init_leaky()
            spk2_rec, mem2_rec = [], []
            for _ in range(steps):
                cur1 = self.fc1(x)
                spk1, mem1 = self.lif1(cur1, mem1)
                cur2 = self.fc2(spk1)
                spk2, mem2 = self.lif2(cur2, mem2)
                spk2_rec.append(spk2)
                mem2_rec.append(mem2)
            return torch.stack(spk2_rec, dim=0), torch.stack(mem2_rec, dim=0)

    return Net()


def tutorial6(snn, steps):
    return bench_csnn.tutorial6(snn)


def tutorial7(snn, steps):
    return bench_csnn.tutorial7(snn)


def population(snn, steps):
    grad = surrogate.fast_sigmoid()
    beta = 0.9
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 128),
                         snn.Leaky(beta=beta, spike_grad=grad, init_hidden=True),
                         nn.Linear(128, 500),
                         snn.Leaky(beta=beta, spike_grad=grad, init_hidden=True, output=True))


MODELS = {"tutorial5": tutorial5, "tutorial6": tutorial6, "tutorial7": tutorial7,
          "population": population}


# ----------------------------------------------------------------------------- loops
def forward_pass(net, steps, data):
    """Tutorials 6 and 7: reset the hidden states, one ``net(data)`` call per step (a
    static image every step, or frame ``data[t]`` for event data)."""
    spk_rec = []
    utils.reset(net)
    for step in range(steps):
        spk_out, _ = net(data if data.dim() == 4 and data.shape[1] == 1 else data[step])
        spk_rec.append(spk_out)
    return torch.stack(spk_rec)


def train(name, variant, iters, size="quick", seed=0, batch=None):
    """Train one model for ``iters`` iterations; returns losses, time and band report.
    ``batch`` overrides the size's batch (the steps stay the tutorial's)."""
    batch, steps = batch or SIZES[name][size][0], SIZES[name][size][1]
    torch.manual_seed(seed)
    fused = None
    if variant in ("fused", "fused-dense"):
        if name not in ("tutorial6", "tutorial7"):
            raise ValueError(f"variant {variant!r} is for the nn.Sequential CSNNs "
                             "(tutorial6, tutorial7)")
        net = MODELS[name](snntorch, steps)  # stock, then one call: fuse(net)
        fused = snntorch_sparse.fuse(net, backward="dense" if variant == "fused-dense"
                                     else "sparse")
    elif variant == "stock":
        net = MODELS[name](snntorch, steps)
    elif variant == "switched":
        net = MODELS[name](snntorch_sparse, steps)
    else:
        band = parse_band(variant)
        net = snntorch_sparse.sparsify(MODELS[name](snntorch, steps), b_th=band)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR[name], betas=(0.9, 0.999))
    if name == "tutorial7":
        batches = nmnist_like(batch, steps, seed, iters)
    else:
        batches = mnist_like(batch, seed, iters)
    losses = []
    start = time.perf_counter()
    if name == "population":
        loss_fn = SF.mse_count_loss(correct_rate=1.0, incorrect_rate=0.0,
                                    population_code=True, num_classes=10)
        for data, targets in batches:  # BPTT over one "loader" batch per iteration
            losses.append(backprop.BPTT(net, [(data, targets)], num_steps=steps,
                                        optimizer=optimizer, criterion=loss_fn,
                                        time_var=False).item())
    else:
        if name == "tutorial5":
            loss = nn.CrossEntropyLoss()
        elif name == "tutorial6":
            loss_fn = SF.ce_rate_loss()
        else:
            loss_fn = SF.mse_count_loss(correct_rate=0.8, incorrect_rate=0.2)
        for data, targets in batches:
            net.train()
            if name == "tutorial5":
                _, mem_rec = net(data.view(batch, -1))
                loss_val = torch.zeros((1,))
                for step in range(steps):
                    loss_val += loss(mem_rec[step], targets)
            else:
                if fused is None:
                    spk_rec = forward_pass(net, steps, data)
                else:  # the per-step loop replaced by one call on [T, B, ...]
                    seq = data.unsqueeze(0).expand(steps, *data.shape) if data.dim() == 4 else data
                    spk_rec = fused(seq)[0]
                loss_val = loss_fn(spk_rec, targets)
            optimizer.zero_grad()
            loss_val.backward()
            optimizer.step()
            losses.append(loss_val.item())
    seconds = time.perf_counter() - start
    bands = [] if variant == "stock" else metrics.band_report(fused or net)
    return {"model": name, "variant": variant, "size": size, "iters": iters,
            "loss_start": losses[0], "loss_end": sum(losses[-3:]) / len(losses[-3:]),
            "losses": losses, "seconds": seconds, "bands": bands}


def _band_text(bands):
    return metrics.format_band_report(bands) if bands else "—"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--variants", nargs="+", default=["stock", "switched", "0.2", "auto"])
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="the CI sizes")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size instead of the tutorial's (steps unchanged)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write all rows here")
    args = p.parse_args(argv)
    rows = []
    print("| model | variant | loss start → end (mean of last 3) | decrease vs stock | "
          "time (s) | per-layer B_th and ρ |")
    print("|---|---|---|---:|---:|---|")
    for name in args.models:
        stock_drop = None
        for variant in args.variants:
            r = train(name, variant, args.iters, "quick" if args.quick else "full", args.seed,
                      args.batch)
            drop = r["loss_start"] - r["loss_end"]
            if variant == "stock":
                stock_drop = drop
            rel = f"{drop / stock_drop:.2f}" if stock_drop else "—"
            print(f"| {name} | {variant} | {r['loss_start']:.3f} → {r['loss_end']:.3f} | "
                  f"{rel} | {r['seconds']:.1f} | {_band_text(r['bands'])} |", flush=True)
            for b in r["bands"]:
                b["band"] = repr(b["band"])
            rows.append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
