"""``python -m snntorch_sparse demo``: the paper's experiment, dense and sparse side by side.

Trains the network of :mod:`snntorch_sparse.paper` twice from the same seed (same initial
weights, same batches): once with the dense surrogate-gradient backward, once with the
sparse one. Prints a table (test accuracy, activity per hidden layer, forward/backward
time, backward speedup, bytes kept for backward and memory saved, paper eq. 14) and
writes ``results.json`` and ``demo.png`` to ``--out``.

Example::

    python -m snntorch_sparse demo                         # digits, offline, ~1–2 min
    python -m snntorch_sparse demo --dataset shd --data-dir ~/data --device cuda
    python -m snntorch_sparse demo --backward rate --grad-scale-T   # dense vs rate-based
"""

import json
import os
import platform
import sys
import time

import torch

from . import data, metrics, paper, surrogate
from ._cli import Parser, UsageError, band, positive_int, usage_error, writable_dir

PROG = "python -m snntorch_sparse demo"


def parse_args(argv):
    p = Parser(prog=PROG, description="Train the paper's network (2 hidden SpikingLinear + "
                "readout) dense and sparse from the same seed; report accuracy, activity, "
                "time and memory.")
    p.add_argument("--dataset", default="digits", choices=list(data.DATASETS),
                   help="digits (offline default), fmnist, nmnist or shd (need --data-dir)")
    p.add_argument("--data-dir", default=None,
                   help="folder with the dataset files (docs/datasets.md: what goes where)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="default: digits 12; the paper's for the others (E.6)")
    p.add_argument("--b-th", type=band, default=paper.COMMON["b_th"],
                   help="band half-width B_th of the sparse run (default 0.2, the paper's; "
                        "auto: adaptive band, 2 %% target; default: the drop-in classes' "
                        "default band)")
    p.add_argument("--hidden", type=positive_int, default=None,
                   help="neurons per hidden layer (default 200)")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--max-batches", type=positive_int, default=None,
                   help="training batches per epoch at most (quick runs)")
    p.add_argument("--backward", default="sparse", choices=["sparse", "rate"],
                   help="the backward compared with dense BPTT: sparse (default) or rate "
                        "(rate-based backpropagation)")
    p.add_argument("--grad-scale-T", action="store_true",
                   help="divide the loss (every gradient) by T, as the rate-based "
                        "backpropagation authors train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's; 1 avoids oversubscription "
                        "when other processes share the cores)")
    p.add_argument("--out", default="demo_out", help="output directory (default ./demo_out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def _load():
    """The 1-minute load average, or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def compare(dense, sparse):
    """Side-by-side figures of two :func:`paper.train` results."""
    d, s = dense["summary"], sparse["summary"]
    out = {
        "test_accuracy": [dense["test_accuracy"], sparse["test_accuracy"]],
        "activity": [d["activity"], s["activity"]],
        "forward_ms": [d["forward_ms"], s["forward_ms"]],
        "backward_ms": [d["backward_ms"], s["backward_ms"]],
        "backward_ms_layers": [d["backward_ms_layers"], s["backward_ms_layers"]],
        "saved_bytes": [d["saved_bytes"], s["saved_bytes"]],
        "backward_speedup": d["backward_ms"] / s["backward_ms"],
        "hidden2_backward_speedup": d["backward_ms_layers"][1] / s["backward_ms_layers"][1],
        "overall_speedup": ((d["forward_ms"] + d["backward_ms"])
                            / (s["forward_ms"] + s["backward_ms"])),
        "memory_saved_percent": metrics.memory_saved(d["saved_bytes"], s["saved_bytes"]),
        # the sparse run's band per hidden layer at the end (B_th; rho of the last epoch)
        "bands": sparse["epochs"][-1]["bands"],
    }
    if d["peak_bytes"] and s["peak_bytes"] is not None:
        out["peak_bytes"] = [d["peak_bytes"], s["peak_bytes"]]
        out["peak_memory_saved_percent"] = metrics.memory_saved(d["peak_bytes"], s["peak_bytes"])
    return out


def format_table(cfg, cmp, name="sparse"):
    """The report as a Markdown table (plain text friendly)."""
    acc, act = cmp["test_accuracy"], cmp["activity"]
    rows = [("test accuracy (%)", f"{100 * acc[0]:.1f}", f"{100 * acc[1]:.1f}")]
    for i in range(len(act[0])):
        rows.append((f"activity hidden{i + 1} (%, eq. 13)", f"{100 * act[0][i]:.2f}",
                     f"{100 * act[1][i]:.2f}"))
    for i, b in enumerate(cmp["bands"]):
        rows.append((f"B_th hidden{i + 1} (end)", "", f"{b['b_th']:.3g}"))
    rows += [
        ("forward ms / batch", f"{cmp['forward_ms'][0]:.1f}", f"{cmp['forward_ms'][1]:.1f}"),
        ("backward ms / batch", f"{cmp['backward_ms'][0]:.1f}", f"{cmp['backward_ms'][1]:.1f}"),
        ("  of which hidden2 (ms)", f"{cmp['backward_ms_layers'][0][1]:.1f}",
         f"{cmp['backward_ms_layers'][1][1]:.1f}"),
        ("backward speedup", "1.00x", f"{cmp['backward_speedup']:.2f}x"),
        ("  hidden2 backward speedup", "1.00x", f"{cmp['hidden2_backward_speedup']:.2f}x"),
        ("overall speedup (fwd + bwd)", "1.00x", f"{cmp['overall_speedup']:.2f}x"),
        ("kept for backward (MB)", f"{cmp['saved_bytes'][0] / 1e6:.2f}",
         f"{cmp['saved_bytes'][1] / 1e6:.2f}"),
        ("memory saved (%, eq. 14)", "", f"{cmp['memory_saved_percent']:.1f}"),
    ]
    if "peak_bytes" in cmp:
        rows.append(("peak CUDA memory (MB)", f"{cmp['peak_bytes'][0] / 1e6:.1f}",
                     f"{cmp['peak_bytes'][1] / 1e6:.1f}"))
    title = (f"{cfg.dataset}: {data.DATASETS[cfg.dataset]['num_inputs']}-{cfg.hidden}-"
             f"{cfg.hidden}-{data.DATASETS[cfg.dataset]['num_classes']}, T={cfg.num_steps}, "
             f"batch {cfg.batch_size}, {cfg.epochs} epochs, {cfg.device}, B_th={cfg.b_th}, "
             f"seed {cfg.seed}")
    width = max(len(r[0]) for r in rows)
    lines = [title, "", f"| {'':{width}} | {'dense':>8} | {name:>8} |",
             f"|{'-' * (width + 2)}|{'-' * 9}:|{'-' * 9}:|"]
    lines += [f"| {a:{width}} | {b:>8} | {c:>8} |" for a, b, c in rows]
    return "\n".join(lines)


def plot(dense, sparse, path, name="sparse"):
    """Loss per batch, test accuracy per epoch, hidden activity over training and time per
    batch, dense vs sparse."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    (loss_ax, acc_ax), (act_ax, time_ax) = axes
    for name, res, c in (("dense", dense, "tab:blue"), (name, sparse, "tab:orange")):
        hist = res["history"]
        steps = range(len(hist))
        loss_ax.plot(steps, [r["loss"] for r in hist], color=c, label=name, lw=1)
        acc_ax.plot([e["epoch"] + 1 for e in res["epochs"]],
                    [100 * e["test_accuracy"] for e in res["epochs"]], "o-", color=c,
                    label=name)
        for i, style in enumerate(("-", "--")):
            act_ax.plot(steps, [100 * r["activity"][i] for r in hist], style, color=c, lw=1,
                        label=f"{name} hidden{i + 1}")
        time_ax.plot(steps, [r["backward_ms"] for r in hist], color=c, lw=1,
                     label=f"{name} backward")
        time_ax.plot(steps, [r["forward_ms"] for r in hist], ":", color=c, lw=1,
                     label=f"{name} forward")
    loss_ax.set(title="training loss", xlabel="batch", ylabel="loss")
    acc_ax.set(title="test accuracy", xlabel="epoch", ylabel="accuracy (%)")
    act_ax.set(title="active neurons |U − θ| < B_th (eq. 13)", xlabel="batch",
               ylabel="activity (%)")
    time_ax.set(title="time per batch", xlabel="batch", ylabel="ms", yscale="log")
    time_ax.yaxis.set_major_formatter(ScalarFormatter())
    time_ax.yaxis.set_minor_formatter(ScalarFormatter())
    for ax in axes.flat:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run(args, argv=()):
    if args.dataset != "digits" and args.data_dir is None:
        raise UsageError(f"--dataset {args.dataset} needs --data-dir (the folder with its files)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available here "
                         "(torch.cuda.is_available() is False)")
    writable_dir(args.out)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    base = paper.Config(dataset=args.dataset, data_dir=args.data_dir, device=args.device,
                        b_th=(surrogate.DEFAULT_B_TH if args.b_th == "default" else args.b_th),
                        seed=args.seed, hidden=args.hidden, epochs=args.epochs,
                        batch_size=args.batch_size, max_batches=args.max_batches,
                        progress=not args.no_progress, grad_scale_T=args.grad_scale_T,
                        num_workers=0 if args.dataset in ("digits", "fmnist") else 2)
    cfg = base.resolved()
    datasets = data.load(cfg.dataset, data_dir=cfg.data_dir, num_steps=cfg.num_steps)
    results = {}
    t0 = time.perf_counter()
    other = args.backward
    for mode in ("dense", other):
        run_cfg = paper.Config(**{**vars(base), "backward": mode, "label": mode})
        results[mode] = paper.train(run_cfg, datasets=datasets)
    elapsed = time.perf_counter() - t0
    cmp = compare(results["dense"], results[other])
    table = format_table(cfg, cmp, other)
    print(table)
    report = {
        "command": " ".join([PROG, *argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None},
        "seconds": elapsed,
        "comparison": cmp,
        "table": table,
        **results,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(report, f, indent=1, default=float)
    plot(results["dense"], results[other], os.path.join(args.out, "demo.png"), other)
    print(f"\n{elapsed:.0f} s; wrote {os.path.join(args.out, 'results.json')} and "
          f"{os.path.join(args.out, 'demo.png')}")
    load, cores = _load(), os.cpu_count() or 1
    if args.device == "cpu" and load is not None and load > cores:
        hint = ", try --threads 1 for steadier ratios" if torch.get_num_threads() > 1 else ""
        print(f"note: the machine was busy (load average {load:.1f} on {cores} cores); "
              f"times are inflated and noisy{hint}")
    return 0


def main(argv=None):
    """Entry point of ``python -m snntorch_sparse demo``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return run(parse_args(argv), argv)
    except UsageError as err:
        return usage_error(PROG, err)
    except (FileNotFoundError, data.DataError) as err:  # missing or malformed data
        print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
