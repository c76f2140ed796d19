"""DistributedDataParallel (gloo, 2 CPU processes): the gradients of a sparse model equal
those of one process on the whole batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import snntorch_sparse as snn

T, B, N_IN, N_HID, N_OUT = 12, 8, 20, 16, 5


def _model():
    torch.manual_seed(0)
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
        model = torch.nn.parallel.DistributedDataParallel(_model())
        x, y = _batch()
        part = slice(rank * B // world, (rank + 1) * B // world)
        _loss(model, x[:, part], y[part]).backward()  # DDP averages over the ranks
        torch.save([p.grad for p in model.parameters()], os.path.join(out_dir, f"{rank}.pt"))
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
    model = _model()
    _loss(model, *_batch()).backward()
    want = [p.grad for p in model.parameters()]
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt")
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert w.abs().sum() > 0
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)
