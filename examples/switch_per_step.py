"""Switch a snnTorch-tutorial network to sparse gradients with one import.

The network below is written exactly as in the snnTorch tutorials: ``nn.Linear`` +
``Leaky`` layers called once per time step in a Python loop. Built from
``import snntorch as snn`` it trains with snnTorch's dense surrogate gradient; built from
``import snntorch_sparse as snn`` (the only change) the surrogate gradient is non-zero only
in the band |U − θ| < B_th. Both start from the same weights and see the same batches
(8×8 digits, latency-coded); the script prints both losses, the fraction of neuron
steps whose surrogate gradient is non-zero, and how close the two weight gradients are on
the first batch.

Expect the sparse loss to trail the dense one here. The two weight gradients are almost
the same vector (cosine > 0.999), but with the dense surrogate *every* hidden neuron gets
a tiny gradient from the surrogate's tail, while with the band only the neurons that came
near threshold get one (about a third on the first batch). Adam rescales each weight's
step by its own gradient history, so those tiny tail gradients become full-size updates
that pull silent neurons into use; without them silent neurons stay silent. The paper's
network (``python -m snntorch_sparse demo``) counters this with wider initial weights and
its lower-activity regulariser, and there dense and sparse reach the same accuracy.

The per-step loop runs the dense ``nn.Linear`` backward at every step whatever the
surrogate does, so this switch changes the *gradient*, not the speed: for speed use the
whole-sequence layers (``examples/sequence_fuse.py``).

    python examples/switch_per_step.py --steps 60
"""

import argparse
import copy

import snntorch
import torch
from torch import nn

import snntorch_sparse
from snntorch_sparse import data


def build(snn, hidden, beta=0.9, slope=100.0):
    """The tutorial network, from whichever module ``snn`` is (snntorch or ours)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            grad = snn.surrogate.fast_sigmoid(slope=slope)
            self.fc1 = nn.Linear(64, hidden)
            self.lif1 = snn.Leaky(beta=beta, spike_grad=grad)
            self.fc2 = nn.Linear(hidden, 10)
            self.lif2 = snn.Leaky(beta=beta, spike_grad=grad)

        def forward(self, x):                        # x: [T, B, 64] spikes
            mem1 = self.lif1.init_leaky()
            mem2 = self.lif2.init_leaky()
            mem1_rec, mem2_rec = [], []
            for step in range(x.shape[0]):
                spk1, mem1 = self.lif1(self.fc1(x[step]), mem1)
                spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
                mem1_rec.append(mem1)
                mem2_rec.append(mem2)
            return torch.stack(mem1_rec), torch.stack(mem2_rec)

    return Net()


def nonzero_surrogate_fraction(lif, mem):
    """Share of (t, b, neuron) where ``lif``'s surrogate gradient dS/dU is non-zero."""
    u = (mem.detach() - lif.threshold).requires_grad_()
    lif.spike_grad(u).sum().backward()
    return (u.grad != 0).float().mean().item()


def first_gradient(net, x, y):
    """The hidden layer's weight gradient on one batch (for the dense/sparse comparison)."""
    net.zero_grad()
    _, mem2 = net(x)
    nn.functional.cross_entropy(mem2.max(0).values, y).backward()
    grad = net.fc1.weight.grad.clone()
    net.zero_grad()
    return grad


def _forever(loader):
    while True:
        yield from loader


def train(net, batches, lr):
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses, fractions = [], []
    for x, y in batches:
        mem1, mem2 = net(x)
        loss = nn.functional.cross_entropy(mem2.max(0).values, y)  # max over time
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        fractions.append(nonzero_surrogate_fraction(net.lif1, mem1))
    return losses, fractions


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60, help="training batches")
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    train_set, _ = data.load("digits")
    loader = data.loader(train_set, args.batch_size, shuffle=True, seed=args.seed)
    batches = [b for _, b in zip(range(args.steps), _forever(loader))]

    torch.manual_seed(args.seed)
    dense = build(snntorch, args.hidden)                 # import snntorch as snn
    sparse = build(snntorch_sparse, args.hidden)         # import snntorch_sparse as snn
    sparse.load_state_dict(copy.deepcopy(dense.state_dict()))   # same starting weights

    g_dense, g_sparse = (first_gradient(net, *batches[0]) for net in (dense, sparse))
    cosine = nn.functional.cosine_similarity(g_dense.flatten(), g_sparse.flatten(), dim=0)
    results = {name: train(net, batches, args.lr)
               for name, net in (("snntorch", dense), ("snntorch_sparse", sparse))}
    print(f"{'batch':>5} | {'loss snntorch':>13} | {'loss sparse':>11}")
    for i in range(0, args.steps, max(1, args.steps // 10)):
        print(f"{i:5d} | {results['snntorch'][0][i]:13.4f} | "
              f"{results['snntorch_sparse'][0][i]:11.4f}")
    for name, (losses, fractions) in results.items():
        print(f"{name:>16}: final loss {losses[-1]:.4f}, non-zero surrogate gradients in "
              f"hidden layer {100 * sum(fractions) / len(fractions):.2f} % of neuron steps")
    print(f"same weights, first batch: cosine(hidden weight gradient sparse, dense) = "
          f"{cosine.item():.5f}, norm ratio {(g_sparse.norm() / g_dense.norm()).item():.4f}")
    reached = [100 * (g.abs().sum(1) > 0).float().mean().item() for g in (g_dense, g_sparse)]
    print(f"hidden neurons whose weights get any gradient on that batch: snntorch "
          f"{reached[0]:.0f} %, snntorch_sparse {reached[1]:.0f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
