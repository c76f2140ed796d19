"""Metrics against hand computation: activity (eq. 13), memory saved (eq. 14), bytes kept
for backward, timers and peak memory."""

import math
import os
import time

import pytest
import torch

from snntorch_sparse import metrics

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ------------------------------------------------------------------------- activity
def test_activity_counts_the_open_band():
    # exact binary fractions; |U − 1|: 0.5, 0.125, 0, 0.125, 0.25 and 0.25 (edges: outside)
    mem = torch.tensor([0.5, 0.875, 1.0, 1.125, 1.25, 0.75])
    assert metrics.activity(mem, threshold=1.0, b_th=0.25) == pytest.approx(3 / 6)


def test_activity_matches_a_loop_over_b_t_n():
    gen = torch.Generator().manual_seed(1)
    mem = torch.randn(7, 3, 5, generator=gen, dtype=torch.float64) * 0.5 + 1.0
    theta, b_th = 0.9, 0.3
    count = sum(abs(mem[t, b, n].item() - theta) < b_th
                for t in range(7) for b in range(3) for n in range(5))
    assert metrics.activity(mem, theta, b_th) == pytest.approx(count / (7 * 3 * 5))


def test_activity_per_neuron_threshold_broadcasts():
    mem = torch.tensor([[1.0, 2.0], [1.5, 2.5]])          # [T=2, N=2]
    theta = torch.tensor([1.0, 2.4])                       # per neuron
    # |U − θ|: [0, 0.4], [0.5, 0.1] → inside with b_th 0.2: (0,0) and (1,1)
    assert metrics.activity(mem, theta, b_th=0.2) == pytest.approx(0.5)


def test_activity_dense_band_and_nan():
    mem = torch.tensor([0.0, 5.0, -3.0, math.nan])
    assert metrics.activity(mem, 1.0, b_th=None) == pytest.approx(3 / 4)
    assert metrics.activity(mem, 1.0, b_th=math.inf) == pytest.approx(3 / 4)
    assert metrics.activity(torch.tensor([math.nan, 1.0]), 1.0, 0.2) == pytest.approx(0.5)


def test_activity_does_not_touch_autograd_or_input():
    mem = torch.tensor([1.0, 3.0], requires_grad=True)
    before = mem.detach().clone()
    assert metrics.activity(mem) == pytest.approx(0.5)
    assert mem.grad is None and torch.equal(mem.detach(), before)


@pytest.mark.parametrize("bad", [0.0, -0.1])
def test_activity_rejects_bad_band(bad):
    with pytest.raises(ValueError, match="b_th"):
        metrics.activity(torch.ones(3), 1.0, bad)


def test_activity_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        metrics.activity(torch.empty(0))


# --------------------------------------------------------------------- memory saved
def test_memory_saved_eq14():
    assert metrics.memory_saved(1000, 80) == pytest.approx(92.0)
    assert metrics.memory_saved(200, 200) == pytest.approx(0.0)
    assert metrics.memory_saved(100, 150) == pytest.approx(-50.0)  # sparse used more


def test_memory_saved_rejects_zero_baseline():
    with pytest.raises(ValueError, match="dense_bytes"):
        metrics.memory_saved(0, 10)


# ---------------------------------------------------------------------- saved_bytes
def test_saved_bytes_counts_non_leaf_storages_once():
    a = torch.randn(100, requires_grad=True)
    with metrics.saved_bytes() as kept:
        b = a * 3.0          # saves no tensor (scalar factor)
        c = b.sin()          # saves b: 100 float32 = 400 bytes
        d = c.cos() + b.cos()  # saves c (400) and b again (already counted)
    assert kept["bytes"] == 800
    d.sum().backward()


def test_saved_bytes_excludes_grad_leaves_but_counts_plain_inputs():
    w = torch.randn(50, requires_grad=True)   # a parameter: exists anyway
    x = torch.randn(50)                       # an input without grad: kept by the graph
    with metrics.saved_bytes() as kept:
        y = (x * w).sum()                     # saves x for ∂w
    assert kept["bytes"] == 200
    y.backward()


