"""Training on very long sequences in bounded memory: the SHD network at T = 20 000.

    python benchmarks/long_sequence.py [--T 20000] [--batch 8] [--out benchmarks/results]

The paper's SHD network (700-200-200-20, β from its time constants, readout = leaky
integrator, loss on the summed readout membrane; weights from ``python -m snntorch_sparse
bench --config shd``, calibrated at T = 500 to a band activity ρ = 2 %) on a Bernoulli
input ``[T, B, 700]`` at SHD's spike rate. Each implementation runs in a fresh process
(:func:`snntorch_sparse.metrics.step_peak_rss`): it builds the network and the input,
runs one training step (forward + backward) and reports the step's time and the growth of
the peak RSS over it — the memory the step needs beyond the input and the weights, which
every implementation holds alike. Twice: with glibc's default allocator settings, and with
``MALLOC_MMAP_THRESHOLD_=1048576`` — glibc otherwise serves allocations of up to 32 MiB
from its heap and keeps them resident after they are freed, so a chunked layer's
temporaries (each below that size) stay counted in the RSS although they are dead; with
the fixed threshold (or another allocator, e.g. jemalloc) the RSS follows the live bytes.

Implementations: snnTorch's per-step loop (``Linear`` + ``snntorch.Leaky`` per step, dense
BPTT through autograd), our fused sparse layers unchunked (``time_chunk=None``) and
chunked (``time_chunk="auto"``: nothing of size ``T·B·N`` alive besides each layer's input
and output spikes, DESIGN.md §2). Results: ``long_sequence_cpu.{json,md}`` under ``--out``.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time

import torch

METHODS = ("snntorch", "fused_sparse_whole", "fused_sparse_chunked")


def _network(method, T, batch, chunk="auto"):
    """(model, loss function, input, ρ) of one implementation, on the CPU; ``chunk`` is
    the chunked implementation's ``time_chunk``."""
    from snntorch_sparse import SpikingLinear, bench

    cfg = bench.CONFIGS["shd"]
    args = bench.parse_args(["--device", "cpu", "--config", "shd"])
    # Weights calibrated on the short sequence (the input is stationary, so ρ carries over).
    _, labels, weights, biases, info, _ = bench.build_problem(
        dataclasses.replace(cfg, T=min(T, cfg.T)), batch, torch.device("cpu"), args.rho,
        args.b_th, args.seed)
    long_cfg = dataclasses.replace(cfg, T=T)
    model = bench.make_model("snntorch" if method == "snntorch" else "fused_sparse", long_cfg,
                             weights, biases, args.b_th, args.surrogate)
    for layer in model.modules():
        if isinstance(layer, SpikingLinear):
            layer.time_chunk = chunk if method == "fused_sparse_chunked" else None
    gen = torch.Generator().manual_seed(args.seed)
    x = (torch.rand(T, batch, cfg.sizes[0], generator=gen) < cfg.input_rate).float()
    return model, (lambda out: bench.loss_fn(long_cfg, out, labels)), x, info["rho"]


def setup(method, T, batch, chunk):
    """One training step of ``method``, built for :func:`metrics.step_peak_rss` (which
    measures it in a fresh process): returns the step, which returns its costs."""
    model, loss_fn, x, rho = _network(method, T, batch, chunk)

    def step():
        t0 = time.perf_counter()
        loss = loss_fn(model(x))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        chunks = [m._report.get("chunks") for m in model.modules() if hasattr(m, "_report")]
        return {"fwd_s": t1 - t0, "bwd_s": t2 - t1, "step_s": t2 - t0, "loss": loss.item(),
                "input_bytes": x.numel() * x.element_size(), "rho_calibrated": rho,
                "chunks": chunks}
    return step


#: The allocator setting of the second measurement (module docstring).
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": "1048576"}


def run(method, T, batch, chunk="auto"):
    """One implementation's row: its step's costs and peak RSS growth (fresh processes,
    default allocator settings and :data:`FIXED_MMAP`)."""
    from snntorch_sparse import metrics

    row = {"method": method, "T": T, "B": batch}
    here = os.path.dirname(os.path.abspath(__file__))
    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (here, os.environ.get("PYTHONPATH"))))
    try:
        row["peak_growth_bytes"], costs = metrics.step_peak_rss("long_sequence:setup", method,
                                                                T, batch, chunk)
        os.environ.update(FIXED_MMAP)
        row["peak_growth_bytes_fixed_mmap"], _ = metrics.step_peak_rss(
            "long_sequence:setup", method, T, batch, chunk)
    except RuntimeError as err:
        return dict(row, error=str(err).splitlines()[-1])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return dict(row, **costs)


def markdown(rows, meta):
    ref = next((r for r in rows if r["method"] == "snntorch" and "error" not in r), None)
    lines = [f"T = {meta['T']}, B = {meta['B']}, SHD 700-200-200-20, input "
             f"{rows[0].get('input_bytes', 0) / 2**20:.0f} MiB (held by every implementation, "
             f"not counted); {meta['machine']}, {meta['date']}, load {meta['load']}.", "",
             "| implementation | step (s) | fwd (s) | bwd (s) | peak RSS growth of the step (MiB) "
             "| vs snnTorch | same, MALLOC_MMAP_THRESHOLD_=1 MiB | vs snnTorch | loss "
             "| time chunks per layer |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | error: {r['error']} | | | | | | | | |")
            continue
        peaks = []
        for key in ("peak_growth_bytes", "peak_growth_bytes_fixed_mmap"):
            ratio = f"{r[key] / ref[key]:.2f}×" if ref else "—"
            peaks.append(f"{r[key] / 2**20:.0f} | {ratio}")
        lines.append(f"| {r['method']} | {r['step_s']:.2f} | {r['fwd_s']:.2f} | {r['bwd_s']:.2f} "
                     f"| {' | '.join(peaks)} | {r['loss']:.4f} "
                     f"| {', '.join(str(c) for c in r['chunks']) or '—'} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=int, default=20000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--chunk", type=int, default=None,
                   help="time_chunk of fused_sparse_chunked (default: \"auto\")")
    p.add_argument("--out", default=None, help="folder for long_sequence_cpu.{json,md}")
    a = p.parse_args(argv)
    rows = [run(m, a.T, a.batch, a.chunk or "auto") for m in a.methods]
    meta = {"T": a.T, "B": a.batch, "machine": f"{platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs, torch {torch.__version__}",
            "date": datetime.date.today().isoformat(),
            "load": " ".join(open("/proc/loadavg").read().split()[:3]),
            "command": "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:])}
    text = markdown(rows, meta)
    print(text)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "long_sequence_cpu.json"), "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        with open(os.path.join(a.out, "long_sequence_cpu.md"), "w") as f:
            f.write(f"`{meta['command']}`\n\n{text}\n")
    return rows


if __name__ == "__main__":
    main()
