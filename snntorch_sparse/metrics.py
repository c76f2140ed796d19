"""Measurements shared by the benchmark and the demo: activity (paper eq. 13), memory
saved (eq. 14), bytes kept for backward, timers and peak memory (CUDA allocator; CPU
peak RSS of one step in a fresh process)."""

import contextlib
import ctypes
import importlib
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch


def activity(mem, threshold=1.0, b_th=0.2):
    """Fraction ρ of entries whose membrane lies in the band ``|U − θ| < B_th``.

    Paper eq. 13 (without its factor 100)::

        ρ = #{(b, t, j) : |U[b, t, j] − θ_j| < B_th} / (B·T·N)

    ``mem`` is a membrane tensor of any shape (e.g. ``[T, B, N]``); ``threshold`` a
    float or a tensor broadcastable against it (per-neuron θ). ``b_th=None`` or ``inf``
    is the dense surrogate: every finite entry counts as active. NaN is never active.
    Returns a Python float in [0, 1]. Example::

        >>> mem = torch.tensor([0.7, 0.85, 1.0, 1.19, 1.3])
        >>> activity(mem, threshold=1.0, b_th=0.2)
        0.6
    """
    if mem.numel() == 0:
        raise ValueError("activity: mem is empty; expected a membrane tensor such as [T, B, N]")
    b_th = math.inf if b_th is None else float(b_th)
    if not b_th > 0:
        raise ValueError(f"activity: b_th must be > 0 (or None for dense), got {b_th}")
    inband = (mem.detach() - threshold).abs() < b_th
    return inband.sum().item() / mem.numel()


def memory_saved(dense_bytes, sparse_bytes):
    """Memory saved in percent, paper eq. 14::

        100 · (memory_original − memory_sparse) / memory_original

    Negative when the sparse variant uses more. Example::

        >>> memory_saved(1000, 80)
        92.0
    """
    if not dense_bytes > 0:
        raise ValueError(f"memory_saved: dense_bytes must be > 0, got {dense_bytes}")
    return 100.0 * (dense_bytes - sparse_bytes) / dense_bytes


@contextlib.contextmanager
def saved_bytes():
    """Count the bytes autograd keeps for backward while the block runs.

    Yields a dict whose ``"bytes"`` entry is the total size of the distinct storages
    saved by the graph built inside the block, leaves (parameters, user inputs) excluded:
    they exist anyway. Example::

        with saved_bytes() as kept:
            loss = model(x).sum()
        print(kept["bytes"])
    """
    seen = {}

    def pack(t):
        if not (t.is_leaf and t.requires_grad):
            storage = t.untyped_storage()
            seen[(storage.data_ptr(), t.device)] = storage.nbytes()
        return t

    result = {"bytes": 0}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result
    result["bytes"] = sum(seen.values())


