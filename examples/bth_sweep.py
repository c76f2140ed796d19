"""Paper Fig. 5: test accuracy, activity, backward speedup and memory saved against B_th.

Trains the paper's network (``snntorch_sparse.paper``) once with the dense backward and
once per B_th with the sparse backward, from the same seed (``--seeds`` averages over
several), on the 8×8 digits and — when
``--data-dir`` holds ``SHD/shd_train.h5`` and ``SHD/shd_test.h5`` — on SHD. Writes
``bth_sweep.json`` and ``bth_sweep.png`` and prints a table.

    python examples/bth_sweep.py                       # digits, ~2–4 min on 2 CPU cores
    python examples/bth_sweep.py --values 0.2,auto,default --seeds 3

Besides numbers, ``--values`` takes ``auto`` (the adaptive band, 2 % target) and
``default`` (the drop-in classes' default band, ``surrogate.DEFAULT_B_TH``); their rows
also give the mean width the band ended at (``b_th_end``).
    python examples/bth_sweep.py --data-dir ~/data --device cuda --shd-epochs 20
"""

import argparse
import json
import os
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from snntorch_sparse import data, metrics, paper, surrogate  # noqa: E402

NAMED = {"auto": "auto", "default": surrogate.DEFAULT_B_TH}


def parse_value(text):
    """A B_th from ``--values``: a positive number, ``auto`` or ``default``."""
    if text in NAMED:
        return text
    value = float(text)
    if not value > 0:
        raise ValueError(f"every B_th must be > 0, got {text!r}")
    return value


def sweep(dataset, values, args, epochs, datasets):
    """Per seed: a dense baseline and one sparse run per B_th. Returns the means over
    seeds: dense accuracy/loss and one row of figures per B_th."""
    keys = ("test_accuracy", "final_loss", "activity", "backward_speedup", "memory_saved",
            "b_th_end")
    rows = {b_th: {k: [] for k in keys} for b_th in values}
    dense_acc, dense_loss = [], []
    for seed in range(args.seed, args.seed + args.seeds):
        common = dict(dataset=dataset, data_dir=args.data_dir, device=args.device,
                      hidden=args.hidden, epochs=epochs, seed=seed,
                      max_batches=args.max_batches, progress=True)
        dense = paper.train(paper.Config(backward="dense", label=f"seed {seed} dense",
                                         **common), datasets=datasets)
        dense_acc.append(dense["test_accuracy"])
        dense_loss.append(dense["epochs"][-1]["loss"])
        for b_th in values:
            res = paper.train(paper.Config(backward="sparse", b_th=NAMED.get(b_th, b_th),
                                           label=f"seed {seed} B_th={b_th}", **common),
                              datasets=datasets)
            d, s = dense["summary"], res["summary"]
            row = rows[b_th]
            row["test_accuracy"].append(res["test_accuracy"])
            row["final_loss"].append(res["epochs"][-1]["loss"])
            row["activity"].append(sum(s["activity"]) / len(s["activity"]))
            row["backward_speedup"].append(d["backward_ms"] / s["backward_ms"])
            row["memory_saved"].append(metrics.memory_saved(d["saved_bytes"], s["saved_bytes"]))
            ends = [b["b_th"] for b in res["epochs"][-1]["bands"]]
            row["b_th_end"].append(sum(ends) / len(ends))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {"seeds": args.seeds, "dense_test_accuracy": mean(dense_acc),
            "dense_final_loss": mean(dense_loss),
            "rows": [{"b_th": b, **{k: mean(v) for k, v in rows[b].items()}} for b in values]}


def plot(results, path):
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    panels = (("test_accuracy", "test accuracy (%)", 100),
              ("activity", "hidden activity (%)", 100),
              ("backward_speedup", "backward speedup vs dense (×)", 1),
              ("memory_saved", "memory saved (%, eq. 14)", 1))
    for name, res in results.items():
        fixed = [r for r in res["rows"] if not isinstance(r["b_th"], str)]
        b = [r["b_th"] for r in fixed]
        for ax, (key, label, scale) in zip(axes, panels):
            line, = ax.plot(b, [scale * r[key] for r in fixed], "o-", label=name)
            for r in res["rows"]:  # adaptive bands: at the mean width they ended at
                if isinstance(r["b_th"], str):
                    ax.plot([r["b_th_end"]], [scale * r[key]], "*", ms=10,
                            color=line.get_color(), label=f"{name} {r['b_th']}")
            ax.set(xlabel="B_th", ylabel=label, xscale="log")
            ax.set_xticks(b, [f"{v:g}" for v in b])
            ax.minorticks_off()
        axes[0].axhline(100 * res["dense_test_accuracy"], ls="--", color=line.get_color(),
                        label=f"{name} dense")
    axes[2].axhline(1, color="grey", lw=0.8)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--values", default="0.05,0.1,0.2,0.4,0.8",
                   help="comma-separated B_th values")
    p.add_argument("--epochs", type=int, default=8, help="digits epochs per run")
    p.add_argument("--hidden", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds to average")
    p.add_argument("--max-batches", type=int, default=None)
    p.add_argument("--data-dir", default=None, help="folder with SHD/shd_{train,test}.h5")
    p.add_argument("--shd-epochs", type=int, default=5)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "snntorch_sparse_bth_sweep"),
                   help="output folder (default: under the system's temp folder)")
    args = p.parse_args(argv)
    try:
        values = [parse_value(v) for v in args.values.split(",")]
    except ValueError as err:
        p.error(f"--values: {err}")
    os.makedirs(args.out, exist_ok=True)
    print(f"writing results to {args.out}")

    results = {"digits": sweep("digits", values, args, args.epochs, data.load("digits"))}
    try:
        shd = data.load("shd", data_dir=args.data_dir) if args.data_dir else None
    except FileNotFoundError as err:
        print(f"skipping SHD: {err}")
        shd = None
    if shd is not None:
        results["shd"] = sweep("shd", values, args, args.shd_epochs, shd)

    for name, res in results.items():
        print(f"\n{name}: dense test accuracy {100 * res['dense_test_accuracy']:.1f} % "
              f"(means over {res['seeds']} seed(s))")
        print("| B_th | ends at | test acc (%) | activity (%) | backward speedup | "
              "memory saved (%) |")
        print("|-----:|----:|-------------:|-------------:|-----------------:|-----------------:|")
        for r in res["rows"]:
            print(f"| {r['b_th']} | {r['b_th_end']:.3g} | {100 * r['test_accuracy']:.1f} | "
                  f"{100 * r['activity']:.2f} | {r['backward_speedup']:.2f}x | "
                  f"{r['memory_saved']:.1f} |")
    with open(os.path.join(args.out, "bth_sweep.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot(results, os.path.join(args.out, "bth_sweep.png"))
    print(f"\nwrote {args.out}/bth_sweep.json and {args.out}/bth_sweep.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
