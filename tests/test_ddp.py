"""DistributedDataParallel (gloo, 2 CPU processes): the gradients of sparse models (two
SpikingLinear layers; SpikingLinear + Linear + Leaky.forward_sequence) equal those of one
process on the whole batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import snntorch_sparse as snn

T, B, N_IN, N_HID, N_OUT = 12, 8, 20, 16, 5
KINDS = ("spiking_linear", "leaky")


class _LeakyNet(torch.nn.Module):
    """SpikingLinear → Linear → Leaky.forward_sequence (learnable β, sparse band): the
    membrane is the output."""

    def __init__(self):
        super().__init__()
        self.hidden = snn.SpikingLinear(N_IN, N_HID, beta=0.9, threshold=0.3, b_th=0.3,
                                        dtype=torch.float64)
        self.proj = torch.nn.Linear(N_HID, N_OUT, dtype=torch.float64)
        self.lif = snn.Leaky(beta=0.8, threshold=0.3, b_th=0.3, learn_beta=True)

    def forward(self, x):
        return self.lif.forward_sequence(self.proj(self.hidden(x)))[1]


def _model(kind):
    torch.manual_seed(0)
    if kind == "leaky":
        return _LeakyNet()
    return torch.nn.Sequential(
        snn.SpikingLinear(N_IN, N_HID, beta=0.9, threshold=0.3, b_th=0.3, dtype=torch.float64),
        snn.SpikingLinear(N_HID, N_OUT, beta=0.9, readout=True, dtype=torch.float64))


def _batch():
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(T, B, N_IN, generator=g, dtype=torch.float64) < 0.3).to(torch.float64)
    y = torch.randint(0, N_OUT, (B,), generator=g)
    return x, y


def _loss(model, x, y):
    return torch.nn.functional.cross_entropy(model(x).max(0).values, y)


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        for kind in KINDS:  # one spawn for all models: starting the processes is the cost
            model = torch.nn.parallel.DistributedDataParallel(_model(kind))
            x, y = _batch()
            part = slice(rank * B // world, (rank + 1) * B // world)
            _loss(model, x[:, part], y[part]).backward()  # DDP averages over the ranks
            torch.save([p.grad for p in model.parameters()],
                       os.path.join(out_dir, f"{kind}-{rank}.pt"))
        # Tearing gloo down while the other rank still talks to it aborts that process
        # ("terminate called without an active exception"): meet before leaving.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_ddp_gradients_equal_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for kind in KINDS:
        model = _model(kind)
        _loss(model, *_batch()).backward()
        want = [p.grad for p in model.parameters()]
        for rank in range(2):
            got = torch.load(tmp_path / f"{kind}-{rank}.pt")
            assert len(got) == len(want)
            for g, w in zip(got, want):
                assert w.abs().sum() > 0
                # float64 parameters to rounding; snnTorch's float32 β averages in float32
                tol = dict(rtol=1e-12, atol=1e-14) if w.dtype == torch.float64 else {}
                torch.testing.assert_close(g, w, **tol)
