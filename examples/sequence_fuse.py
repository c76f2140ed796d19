"""The tutorial network in sequence mode: ``snn.fuse`` turns it into whole-sequence layers.

A snnTorch ``nn.Sequential`` of ``nn.Linear`` + ``Leaky(init_hidden=True)`` runs one time
step per call. ``snn.fuse(net)`` builds ``SpikingLinear`` layers that share the Linear
weights and take the whole ``[T, B, N]`` input at once: the same outputs, but one GEMM for
all steps and a backward that only works where neurons are in the band |U − θ| < B_th.
The script checks that both give the same output, times forward + backward of the
per-step loop, the fused dense and the fused sparse backward, then trains the fused
sparse network on the 8×8 digits and evaluates the *per-step* network (same weights).

    python examples/sequence_fuse.py --epochs 3
"""

import argparse
import time

import torch
from torch import nn

import snntorch_sparse as snn
from snntorch_sparse import data


def build(hidden, beta=0.9, slope=100.0, b_th=0.2):
    grad = snn.surrogate.fast_sigmoid(slope=slope, b_th=b_th)
    net = nn.Sequential(
        nn.Linear(64, hidden), snn.Leaky(beta=beta, spike_grad=grad, init_hidden=True),
        nn.Linear(hidden, hidden), snn.Leaky(beta=beta, spike_grad=grad, init_hidden=True),
        nn.Linear(hidden, 10),
        snn.Leaky(beta=beta, spike_grad=grad, init_hidden=True, output=True),
    )
    with torch.no_grad():  # 8×8 digits give few input spikes: start with wider weights
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(4.0)
    return net


def per_step(net, x):
    """The snnTorch way: one call per step, stacked by hand."""
    snn.utils.reset(net)
    spk, mem = zip(*(net(x[t]) for t in range(x.shape[0])))
    return torch.stack(spk), torch.stack(mem)


def time_step(fn, x, y, repeats=5):
    """Median ms of forward + backward of ``fn`` on one batch."""
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        _, mem = fn(x)
        nn.functional.cross_entropy(mem.max(0).values, y).backward()
        if i:  # the first call warms up
            times.append(1e3 * (time.perf_counter() - t0))
    return sorted(times)[len(times) // 2]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--hidden", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    train_set, test_set = data.load("digits")
    net = build(args.hidden)
    fused_sparse = snn.fuse(net)                     # shares net's Linear weights
    fused_dense = snn.fuse(net, backward="dense")
    x, y = next(iter(data.loader(train_set, args.batch_size, shuffle=True, seed=args.seed)))

    with torch.no_grad():
        spk_a, mem_a = per_step(net, x)
        spk_b, mem_b = fused_sparse(x)
    print(f"fused == per-step: spikes {torch.equal(spk_a, spk_b)}, membrane max |diff| "
          f"{(mem_a - mem_b).abs().max().item():.2e}")

    for name, fn in (("per-step loop", lambda v: per_step(net, v)),
                     ("fused, dense backward", fused_dense),
                     ("fused, sparse backward", fused_sparse)):
        print(f"{name:>24}: forward+backward {time_step(fn, x, y):8.1f} ms / batch")
    net.zero_grad()

    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    train_loader = data.loader(train_set, args.batch_size, shuffle=True, seed=args.seed)
    for epoch in range(args.epochs):
        total = 0.0
        for x, y in train_loader:
            _, mem = fused_sparse(x)
            loss = nn.functional.cross_entropy(mem.max(0).values, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        correct = n = 0
        with torch.no_grad():
            for x, y in data.loader(test_set, 256):
                correct += (per_step(net, x)[1].max(0).values.argmax(1) == y).sum().item()
                n += y.numel()
        print(f"epoch {epoch + 1}: loss {total / len(train_loader):.4f}, test accuracy of the "
              f"per-step network {100 * correct / n:.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