class Timer:
    """Times named regions of code, in milliseconds.

    CPU: wall clock (``time.perf_counter``) around the region; CPU ops are synchronous.
    CUDA: a pair of CUDA events around the region on the current stream, read only when
    results are asked for, so timing adds no host synchronisation between regions. Take
    medians over repeats after a warm-up (DESIGN.md §5). Example::

        timer = Timer("cpu")
        for _ in range(5):
            with timer("matmul"):
                torch.randn(64, 64) @ torch.randn(64, 64)
        print(timer.median("matmul"))
    """

    def __init__(self, device="cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self._records = {}

    @contextlib.contextmanager
    def __call__(self, name):
        records = self._records.setdefault(name, [])
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            records.append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            records.append((time.perf_counter() - t0) * 1e3)

    def samples(self, name):
        """All timings of region ``name`` in ms, in the order they ran."""
        records = self._records.get(name, [])
        if self.cuda and records:
            torch.cuda.synchronize()
            return [start.elapsed_time(end) for start, end in records]
        return list(records)

    def median(self, name):
        """Median of region ``name`` in ms (``nan`` if it never ran)."""
        samples = self.samples(name)
        return statistics.median(samples) if samples else math.nan


@contextlib.contextmanager
def peak_memory(device):
    """Peak allocator memory of the block on CUDA (``torch.cuda.max_memory_allocated``).

    Yields a dict filled on exit: ``"peak"`` (peak bytes allocated during the block, all
    live tensors included) and ``"extra"`` (peak minus the bytes allocated on entry: what
    the block itself needed). On CPU both stay ``None``: PyTorch's CPU allocator keeps no
    peak statistic, and the process RSS only shows a block's peak in a fresh process
    (:func:`step_peak_rss`).
    Example::

        with peak_memory("cpu") as mem:
            y = torch.randn(1000) * 2
        print(mem)  # {'peak': None, 'extra': None}
    """
    device = torch.device(device)
    result = {"peak": None, "extra": None}
    if device.type != "cuda":
        yield result
        return
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield result
    peak = torch.cuda.max_memory_allocated(device)
    result["peak"], result["extra"] = peak, peak - start


def peak_rss():
    """This process's peak resident set size in bytes (Linux ``VmHWM``: unlike
    ``ru_maxrss``, which a child inherits from its parent across fork/exec, it starts
    afresh in a new process)."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kb * 1024


def peak_rss_supported():
    """Whether :func:`step_peak_rss` can run here (Linux ``/proc``)."""
    return os.path.exists("/proc/self/status")


def reset_peak_rss():
    """Restart this process's peak RSS at its current RSS (Linux: ``/proc/self/clear_refs``),
    so that a peak measured next is the next work's own, not an earlier transient's (building
    an input often peaks above what it keeps). Freed heap memory is first handed back to the
    system (glibc ``malloc_trim``): left resident, the next work would reuse it without
    raising the RSS, and a loop of small allocations would read as free. Returns False
    where the peak cannot be restarted."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def step_peak_rss(setup, *args):
    """Peak CPU memory of one step, in a fresh Python process (Linux): the growth of the
    child's peak RSS (:func:`peak_rss`) over ``step()``, where ``step = setup(*args)``.

    ``setup`` (``"module:function"``, importable in the child) builds everything the step
    needs (model, inputs) and returns the step as a callable, so that only the step's own
    allocations count (the peak is restarted after setup, :func:`reset_peak_rss`). It may
    return ``(step, warm_up)`` instead: ``warm_up()`` runs first, unmeasured — a small step
    of the same model, so that what a process pays once (code paged in, thread pools and
    their stacks, lazily built tables) is not counted as memory of a training step. It
    should stay small: a warm-up at full size would leave freed blocks resident that the
    measured step then reuses without a trace. A fresh
    process because the peak RSS only ever grows: in the parent, earlier work would hide
    the step's peak. ``args`` must be literals (``repr`` round-trips them). The child
    imports this copy of ``snntorch_sparse`` and uses as many threads as this process.
    Returns ``(bytes, result)``: the growth (an int) and what ``step()`` returned (JSON).
    """
    code = ("import json; from snntorch_sparse import metrics; "
            f"print(json.dumps(metrics._step_peak_child({setup!r}, {args!r})))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=False)
    if out.returncode:
        raise RuntimeError(f"peak-memory child failed: {out.stderr.strip()[-400:]}")
    grown, result = json.loads(out.stdout.strip().splitlines()[-1])
    return grown, result


def _step_peak_child(setup, args):
    module, name = setup.split(":")
    step = getattr(importlib.import_module(module), name)(*args)
    if isinstance(step, tuple):
        step, warm_up = step
        warm_up()
    reset_peak_rss()
    before = peak_rss()
    result = step()
    return [peak_rss() - before, result]


def band_report(model, reset=True):
    r"""Per layer: the band half-width ``B_th`` and the band activity ρ (paper eq. 13)
    seen in training, for every neuron of ``model`` with a band-limited surrogate.

    ρ is measured from the band sizes the training forward calls already counted (no
    extra pass): in-band neuron-steps over observed neuron-steps since the last report
    with ``reset=True`` (then the counters restart). Layers with a dense surrogate are
    left out. Also names each layer's surrogate (``spike_grad.layer``), so that an
    empty-band warning names the layer as the model does.

    Returns:
        a list of dicts ``{"layer", "b_th", "band", "rho"}``: ``b_th`` the current width
        (a float), ``band`` the setting (a float or an ``AdaptiveBand``), ``rho`` a float
        or None when no training call was observed.

    Example::

        >>> import torch, torch.nn as nn
        >>> import snntorch_sparse as snn
        >>> from snntorch_sparse import metrics
        >>> net = nn.Sequential(nn.Linear(4, 8), snn.Leaky(beta=0.9, init_hidden=True))
        >>> out = net(torch.rand(2, 4, requires_grad=True))
        >>> [r["layer"] for r in metrics.band_report(net)]
        ['1']
    """
    from . import surrogate

    kinds = (surrogate.SparseSurrogate, surrogate.AdaptiveSurrogate)
    rows = []
    for name, module in model.named_modules():
        sg = getattr(module, "spike_grad", None)
        if not isinstance(sg, kinds) or sg.b_th is None or getattr(module, "readout", False):
            continue
        sg.layer = name or type(module).__name__
        seen, total = sg.counts
        rows.append({"layer": sg.layer, "b_th": sg.b_th, "band": sg.band,
                     "rho": seen / total if total else None})
        if reset:
            sg.counts[:] = [0, 0]
    return rows


def format_band_report(rows):
    """One line per layer: ``name: B_th=…, ρ=… %`` (for the demo, paper.train, bench)."""
    return "; ".join(
        f"{r['layer']}: B_th={r['b_th']:.3g}"
        + ("" if isinstance(r["band"], float) else " (adaptive)")
        + (", rho=n/a" if r["rho"] is None else f", rho={100 * r['rho']:.2f}%")
        for r in rows)
