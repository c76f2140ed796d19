"""Where a fused step spends its GPU time: launches, host synchronisations and the costliest
kernels of the forward and the backward, dense next to sparse, on the benchmark networks.

    python benchmarks/gpu_probe.py [--config shd --batch 256 ...]

Prints, per configuration and method: median forward/backward ms (CUDA events, the methods
interleaved), kernel launches and host syncs per pass (torch.profiler), the Python lines that
synchronised (``torch.cuda.set_sync_debug_mode``), and the ten costliest kernels.
"""

import argparse
import collections
import statistics
import traceback
import warnings

import torch

from snntorch_sparse import bench

SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def step_parts(model, cfg, x, labels):
    def fwd():
        return bench.loss_fn(cfg, model(x), labels)

    def bwd(loss):
        loss.backward()

    return fwd, bwd


def timed(models, cfg, x, labels, repeats):
    times = {m: collections.defaultdict(list) for m in models}
    for _ in range(repeats):
        for name, model in models.items():
            bench._zero_grad(model)
            fwd, bwd = step_parts(model, cfg, x, labels)
            e = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            e[0].record()
            loss = fwd()
            e[1].record()
            bwd(loss)
            e[2].record()
            torch.cuda.synchronize()
            times[name]["fwd"].append(e[0].elapsed_time(e[1]))
            times[name]["bwd"].append(e[1].elapsed_time(e[2]))
    return {m: {k: statistics.median(v) for k, v in t.items()} for m, t in times.items()}


def profile(model, cfg, x, labels):
    from torch.profiler import ProfilerActivity, profile as prof, record_function

    bench._zero_grad(model)
    fwd, bwd = step_parts(model, cfg, x, labels)
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        with record_function("FWD"):
            loss = fwd()
        with record_function("BWD"):
            bwd(loss)
        torch.cuda.synchronize()
    return p


def counts(p):
    """Launches and syncs by pass, from the profiler's CPU events (each runtime call is a
    child of the FWD or BWD range on the calling thread; autograd's own thread is BWD)."""
    ev = p.events()
    fwd = [e for e in ev if e.name == "FWD"]
    lo, hi = (fwd[0].time_range.start, fwd[0].time_range.end) if fwd else (0, 0)
    out = collections.Counter()
    for e in ev:
        if e.device_type.name != "CPU":
            continue
        where = "fwd" if lo <= e.time_range.start <= hi else "bwd"
        if e.name in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel",
                      "cuLaunchKernelEx"):
            out[where, "launches"] += 1
        elif e.name in SYNC_EVENTS:
            out[where, "syncs"] += 1
        elif e.name == "cudaMemcpyAsync":
            out[where, "memcpy"] += 1
    return out


def sync_lines(model, cfg, x, labels):
    """The distinct call sites that synchronised with the host (innermost frame of this
    package; the backward's are reported by autograd at the end of ``backward()``)."""
    fwd, bwd = step_parts(model, cfg, x, labels)
    bench._zero_grad(model)
    seen = collections.Counter()

    def hook(message, *args, **kwargs):
        frames = [f for f in traceback.extract_stack()
                  if "snntorch_sparse" in f.filename and "gpu_probe" not in f.filename]
        f = frames[-1] if frames else None
        seen[f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.line}" if f else "?"] += 1

    shown = warnings.showwarning
    warnings.showwarning = hook
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = hook
            loss = fwd()
            bwd(loss)
        torch.cuda.synchronize()
    finally:
        torch.cuda.set_sync_debug_mode(0)
        warnings.showwarning = shown
    return seen


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", action="append")
    ap.add_argument("--batch", type=int, action="append")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    names = args.config or ["shd"]
    torch.backends.cuda.matmul.allow_tf32 = False
    for cfg in bench.resolve_configs(names, "cuda", False):
        for B in ([cfg.batch] if cfg.batch else args.batch or [256]):
            x, labels, weights, biases, info, _ = bench.build_problem(cfg, B, "cuda", 0.02, 0.2, 0)
            models = {m: bench.make_model(m, cfg, weights, biases, 0.2, "atan")
                      for m in ("fused_dense", "fused_sparse")}
            timed(models, cfg, x, labels, 3)  # warm-up
            t = timed(models, cfg, x, labels, args.repeats)
            print(f"\n=== {cfg.name} B={B} rho={[round(r, 4) for r in info['rho']]}")
            for name, model in models.items():
                p = profile(model, cfg, x, labels)
                c = counts(p)
                print(f"{name:13s} fwd {t[name]['fwd']:.3f} ms  bwd {t[name]['bwd']:.3f} ms  "
                      f"launches fwd/bwd {c['fwd', 'launches']}/{c['bwd', 'launches']}  "
                      f"syncs {c['fwd', 'syncs']}/{c['bwd', 'syncs']}  "
                      f"memcpy {c['fwd', 'memcpy']}/{c['bwd', 'memcpy']}")
                try:
                    for line, n in sync_lines(model, cfg, x, labels).items():
                        print(f"    sync x{n}: {line}")
                except Exception:  # noqa: BLE001 - a probe: show and go on
                    traceback.print_exc()
                print(p.key_averages().table(sort_by="cuda_time_total", row_limit=12,
                                             max_name_column_width=60))


if __name__ == "__main__":
    main()