# --------------------------------------------------------------------------- timers
def test_cpu_timer_records_each_region_in_ms():
    timer = metrics.Timer("cpu")
    for _ in range(3):
        with timer("sleep"):
            time.sleep(0.01)
    samples = timer.samples("sleep")
    assert len(samples) == 3 and all(s >= 10.0 for s in samples)
    assert min(samples) <= timer.median("sleep") <= max(samples)
    assert math.isnan(timer.median("never"))


def test_timer_median_of_known_samples():
    timer = metrics.Timer("cpu")
    timer._records["x"] = [5.0, 1.0, 3.0, 100.0]
    assert timer.median("x") == pytest.approx(4.0)


@needs_cuda
def test_cuda_timer_uses_events():
    timer = metrics.Timer("cuda")
    a = torch.randn(512, 512, device="cuda")
    for _ in range(3):
        with timer("mm"):
            a @ a
    samples = timer.samples("mm")
    assert len(samples) == 3 and all(s > 0 for s in samples)


# ---------------------------------------------------------------------- peak memory
def test_peak_memory_is_not_measured_on_cpu():
    with metrics.peak_memory("cpu") as mem:
        torch.randn(1000)
    assert mem == {"peak": None, "extra": None}


@needs_cuda
def test_peak_memory_cuda_sees_a_temporary():
    with metrics.peak_memory("cuda") as mem:
        t = torch.empty(4 * 2**20, dtype=torch.uint8, device="cuda")
        del t
    assert mem["extra"] >= 4 * 2**20
    assert mem["peak"] >= mem["extra"]


# ------------------------------------------------------------ peak RSS of a step
def _big_step(mb, transient_mb):
    """A setup for step_peak_rss: a transient allocation first (freed), then a step that
    touches ``mb`` MiB and returns a JSON value."""
    junk = torch.ones(transient_mb << 18)  # float32: 4 bytes each
    del junk

    def step():
        t = torch.ones(mb << 18)
        return float(t[0])
    return step


_ONCE = []


def _step_with_first_use(mb, once_mb, warm):
    """A setup for step_peak_rss: a step that touches ``mb`` MiB and, the first time it
    runs, keeps ``once_mb`` MiB for good (as a process's first use of a library does);
    with ``warm`` a small step runs first (the warm-up)."""
    def step(size=mb):
        if not _ONCE:
            _ONCE.append(torch.ones(once_mb << 18))
        return float(torch.ones(size << 18)[0])
    return (step, lambda: step(1)) if warm else step


@pytest.mark.skipif(not metrics.peak_rss_supported(), reason="needs Linux /proc")
def test_step_peak_rss_warm_up_runs_first_and_is_not_counted(monkeypatch):
    """The one-time 128 MiB count when the step is the process's first use, and not after
    the setup's warm-up."""
    here = os.path.dirname(os.path.abspath(__file__))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (here, os.environ.get(
        "PYTHONPATH")))))
    cold, _ = metrics.step_peak_rss("test_metrics:_step_with_first_use", 64, 128, False)
    warm, result = metrics.step_peak_rss("test_metrics:_step_with_first_use", 64, 128, True)
    assert result == 1.0
    assert 188 << 20 <= cold <= 230 << 20
    assert 60 << 20 <= warm <= 100 << 20


@pytest.mark.skipif(not metrics.peak_rss_supported(), reason="needs Linux /proc")
def test_step_peak_rss_measures_the_step_not_the_setup(monkeypatch):
    """The step's own 64 MiB show (and its return value comes back); a 256 MiB transient of
    the setup neither hides them nor counts."""
    here = os.path.dirname(os.path.abspath(__file__))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (here, os.environ.get(
        "PYTHONPATH")))))
    grown, result = metrics.step_peak_rss("test_metrics:_big_step", 64, 256)
    assert result == 1.0
    assert 60 << 20 <= grown <= 100 << 20
