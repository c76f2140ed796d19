"""Benchmark: snnTorch per-step dense and SpikingJelly multi-step dense vs our fused dense
and fused sparse backward.

``python -m snntorch_sparse bench [--device cpu|cuda] [--config NAME ...]``

Four implementations of the same network run **in the same process, on the same
weights and inputs**, timed in rounds of one step of each in turn (a burst of load on a
shared machine hits them all alike):

* ``snntorch``: the loop users write today — for every step ``t`` and layer, ``cur =
  fc(h[t])`` then ``spk, mem = snntorch.Leaky(beta, spike_grad=atan())(cur, mem)``;
  outputs stacked over ``t``. Dense BPTT through autograd. (``--surrogate fast_sigmoid``
  uses the paper's slope-100 fast sigmoid instead, in all implementations.)
* ``spikingjelly`` (when SpikingJelly 2.0 is installed: ``pip install
  spikingjelly==2.0.0``; else the report says so once): its multi-step mode, each layer
  ``layer.Linear`` on all ``T·B`` samples at once, then ``neuron.LIFNode(tau=1/(1−β),
  decay_input=False, v_threshold=1, v_reset=None, surrogate_function=ATan(alpha=2),
  detach_reset=True, step_mode="m")`` on ``[T, B, N]``. SpikingJelly 2.0 has no
  ``backend`` argument any more: on CPU its LIF op runs the torch reference (a loop over
  ``t`` recorded by autograd), the former ``backend="torch"``; on CUDA it picks its own
  kernels. Its neuron::

      H_t = β V_{t−1} + X_t,   S_t = Θ(H_t − θ),   V_t = H_t − θ S_t

  resets in the step it fires, so the reset decays with the membrane; snnTorch's
  ``Leaky`` subtracts the previous step's spike after the decay, ``U_t = β U_{t−1} + X_t
  − θ S_{t−1}``, ``S_t = Θ(U_t − θ)``. Same cost per step, slightly different spike
  trains (the cross-check shows it). The readout (a threshold never reached) is a
  ``LIFNode`` with ``v_threshold`` the largest float32 (finite, as SpikingJelly's CUDA op
  requires) and hard reset (``v_reset=0``, never triggered) and
  ``store_v_seq=True``: ``V_t = β V_{t−1} + X_t`` exactly, its ``v_seq`` the readout
  membrane — SpikingJelly's own node. ATan(α) is snnTorch's atan(α),
  ``α/2 / (1 + (π/2 α x)²)``; with ``--surrogate fast_sigmoid`` it gets snnTorch's fast
  sigmoid as a callable (SpikingJelly's same-shaped SoftSign(α) is α/2 times higher),
  which its LIF accepts.
* ``fused_dense``: :class:`snntorch_sparse.SpikingLinear` with ``backward="dense"``:
  one GEMM for all ``T``, the fused LIF kernels, the full surrogate (equal gradients).
* ``fused_sparse``: the same layers with ``backward="sparse"`` (band ``|U − θ| < B_th``).

Configurations (``--list`` prints them):

* the paper's networks (supplementary E.6): F-MNIST 784-200-200-10 (T=100), N-MNIST
  1156-200-200-10 (T=300), SHD 700-200-200-20 (T=500), and SHD with hidden width
  200…1000 (paper Fig. 4C). β = exp(−Δt/τ) with the paper's Δt and τ, θ = 1, reset by
  subtraction, readout = leaky integrator with infinite threshold. Inputs are Bernoulli
  spikes at a rate per input and step close to each dataset's (:data:`INPUT_RATES`).
  Each hidden layer's weights are ``s·N(0, 1)/√N_in`` with ``s`` calibrated (bisection,
  on the benchmark batch itself) so the layer's band activity ρ (paper eq. 13) equals
  ``--rho`` (default 2 %, inside the paper's measured 1–5 %). Loss: cross-entropy with
  random labels on the readout membrane reduced over time (max; sum for SHD, as the
  paper), so every layer gets a gradient.
* the Open Neuromorphic framework benchmark: one Linear(N, N) (with bias, nn.Linear's
  init) + LIF layer (β = 0.95, as its snnTorch entry), B = 16, T = 500, input ``randn``,
  loss = sum of the output spikes; N = 4096 / 8192 / 16384. ρ is whatever it is.

Measured per configuration and implementation (medians over ``--repeats`` rounds after
``--warmup`` rounds and one probe pass; wall clock on CPU, CUDA events on GPU):

* whole step: forward (input → loss) and backward (``loss.backward()``) times; bytes
  kept for backward (:func:`metrics.saved_bytes`); peak memory of forward + backward
  above what the process held before the step (weights and inputs excluded): on CUDA the
  peak allocator bytes, on CPU the growth of the peak RSS of a fresh process over one
  step (:func:`metrics.step_peak_rss`; one child process per implementation, the
  problem handed over in a file, one small step — one sample, 20 time steps — run first
  so that the process's one-time costs are not counted; ``--no-peak`` skips it).
* hidden layer in isolation (the issue's targets; the paper's Fig. 4 measures the same
  layer): the second hidden layer, fed the first hidden layer's spikes of the same
  implementation (so the sparse layer can use the upstream band, eq. 12). Its backward
  is ``torch.autograd.grad(spk2, [W2, spk1], G)`` with one fixed upstream gradient ``G``
  (the true gradient of the loss w.r.t. ``spk2``, computed once in plain PyTorch) shared by
  all implementations; autograd stops at ``spk1``, so exactly this layer's backward runs
  (∂W2 and ∂spk1). For snnTorch, ``spk1`` is the list of per-step spike tensors and the
  layer is the per-step loop over ``t``.

Speedups are ratios of medians measured in the same run; memory saved is paper eq. 14
(on the bytes kept, and on the peak).
Outputs (``--out``): ``bench_<device>.json`` (every number, the machine and the command),
``bench_<device>.md`` (the tables, also printed) and ``bench_<device>.png``.
"""

import contextlib
import datetime
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from . import bench_csnn, metrics, reference
from ._cli import (Parser, UsageError, fixed_band, fraction, non_negative_int, positive_int,
                   usage_error, writable_dir)
from ._ops import BACKENDS, ops
from .data import DATASETS

PROG = "python -m snntorch_sparse bench"
METHODS = ("snntorch", "spikingjelly", "fused_dense", "fused_sparse")
#: What to install for the optional ``spikingjelly`` implementation.
SPIKINGJELLY_PIP = "pip install spikingjelly==2.0.0"
THRESHOLD = 1.0

#: Input spikes per input and step: our estimates of each dataset's mean rate (binned as
#: in the paper). F-MNIST: latency code, one spike for the ~45 % of pixels brighter than
#: θ = 0.2, over T = 100 → 0.45 %. N-MNIST: ~4 000 events per 300 ms sample over 34×34
#: inputs (polarities merged) → ~1.2 %. SHD: ~8 000 spikes per ~1 s sample over 700
#: channels in 2 ms bins → ~2 %. Uniform in time (a simplification; ρ is calibrated anyway).
INPUT_RATES = {"fmnist": 0.0045, "nmnist": 0.012, "shd": 0.02}

#: Membrane time constants of the paper (supplementary E.6), ms: (hidden, readout).
TAUS_MS = {"fmnist": (10.0, 10.0), "nmnist": (10.0, 10.0), "shd": (10.0, 20.0)}

#: Batch sizes: the paper's B = 256 on GPU; a CPU default that keeps the default run
#: within ~10 minutes on 2 cores. The ONB benchmark always uses its own B = 16.
BATCH = {"cpu": 16, "cuda": 256}

#: Issue 3 targets, judged on the fused_sparse row: (device, config, minimum, what, row key).
_HIDDEN_BWD = ("hidden-layer backward × vs snnTorch", "hidden_bwd_speedup_vs_snntorch")
_STEP = ("whole step (fwd+bwd) × vs snnTorch", "step_speedup_vs_snntorch")
_KEPT = ("memory kept for backward saved, whole network (%)", "mem_saved_vs_snntorch_pct")
_KEPT_HIDDEN = ("memory kept for backward saved, hidden layer (%)",
                "hidden_mem_saved_vs_snntorch_pct")
_PEAK = ("peak memory saved, whole step (%)", "peak_saved_vs_snntorch_pct")
_VS_DENSE = ("whole step × vs our fused dense", "step_speedup_vs_fused_dense")
TARGETS = (
    ("cpu", "shd", 30.0, *_HIDDEN_BWD), ("cpu", "shd", 90.0, *_KEPT),
    ("cpu", "shd", 90.0, *_KEPT_HIDDEN), ("cpu", "shd", 5.0, *_STEP),
    ("cpu", "shd", 80.0, *_PEAK),
    ("cuda", "shd", 200.0, *_HIDDEN_BWD), ("cuda", "shd", 20.0, *_STEP),
    ("cuda", "shd", 90.0, *_KEPT), ("cuda", "shd", 90.0, *_PEAK),
    ("cuda", "onb-16384", 1.0, *_VS_DENSE),
)


# ------------------------------------------------------------------ configurations
@dataclass(frozen=True)
class Config:
    """One benchmarked network. ``sizes`` = (inputs, hidden..., outputs)."""

    name: str
    sizes: tuple
    T: int
    input_rate: float = None     # Bernoulli spike probability; None: randn input (ONB)
    beta: float = 0.95           # hidden layers
    beta_readout: float = None   # None: no readout, the last layer spikes (ONB)
    logits: str = None           # "max" / "sum" over time of the readout; None: sum of outputs
    bias: bool = False
    batch: int = None            # fixed batch size (ONB); None: BATCH[device] or --batch
    calibrate: bool = True       # scale hidden weights to the target ρ

    @property
    def hidden_index(self):
        """Layer timed in isolation: the last hidden layer of a network with at least two
        hidden layers and a readout (the paper's second hidden layer), else None."""
        n_hidden = len(self.sizes) - 2
        return n_hidden - 1 if self.beta_readout is not None and n_hidden >= 2 else None


def _paper(name, dataset, hidden=200, **kw):
    d = DATASETS[dataset]
    tau_h, tau_r = TAUS_MS[dataset]
    dt = d["dt_ms"]
    return Config(name, (d["num_inputs"], hidden, hidden, d["num_classes"]), d["num_steps"],
                  input_rate=INPUT_RATES[dataset], beta=math.exp(-dt / tau_h),
                  beta_readout=math.exp(-dt / tau_r),
                  logits="sum" if dataset == "shd" else "max", **kw)


def _onb(n):
    return Config(f"onb-{n}", (n, n), 500, beta=0.95, bias=True, batch=16, calibrate=False)


CONFIGS = {c.name: c for c in (
    _paper("fmnist", "fmnist"), _paper("nmnist", "nmnist"), _paper("shd", "shd"),
    *(_paper(f"hidden-{h}", "shd", hidden=h) for h in (200, 400, 600, 800, 1000)),
    _onb(4096), _onb(8192), _onb(16384),
    # tiny ones for tests and smoke runs
    Config("quick-paper", (40, 64, 64, 5), 40, input_rate=0.1, beta=0.9, beta_readout=0.9,
           logits="max", batch=4),
    Config("quick-onb", (48, 48), 25, beta=0.95, bias=True, batch=4, calibrate=False),
)}

GROUPS = {
    "paper": ("fmnist", "nmnist", "shd"),
    "hidden-sweep": tuple(f"hidden-{h}" for h in (200, 400, 600, 800, 1000)),
    "onb": ("onb-4096", "onb-8192", "onb-16384"),
    "quick": ("quick-paper", "quick-onb"),
}
DEFAULT = {"cpu": GROUPS["paper"], "cuda": GROUPS["paper"] + GROUPS["onb"]}
#: Repeats and warm-up iterations (after one probe pass) by device.
DEFAULT_REPEATS = {"cpu": (3, 1), "cuda": (5, 1)}


def resolve_configs(names, device, quick):
    """Expand group names; keep order, drop duplicates."""
    if quick:
        names = list(names or []) + ["quick"]
    names = names or list(DEFAULT[device])
    out = []
    for name in names:
        if name == "all":
            expanded = [n for n in CONFIGS if not n.startswith("quick")]
        elif name in GROUPS:
            expanded = GROUPS[name]
        elif name in CONFIGS:
            expanded = [name]
        else:
            raise ValueError(f"unknown config {name!r}; choose from "
                             f"{sorted(CONFIGS) + sorted(GROUPS) + ['all']}")
        out += [n for n in expanded if n not in out]
    return [CONFIGS[n] for n in out]


# ---------------------------------------------------------------- data and weights
def lif_membrane(cur, beta):
    """Membrane ``[T, B, N]`` of a subtract-reset LIF layer (θ = 1) from its current."""
    T, B, N = cur.shape
    flat = cur.reshape(T, B * N)
    m = flat.shape[1]
    mem = ops.lif_fwd(flat.contiguous(), flat.new_zeros(m), flat.new_full((m,), beta),
                      flat.new_full((m,), THRESHOLD), reference.SUBTRACT)
    return mem.view(T, B, N)


def calibrate_scale(cur0, beta, target, b_th):
    """Scale ``s`` with ρ(LIF(s·cur0)) ≈ ``target``: doubling to bracket, then bisection
    in log space (ρ grows with ``s`` over the range the bracket explores)."""
    def rho(s):
        return metrics.activity(lif_membrane(s * cur0, beta), THRESHOLD, b_th)

    lo, hi = 1.0, 1.0
    if rho(1.0) < target:
        tried = {}
        for _ in range(40):
            lo, hi = hi, hi * 2
            tried[hi] = rho(hi)
            if tried[hi] >= target:
                break
        else:  # ρ peaks below the target (too few input spikes): take the peak
            best = max(tried, key=tried.get)
            warnings.warn(f"activity {target:g} is out of reach by scaling the weights; "
                          f"using the highest found, {tried[best]:.3g}", RuntimeWarning)
            return best
    else:
        for _ in range(40):
            lo, hi = lo / 2, lo
            if rho(lo) < target:
                break
    for _ in range(14):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if rho(mid) < target else (lo, mid)
    return min((lo, hi), key=lambda s: abs(rho(s) - target))


def build_problem(cfg, batch, device, target_rho, b_th, seed):
    """Inputs, labels, weights (hidden ones calibrated to ``target_rho``), per-layer
    activity, and the fixed upstream gradient ∂loss/∂spk of the isolated hidden layer."""
    gen = torch.Generator(device=device).manual_seed(seed)
    T, sizes = cfg.T, cfg.sizes
    if cfg.input_rate is None:
        x = torch.randn(T, batch, sizes[0], generator=gen, device=device)
    else:
        x = (torch.rand(T, batch, sizes[0], generator=gen, device=device) < cfg.input_rate).float()
    labels = torch.randint(0, sizes[-1], (batch,), generator=gen, device=device)

    weights, biases = [], []
    info = {"rho": [], "spike_rate": [], "weight_scale": [],
            "input_rate_measured": None if cfg.input_rate is None else x.mean().item()}
    n_spiking = len(sizes) - 1 - (cfg.beta_readout is not None)
    h = x
    for layer in range(len(sizes) - 1):
        n_in, n_out = sizes[layer], sizes[layer + 1]
        bound = 1 / math.sqrt(n_in)  # nn.Linear's default init
        if layer < n_spiking and cfg.calibrate:
            w = torch.randn(n_out, n_in, generator=gen, device=device) / math.sqrt(n_in)
        else:
            w = torch.empty(n_out, n_in, device=device).uniform_(-bound, bound, generator=gen)
        b = (torch.empty(n_out, device=device).uniform_(-bound, bound, generator=gen)
             if cfg.bias else None)
        if layer < n_spiking:
            cur = (h.reshape(T * batch, n_in) @ w.t()).view(T, batch, n_out)
            if b is not None:
                cur = cur + b
            scale = calibrate_scale(cur, cfg.beta, target_rho, b_th) if cfg.calibrate else 1.0
            mem = lif_membrane(scale * cur, cfg.beta)
            del cur
            w, b = w * scale, (None if b is None else b * scale)
            info["weight_scale"].append(scale)
            info["rho"].append(metrics.activity(mem, THRESHOLD, b_th))
            h = (mem > THRESHOLD).float()
            info["spike_rate"].append(h.mean().item())
            del mem
        weights.append(w)
        biases.append(b)

    upstream = None
    if cfg.hidden_index is not None:  # h: the isolated layer's spikes; the readout follows
        spk = h.requires_grad_()
        out = _readout_ref(spk, weights[-1], biases[-1], cfg.beta_readout)
        upstream, = torch.autograd.grad(loss_fn(cfg, out, labels), spk)
    return x, labels, weights, biases, info, upstream


def _readout_ref(spk, w, b, beta):
    """The readout membrane (leaky integrator, no threshold) by plain autograd."""
    cur = spk @ w.t() + (0 if b is None else b)
    mem, out = torch.zeros_like(cur[0]), []
    for t in range(cur.shape[0]):
        mem = beta * mem + cur[t]
        out.append(mem)
    return torch.stack(out)


def loss_fn(cfg, out, labels):
    """Cross-entropy of the readout membrane reduced over time; ONB: sum of outputs."""
    if cfg.logits is None:
        return out.sum()
    logits = out.amax(0) if cfg.logits == "max" else out.sum(0)
    return F.cross_entropy(logits, labels)


# ------------------------------------------------------------------ implementations
class PerStepNet(nn.Module):
    """snnTorch as users write it: a Python loop over ``t``, ``Linear`` then ``Leaky``."""

    def __init__(self, cfg, weights, biases, spike_grad):
        super().__init__()
        import snntorch
        from snntorch import surrogate

        self.readout = cfg.beta_readout is not None
        self.fcs, self.lifs = nn.ModuleList(), nn.ModuleList()
        for i, (w, b) in enumerate(zip(weights, biases)):
            fc = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device)
            with torch.no_grad():
                fc.weight.copy_(w)
                if b is not None:
                    fc.bias.copy_(b)
            if self.readout and i == len(weights) - 1:  # infinite threshold: never fires
                lif = snntorch.Leaky(beta=cfg.beta_readout, threshold=math.inf,
                                     reset_mechanism="none", spike_grad=surrogate.atan())
            else:
                lif = snntorch.Leaky(beta=cfg.beta, threshold=THRESHOLD, spike_grad=spike_grad)
            self.fcs.append(fc)
            self.lifs.append(lif.to(w.device))

    def _run(self, layers, inputs):
        mems = [self.lifs[i].reset_mem() for i in layers]
        out = []
        for h in inputs:
            for k, i in enumerate(layers):
                spk, mems[k] = self.lifs[i](self.fcs[i](h), mems[k])
                h = spk
            out.append(mems[-1] if self.readout and layers[-1] == len(self.fcs) - 1 else spk)
        return out

    def forward(self, x):
        return torch.stack(self._run(range(len(self.fcs)), x))

    def weights(self):
        return [fc.weight for fc in self.fcs]

    def hidden_input(self, x, index):
        """Per-step spikes entering layer ``index`` (graph attached), a list over t."""
        return self._run(range(index), x)

    def hidden_forward(self, inputs, index):
        return torch.stack(self._run([index], inputs))

    @staticmethod
    def grad_inputs(inputs):
        return list(inputs)


class FusedNet(nn.Module):
    """The same network from :class:`snntorch_sparse.SpikingLinear` layers."""

    def __init__(self, cfg, weights, biases, backward, b_th, spike_grad):
        super().__init__()
        from .spiking_linear import SpikingLinear

        layers = []
        for i, (w, b) in enumerate(zip(weights, biases)):
            readout = cfg.beta_readout is not None and i == len(weights) - 1
            layer = SpikingLinear(w.shape[1], w.shape[0],
                                  beta=cfg.beta_readout if readout else cfg.beta,
                                  threshold=THRESHOLD, bias=b is not None,
                                  spike_grad=spike_grad, b_th=b_th, readout=readout,
                                  backward=backward, device=w.device)
            with torch.no_grad():
                layer.weight.copy_(w)
                if b is not None:
                    layer.bias.copy_(b)
            layers.append(layer)
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def weights(self):
        return [layer.weight for layer in self.layers]

    def hidden_input(self, x, index):
        for layer in self.layers[:index]:
            x = layer(x)
        return x

    def hidden_forward(self, spk, index):
        return self.layers[index](spk)

    @staticmethod
    def grad_inputs(inputs):
        return [inputs]


class MultiStepNet(nn.Module):
    """The same network in SpikingJelly 2.0's multi-step mode: ``layer.Linear`` then
    ``neuron.LIFNode`` per layer on ``[T, B, N]`` (module docstring: neuron, readout)."""

    def __init__(self, cfg, weights, biases, spike_grad):
        super().__init__()
        from spikingjelly.activation_based import layer, neuron

        self.readout = cfg.beta_readout is not None
        self.fcs, self.lifs = nn.ModuleList(), nn.ModuleList()
        for i, (w, b) in enumerate(zip(weights, biases)):
            fc = layer.Linear(w.shape[1], w.shape[0], bias=b is not None, step_mode="m")
            with torch.no_grad():
                fc.weight.copy_(w)
                if b is not None:
                    fc.bias.copy_(b)
            # decay_input=False: H = V − V/τ + X = βV + X with τ = 1/(1 − β)
            if self.readout and i == len(weights) - 1:
                lif = neuron.LIFNode(tau=1.0 / (1.0 - cfg.beta_readout), decay_input=False,
                                     # never reached; finite, as its CUDA op requires
                                     v_threshold=torch.finfo(torch.float32).max, v_reset=0.0,
                                     surrogate_function=spike_grad, detach_reset=True,
                                     step_mode="m", store_v_seq=True)
            else:
                lif = neuron.LIFNode(tau=1.0 / (1.0 - cfg.beta), decay_input=False,
                                     v_threshold=THRESHOLD, v_reset=None,
                                     surrogate_function=spike_grad, detach_reset=True,
                                     step_mode="m")
            self.fcs.append(fc.to(w.device))
            self.lifs.append(lif)

    def _run(self, layers, h):
        for i in layers:
            self.lifs[i].reset()  # SpikingJelly's neurons keep V between calls
            h = self.lifs[i](self.fcs[i](h))
        if self.readout and layers[-1] == len(self.fcs) - 1:
            return self.lifs[-1].v_seq
        return h

    def forward(self, x):
        return self._run(range(len(self.fcs)), x)

    def weights(self):
        return [fc.weight for fc in self.fcs]

    def hidden_input(self, x, index):
        return self._run(range(index), x)

    def hidden_forward(self, spk, index):
        return self._run([index], spk)

    @staticmethod
    def grad_inputs(inputs):
        return [inputs]


def spikingjelly_missing():
    """None when SpikingJelly can be imported, else why not (one line)."""
    try:
        import spikingjelly.activation_based.neuron  # noqa: F401
    except Exception as err:  # not installed, or broken against this torch
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


#: ``--surrogate`` choices: snnTorch's default, and the paper's (supplementary E.5).
SURROGATES = {"atan": ("atan", {"alpha": 2.0}), "fast_sigmoid": ("fast_sigmoid", {"slope": 100.0})}


def make_model(method, cfg, weights, biases, b_th, surrogate_name):
    """One implementation of the network; the surrogate is the same function in all four
    (snnTorch's for ``snntorch``; SpikingJelly's ATan, equal to it, for ``spikingjelly``;
    ours, banded by ``b_th``, for the fused)."""
    shape, params = SURROGATES[surrogate_name]
    if method in ("snntorch", "spikingjelly"):
        from snntorch import surrogate as snn_surrogate

        spike_grad = getattr(snn_surrogate, shape)(**params)
        if method == "snntorch":
            return PerStepNet(cfg, weights, biases, spike_grad)
        if shape == "atan":  # its own op; other shapes: snnTorch's function (module docstring)
            from spikingjelly.activation_based import surrogate as sj_surrogate

            spike_grad = sj_surrogate.ATan(**params)
        return MultiStepNet(cfg, weights, biases, spike_grad)
    from . import surrogate

    spike_grad = getattr(surrogate, shape)(**params, b_th=b_th)
    return FusedNet(cfg, weights, biases, method.split("_")[1], b_th, spike_grad)


# ----------------------------------------------------------------------- measuring
def _zero_grad(model):
    for p in model.parameters():
        p.grad = None


def _time_rounds(device, warmup, repeats, jobs):
    """Time the steps ``jobs`` (method -> ``(forward, backward, setup)``: one step is
    ``setup()`` untimed, then ``backward(forward())``, regions "fwd" and "bwd") in rounds of
    one step of each method in turn, so that a burst of load on a shared machine hits them
    all alike; the first ``warmup`` rounds are untimed. Returns method -> (timer, the largest
    CUDA peak of a step above the memory allocated at its start, None on CPU), and
    method -> the exception of a method whose step raised (it leaves the rounds)."""
    timers = {m: metrics.Timer(device) for m in jobs}
    peaks = {m: [] for m in jobs}
    errors = {}
    for i in range(warmup + repeats):
        timed = i >= warmup
        for m, (forward, backward, setup) in jobs.items():
            if m in errors:
                continue
            try:
                setup()
                with metrics.peak_memory(device) as peak:
                    with timers[m]("fwd") if timed else contextlib.nullcontext():
                        out = forward()
                    with timers[m]("bwd") if timed else contextlib.nullcontext():
                        backward(out)
                del out
            except Exception as err:  # OOM, kernel error: this method stops, the others go on
                errors[m] = err
                continue
            if timed:
                peaks[m].append(peak["extra"])
    done = {m: (timers[m], None if not peaks[m] or peaks[m][0] is None else max(peaks[m]))
            for m in jobs if m not in errors}
    return done, errors


def _probe(model, cfg, x, labels):
    """One untimed step: the bytes autograd keeps for backward, the output and the weight
    gradients (for the cross-checks against snnTorch)."""
    _zero_grad(model)
    with metrics.saved_bytes() as kept:
        out = model(x)
        loss = loss_fn(cfg, out, labels)
    loss.backward()
    probe = {"out": out.detach(), "grads": [w.grad.detach().clone() for w in model.weights()]}
    _zero_grad(model)
    return kept["bytes"], probe


def _store_times(row, timer, peak, prefix=""):
    """Medians, samples and minima (on a shared machine other processes only ever add time)
    of the regions "fwd" and "bwd" into ``row``, keys ``prefix + "fwd_ms"`` etc."""
    row[prefix + "peak_bytes"] = peak
    for region in ("fwd", "bwd"):
        row[f"{prefix}{region}_ms"] = timer.median(region)
        row[f"{prefix}{region}_samples_ms"] = timer.samples(region)
        row[f"{prefix}{region}_min_ms"] = min(timer.samples(region))


def measure(models, cfg, x, labels, upstream, device, warmup, repeats):
    """Whole step and isolated hidden layer timings and memory of the implementations
    ``models`` (method -> model), timed in rounds across them (:func:`_time_rounds`).
    Returns method -> results, method -> probe (:func:`_probe`), method -> exception."""
    res, probes, errors = {}, {}, {}
    for m, model in models.items():
        try:
            kept, probes[m] = _probe(model, cfg, x, labels)
        except Exception as err:
            errors[m] = err
            continue
        res[m] = dict.fromkeys(("hidden_fwd_ms", "hidden_bwd_ms", "hidden_kept_bytes",
                                "hidden_peak_bytes", "hidden_fwd_samples_ms",
                                "hidden_bwd_samples_ms"), None)
        res[m]["kept_bytes"] = kept
    jobs = {m: (lambda model=models[m]: loss_fn(cfg, model(x), labels),
                lambda loss: loss.backward(), lambda model=models[m]: _zero_grad(model))
            for m in res}
    done, failed = _time_rounds(device, warmup, repeats, jobs)
    errors.update(failed)
    for m, (timer, peak) in done.items():
        _store_times(res[m], timer, peak)
        _zero_grad(models[m])

    k = cfg.hidden_index
    if k is not None:  # the hidden layer alone: ∂W_k and ∂input from a fixed upstream grad
        jobs = {}
        for m in done:
            model = models[m]
            try:
                inputs = model.hidden_input(x, k)
                wrt = [model.weights()[k]] + model.grad_inputs(inputs)
                with metrics.saved_bytes() as kept:
                    spk = model.hidden_forward(inputs, k)
                torch.autograd.grad(spk, wrt, upstream)
                del spk
            except Exception as err:
                errors[m] = err
                continue
            res[m]["hidden_kept_bytes"] = kept["bytes"]
            jobs[m] = (lambda model=model, inputs=inputs: model.hidden_forward(inputs, k),
                       lambda spk, wrt=wrt: torch.autograd.grad(spk, wrt, upstream),
                       lambda: None)
        hidden, failed = _time_rounds(device, warmup, repeats, jobs)
        errors.update(failed)
        del jobs
        for m, (timer, peak) in hidden.items():
            _store_times(res[m], timer, peak, prefix="hidden_")
    return ({m: r for m, r in res.items() if m not in errors}, probes,
            {m: errors[m] for m in models if m in errors})


def _ratio(a, b):
    return a / b if a is not None and b and not math.isnan(a) and not math.isnan(b) else None


def _rel_err(ref, other):
    return max(((o.double() - r.double()).norm() / r.double().norm().clamp_min(1e-300)).item()
               for r, o in zip(ref, other))


def _cosine(ref, other):
    return min(F.cosine_similarity(r.double().flatten(), o.double().flatten(), dim=0).item()
               for r, o in zip(ref, other))


def derive(rows):
    """Speedups and memory saved (eq. 14) of each row against snnTorch, SpikingJelly and
    fused dense (None where the baseline did not run)."""
    by = {r["method"]: r for r in rows}
    for r in rows:
        for base in ("snntorch", "spikingjelly", "fused_dense"):
            b = by.get(base, {})
            tag = f"vs_{base}"
            r[f"bwd_speedup_{tag}"] = _ratio(b.get("bwd_ms"), r.get("bwd_ms"))
            r[f"step_speedup_{tag}"] = _ratio(b.get("step_ms"), r.get("step_ms"))
            r[f"hidden_bwd_speedup_{tag}"] = _ratio(b.get("hidden_bwd_ms"), r.get("hidden_bwd_ms"))
            r[f"hidden_step_speedup_{tag}"] = _ratio(b.get("hidden_step_ms"),
                                                     r.get("hidden_step_ms"))
            for key, out in (("kept_bytes", "mem_saved"),
                             ("hidden_kept_bytes", "hidden_mem_saved"),
                             ("peak_bytes", "peak_saved"),
                             ("hidden_peak_bytes", "hidden_peak_saved")):
                ok = b.get(key) and r.get(key) is not None
                r[f"{out}_{tag}_pct"] = metrics.memory_saved(b[key], r[key]) if ok else None


def layer_costs(cfg, batch, info):
    """Per layer, what :func:`bench_csnn.flop_floor` needs: dense multiply-adds of the
    forward, the input's share of nonzeros (measured on the benchmark batch; 1 for a
    ``randn`` input), the band share ρ of the layer feeding it and of its own neurons
    (none for a readout), and the input density up to which the sparse mode's forward is
    event-driven."""
    from ._fused import event_max_density

    densities = [1.0 if info["input_rate_measured"] is None else info["input_rate_measured"]]
    densities += info["spike_rate"]
    return [{"macs": cfg.T * batch * n_in * n_out, "in_density": densities[i],
             "upstream_rho": info["rho"][i - 1] if i else None,
             "own_rho": info["rho"][i] if i < len(info["rho"]) else None,
             "events_max": event_max_density(n_out)}
            for i, (n_in, n_out) in enumerate(zip(cfg.sizes[:-1], cfg.sizes[1:]))]


def bench_config(cfg, args, device, progress, methods=METHODS):
    """The implementations ``methods`` on one configuration; returns the rows (one per
    method)."""
    batch = cfg.batch or args.batch or BATCH[device.type]
    base = {"config": cfg.name, "device": device.type, "B": batch, "T": cfg.T,
            "sizes": list(cfg.sizes)}
    try:
        x, labels, weights, biases, info, upstream = build_problem(
            cfg, batch, device, args.rho, args.b_th, args.seed)
    except Exception as err:  # e.g. OOM on a small GPU: report and go on
        progress.write(f"{cfg.name}: setup failed: {type(err).__name__}: {err}")
        progress.update(len(methods))
        return [dict(base, method=m, error=f"setup: {type(err).__name__}: {err}") for m in methods]
    rate = bench_csnn.gemm_rate(device)
    costs = layer_costs(cfg, batch, info)
    floors = {m: bench_csnn.flop_floor(costs, m, cfg.T, False) for m in METHODS}
    base.update(rho=info["rho"], spike_rate=info["spike_rate"], weight_scale=info["weight_scale"],
                input_rate=cfg.input_rate, input_rate_measured=info["input_rate_measured"],
                rho_hidden=info["rho"][cfg.hidden_index] if cfg.hidden_index is not None else None)
    rows, models = [], {}
    for method in methods:
        row = dict(base, method=method, gemm_gmacs_per_s=rate / 1e9,
                   floor_fwd_ms=floors[method]["fwd"] / rate * 1e3,
                   floor_bwd_ms=floors[method]["bwd"] / rate * 1e3)
        try:
            models[method] = make_model(method, cfg, weights, biases, args.b_th, args.surrogate)
        except Exception as err:  # e.g. a missing layer: report and go on
            _fail(row, err, cfg, progress)
        rows.append(row)
    progress.set_postfix_str(f"{cfg.name}: {', '.join(models)} in rounds")
    res, probes, errors = measure(models, cfg, x, labels, upstream, device, args.warmup,
                                  args.repeats)
    del models
    if device.type == "cuda":
        torch.cuda.empty_cache()
    ref = probes.get("snntorch")
    for row in rows:
        m = row["method"]
        if m in errors:
            _fail(row, errors[m], cfg, progress)
        if m not in res:
            continue
        row.update(res[m])
        row["step_ms"] = row["fwd_ms"] + row["bwd_ms"]
        row["hidden_step_ms"] = (None if row["hidden_bwd_ms"] is None
                                 else row["hidden_fwd_ms"] + row["hidden_bwd_ms"])
        if ref is not None and m != "snntorch":  # cross-check against snnTorch's gradients
            probe = probes[m]
            row["out_max_abs_diff_vs_snntorch"] = (probe["out"] - ref["out"]).abs().max().item()
            row["grad_rel_err_vs_snntorch"] = _rel_err(ref["grads"], probe["grads"])
            row["grad_cos_vs_snntorch"] = _cosine(ref["grads"], probe["grads"])
    del probes, ref
    progress.update(len(methods))
    if args.peak and device.type == "cpu" and metrics.peak_rss_supported():
        measure_peak_rss(cfg, rows, (x, labels, weights, biases), args, progress)
    derive(rows)
    return rows


def _fail(row, err, cfg, progress):
    """Record an implementation's error in its row and say it (the run goes on)."""
    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    progress.write(f"{cfg.name} / {row['method']}: {row['error']}")


def measure_peak_rss(cfg, rows, problem, args, progress):
    """CPU: each row's ``peak_bytes``, the peak RSS growth of one whole step in a fresh
    process (:func:`metrics.step_peak_rss`), on the same weights and inputs (handed over in
    a file, so the child skips the calibration and its temporaries)."""
    x, labels, weights, biases = problem
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "problem.pt")
        torch.save({"config": cfg.name, "x": x, "labels": labels, "weights": weights,
                    "biases": biases}, path)
        for row in rows:
            if row.get("error"):
                continue
            progress.set_postfix_str(f"{cfg.name} / {row['method']} peak RSS")
            try:
                row["peak_bytes"], _ = metrics.step_peak_rss(
                    "snntorch_sparse.bench:_peak_setup", path, row["method"], args.b_th,
                    args.surrogate)
            except RuntimeError as err:
                row["peak_error"] = str(err).splitlines()[-1][:200]
                progress.write(f"{cfg.name} / {row['method']}: peak RSS: {row['peak_error']}")


def _peak_setup(path, method, b_th, surrogate_name):
    """One whole step (forward, loss, backward) of ``method`` on the problem saved at
    ``path``, and its warm-up (one sample, 20 steps), for :func:`metrics.step_peak_rss`."""
    p = torch.load(path)
    cfg = CONFIGS[p["config"]]
    model = make_model(method, cfg, p["weights"], p["biases"], b_th, surrogate_name)
    x, labels = p["x"], p["labels"]

    def step(x=x, labels=labels):
        loss_fn(cfg, model(x), labels).backward()

    def warm_up():
        step(x[:20, :1].contiguous(), labels[:1])
        _zero_grad(model)
    return step, warm_up


# ------------------------------------------------------------------------ reporting
def machine_info(device):
    import snntorch

    from . import __version__

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    info = {"cpu": cpu, "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "snntorch": snntorch.__version__,
            "snntorch_sparse": __version__, "backends": dict(BACKENDS), "gpu": None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_bytes=props.total_memory,
                    gpu_capability=f"{props.major}.{props.minor}",
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return info


def _load_average():
    with contextlib.suppress(OSError, AttributeError):
        return round(os.getloadavg()[0], 2)
    return None


def _fmt(v, kind="ms"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if kind == "ms":
        return f"{v:.3g}" if v < 100 else f"{v:.0f}"
    if kind == "MB":
        return f"{v / 2**20:.3g}" if v < 100 * 2**20 else f"{v / 2**20:.0f}"
    if kind == "x":
        return f"{v:.3g}×" if v < 100 else f"{v:.0f}×"
    if kind == "pct":
        return f"{v:.1f}"
    return str(v)


def _rho(r):
    return "/".join(f"{100 * p:.2g}" for p in r.get("rho") or []) or "—"


#: How the whole-step peak was measured, by device ("off": ``--no-peak``).
_PEAK_NOTE = {
    "cuda": "peak = CUDA allocator peak of one step above the resident weights and inputs",
    "cpu": "peak = growth of the peak RSS (VmHWM) of a fresh process over one step, after "
           "loading the model and inputs and a warm-up step of one sample and 20 time steps",
    "off": "CPU peak memory not measured (--no-peak)",
}


def markdown(report):
    rows = report["rows"]
    dev = report["settings"]["device"]
    s = report["settings"]
    m = report["machine"]
    load = m.get("load_average_1min") or [None, None]
    lines = [f"Device: {dev} — {m['gpu'] or m['cpu']}; torch {m['torch']}, "
             f"{m['torch_threads']} threads of {m['logical_cores']} logical cores "
             f"(load average at start/end: {load[0]}/{load[1]}); kernels: "
             f"{m['backends'].get(dev, '?')}; {report['date']}; {report['elapsed_s']:.0f} s",
             f"Command: `{report['command']}`",
             "",
             f"Medians of {s['repeats']} repeats after {s['warmup']} warm-up iterations "
             f"(+1 probe pass); B_th = {s['b_th']}, target ρ = {100 * s['rho']:g} %, "
             f"surrogate {s['surrogate']} in all implementations. "
             "ρ = band activity per spiking layer (paper eq. 13). × = speedup "
             "(ratio of medians, same run). Memory saved = paper eq. 14 on the bytes kept for "
             "backward and on the peak; "
             + _PEAK_NOTE["off" if dev == "cpu" and not s.get("peak") else dev] + ".",
             "",
             "**Configurations** (ρ and spike rate per spiking layer, measured on the "
             "benchmark batch)", "",
             "| config | layers | T | B | input | β hidden / readout | ρ % | spike rate % |",
             "|---|---|---|---|---|---|---|---|"]
    for c in report["configs"]:
        r = next((r for r in rows if r["config"] == c["name"]), {})
        inp = ("randn" if c["input_rate"] is None
               else f"spikes, p = {100 * c['input_rate']:g} %")
        beta = f"{c['beta']:.3g}" + ("" if c["beta_readout"] is None
                                     else f" / {c['beta_readout']:.3g}")
        rates = "/".join(f"{100 * p:.2g}" for p in r.get("spike_rate") or []) or "—"
        lines.append(f"| {c['name']} | {'-'.join(map(str, c['sizes']))} | {c['T']} | "
                     f"{r.get('B', '—')} | {inp} | {beta} | {_rho(r)} | {rates} |")
    columns = ("config", "B", "ρ %", "method", "fwd ms", "bwd ms", "FLOP floor fwd / bwd ms",
               "kept MB", "peak MB", "bwd × snnTorch", "step × snnTorch", "step × SpikingJelly", "bwd × fused dense",
               "step × fused dense", "kept saved % vs snnTorch", "peak saved % vs snnTorch")
    lines += ["", "**Whole step** (all layers, input → loss → ∂weights; FLOP floor = the "
              "multiply-adds the implementation must do — sparse: forward and ∂W over the "
              "input's nonzeros, ∂X over the upstream band — at the GEMM rate of this run)", "",
              "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        if r.get("error"):
            cells = [r["config"], str(r["B"]), _rho(r), r["method"], f"error: {r['error'][:80]}"]
        else:
            cells = [
                r["config"], str(r["B"]), _rho(r), r["method"], _fmt(r["fwd_ms"]),
                _fmt(r["bwd_ms"]), f"{_fmt(r['floor_fwd_ms'])} / {_fmt(r['floor_bwd_ms'])}",
                _fmt(r["kept_bytes"], "MB"), _fmt(r.get("peak_bytes"), "MB"),
                _fmt(r.get("bwd_speedup_vs_snntorch"), "x"),
                _fmt(r.get("step_speedup_vs_snntorch"), "x"),
                _fmt(r.get("step_speedup_vs_spikingjelly"), "x"),
                _fmt(r.get("bwd_speedup_vs_fused_dense"), "x"),
                _fmt(r.get("step_speedup_vs_fused_dense"), "x"),
                _fmt(r.get("mem_saved_vs_snntorch_pct"), "pct"),
                _fmt(r.get("peak_saved_vs_snntorch_pct"), "pct")]
        lines.append("| " + " | ".join(cells + [""] * (len(columns) - len(cells))) + " |")
    for r in rows:
        if r.get("peak_error"):
            lines += ["", f"{r['config']} / {r['method']}: peak RSS not measured: "
                          f"{r['peak_error']}"]
    for method, why in report.get("missing", {}).items():
        lines += ["", f"**{method}: not measured** ({why}); `{SPIKINGJELLY_PIP}` (or "
                      "`pip install 'snntorch-sparse[bench]'`) adds it."]
    hidden = [r for r in rows if r.get("hidden_bwd_ms") is not None]
    if hidden:
        lines += ["", "**Second hidden layer in isolation** (fixed upstream gradient; "
                  "backward = ∂W and ∂input of this layer only)", "",
                  "| config | ρ % | method | fwd ms | bwd ms | kept MB | peak MB "
                  "| bwd × snnTorch | fwd+bwd × snnTorch | bwd × fused dense "
                  "| mem saved % vs snnTorch |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in hidden:
            lines.append("| " + " | ".join([
                r["config"], f"{100 * r['rho_hidden']:.2g}", r["method"], _fmt(r["hidden_fwd_ms"]),
                _fmt(r["hidden_bwd_ms"]), _fmt(r["hidden_kept_bytes"], "MB"),
                _fmt(r.get("hidden_peak_bytes"), "MB"),
                _fmt(r.get("hidden_bwd_speedup_vs_snntorch"), "x"),
                _fmt(r.get("hidden_step_speedup_vs_snntorch"), "x"),
                _fmt(r.get("hidden_bwd_speedup_vs_fused_dense"), "x"),
                _fmt(r.get("hidden_mem_saved_vs_snntorch_pct"), "pct")]) + " |")
    checks = [r for r in rows if r.get("grad_rel_err_vs_snntorch") is not None]
    if checks:
        lines += ["", "**Cross-check against snnTorch** (probe pass): max |Δ output|, relative "
                  "error and cosine of the weight gradients (worst layer); spikingjelly "
                  "resets in the step it fires, so its spike trains differ slightly by "
                  "design (module docstring)", "",
                  "| config | method | max abs Δ out | grad rel. err | grad cosine |",
                  "|---|---|---|---|---|"]
        for r in checks:
            lines.append(f"| {r['config']} | {r['method']} "
                         f"| {r['out_max_abs_diff_vs_snntorch']:.2g} "
                         f"| {r['grad_rel_err_vs_snntorch']:.2g} "
                         f"| {r['grad_cos_vs_snntorch']:.4f} |")
    if report["targets"]:
        lines += ["", "**Targets** (issue 3; measured on fused_sparse)", "",
                  "| target | config | required | measured | met |", "|---|---|---|---|---|"]
        for t in report["targets"]:
            measured = "—" if t["measured"] is None else f"{t['measured']:.3g}"
            met = {True: "yes", False: "no", None: "not measured"}[t["met"]]
            lines.append(f"| {t['target']} | {t['config']} | ≥ {t['required']:g} | {measured} "
                         f"| {met} |")
    return "\n".join(lines) + "\n"


def evaluate_targets(rows, device):
    out = []
    for dev, config, required, what, key in TARGETS:
        if dev != device:
            continue
        row = next((r for r in rows if r["config"] == config and r["method"] == "fused_sparse"),
                   None)
        if row is None:
            continue
        value = row.get(key)
        out.append({"target": what, "config": config, "required": required, "key": key,
                    "measured": value, "met": None if value is None else value >= required})
    return out


def plot(report, path):
    """Speedups of fused_sparse per configuration (log scale), ρ annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["method"] == "fused_sparse" and not r.get("error")]
    series = (("hidden_bwd_speedup_vs_snntorch", "hidden-layer bwd vs snnTorch"),
              ("bwd_speedup_vs_snntorch", "whole bwd vs snnTorch"),
              ("step_speedup_vs_snntorch", "whole fwd+bwd vs snnTorch"),
              ("step_speedup_vs_spikingjelly", "whole fwd+bwd vs SpikingJelly"),
              ("bwd_speedup_vs_fused_dense", "whole bwd vs fused dense"),
              ("step_speedup_vs_fused_dense", "whole fwd+bwd vs fused dense"))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(rows) + 2), 4.5))
    width = 0.8 / len(series)
    for k, (key, label) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(rows))]
        ys = [r.get(key) or float("nan") for r in rows]
        ax.bar(xs, ys, width, label=label)
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["config"] for r in rows])
    for i, r in enumerate(rows):
        ax.annotate(f"ρ={_rho(r)}%", (i, 1.0), xytext=(0, -28), textcoords="offset points",
                    ha="center", fontsize=8, annotation_clip=False)
    ax.set_ylabel("speedup of fused sparse (×, log)")
    machine = report["machine"]
    ax.set_title(f"snntorch_sparse bench — {machine['gpu'] or machine['cpu']}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _clean(v):
    """JSON-safe: NaN/inf → None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


# ------------------------------------------------------------------------------ CLI
def parse_args(argv):
    p = Parser(
        prog=PROG,
        description="Speed and memory of snnTorch per-step dense BPTT (and SpikingJelly "
                    "multi-step, when installed) vs the fused dense and fused sparse "
                    "SpikingLinear backward, measured in the same run.")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when a GPU is visible, else cpu")
    p.add_argument("--config", action="append", default=None, metavar="NAME",
                   help="configuration or group (repeatable, or comma-separated): "
                        + ", ".join(list(GROUPS) + ["all", "csnn"]) + ", or a single name "
                        "(--list); csnn = snnTorch's convolutional tutorial models "
                        f"({', '.join(bench_csnn.CONFIGS)}). "
                        "Default: paper (cpu); paper + onb (cuda)")
    p.add_argument("--quick", action="store_true", help="add the tiny 'quick' configurations")
    p.add_argument("--list", action="store_true", help="list the configurations and exit")
    p.add_argument("--batch", type=positive_int, default=None,
                   help=f"batch size of the paper configs (default {BATCH['cpu']} on CPU, "
                        f"{BATCH['cuda']} on GPU; ONB always uses 16)")
    p.add_argument("--num-steps", type=positive_int, default=None, metavar="T",
                   help="time steps of every fully connected configuration (default: "
                        "each one's own, --list; csnn keeps its own)")
    p.add_argument("--repeats", type=positive_int, default=None,
                   help="timed rounds, each one step of every implementation (default %d cpu, %d cuda)" % (
                       DEFAULT_REPEATS["cpu"][0], DEFAULT_REPEATS["cuda"][0]))
    p.add_argument("--warmup", type=non_negative_int, default=None,
                   help="untimed rounds after the probe pass (default %d cpu, %d cuda)" % (
                       DEFAULT_REPEATS["cpu"][1], DEFAULT_REPEATS["cuda"][1]))
    p.add_argument("--rho", type=fraction, default=0.02,
                   help="target band activity of each hidden layer (default 0.02)")
    p.add_argument("--b-th", type=fixed_band, default=0.2, help="band half-width B_th (default 0.2)")
    p.add_argument("--surrogate", choices=tuple(SURROGATES), default="atan",
                   help="surrogate of the hidden layers in all three implementations: atan "
                        "(alpha=2, snnTorch's default; default) or fast_sigmoid (slope=100, "
                        "the paper's)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_out", help="output folder (default ./bench_out)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--no-peak", dest="peak", action="store_false",
                   help="CPU: skip the peak memory of a step (a fresh process per "
                        "implementation and configuration: ~3 s each, ~11 s for shd at "
                        "B = 32 on 2 cores)")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv)
    except UsageError as err:
        return usage_error(PROG, err)
    if args.list:
        for name, c in CONFIGS.items():
            shape = "-".join(map(str, c.sizes))
            inp = f"spikes p={c.input_rate}" if c.input_rate is not None else "randn"
            print(f"{name:12s} {shape:22s} T={c.T:<4d} input {inp}")
        for name, members in GROUPS.items():
            print(f"{name:12s} = {', '.join(members)}")
        for name, sizes in bench_csnn.SIZES.items():
            print(f"{name:15s} T, B = {sizes['cpu']} (cpu), {sizes['cuda']} (cuda): snnTorch's "
                  "tutorial CSNN")
        print(f"{'csnn':12s} = {', '.join(bench_csnn.CONFIGS)}")
        return 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        return usage_error(PROG, "--device cuda, but torch sees no CUDA GPU "
                            "(torch.cuda.is_available() is False)")
    device = torch.device(device)
    repeats, warmup = DEFAULT_REPEATS[device.type]
    args.repeats = repeats if args.repeats is None else args.repeats
    args.warmup = warmup if args.warmup is None else args.warmup
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for item in (args.config or []) for n in item.split(",") if n]
    wants_csnn = [n for n in names if n == "csnn" or n in bench_csnn.CONFIGS]
    csnn = [c for n in wants_csnn for c in (bench_csnn.CONFIGS if n == "csnn" else (n,))]
    names = [n for n in names if n not in wants_csnn]
    try:
        configs = (resolve_configs(names, device.type, args.quick)
                   if names or not csnn or args.quick else [])
        if args.num_steps:
            configs = [replace(c, T=args.num_steps) for c in configs]
        writable_dir(args.out)
    except (ValueError, UsageError) as err:
        return usage_error(PROG, err)

    from tqdm import tqdm

    start, load_start = time.perf_counter(), _load_average()
    missing = {}
    if configs and (why := spikingjelly_missing()):
        missing["spikingjelly"] = why
        print(f"spikingjelly: not measured ({why}); {SPIKINGJELLY_PIP} adds it",
              file=sys.stderr)
    methods = [m for m in METHODS if m not in missing]
    rows = []
    with tqdm(total=len(configs) * len(methods), desc="bench", unit="run",
              file=sys.stderr) as progress:
        for cfg in configs:
            rows += bench_config(cfg, args, device, progress, methods)
    csnn_results = [bench_csnn.bench(n, device, args.repeats, args.warmup, args.b_th,
                                     quick=args.quick, peak=args.peak)
                    for n in dict.fromkeys(csnn)]
    conv_layers = (bench_csnn.conv_layer_bench(device, repeats=args.repeats,
                                               **({"T": 4, "B": 4} if args.quick else {}))
                   if csnn else [])
    report = {
        "command": "python -m snntorch_sparse bench " + shlex.join(argv),
        "argv": list(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "settings": {"device": device.type, "repeats": args.repeats, "warmup": args.warmup,
                     "rho": args.rho, "b_th": args.b_th, "seed": args.seed,
                     "methods": methods, "peak": args.peak,
                     "batch_default": args.batch or BATCH[device.type],
                     "input_rates": INPUT_RATES, "threshold": THRESHOLD,
                     "surrogate": "{}({})".format(
                         SURROGATES[args.surrogate][0],
                         ", ".join(f"{k}={v}" for k, v in SURROGATES[args.surrogate][1].items()))},
        "configs": [asdict(c) for c in configs],
        "rows": rows,
        "missing": missing,
        "targets": evaluate_targets(rows, device.type),
        "csnn": csnn_results,
        "conv_layers": conv_layers,
    }
    report["elapsed_s"] = time.perf_counter() - start
    # Other processes on the machine distort CPU timings (most of all snnTorch's many small
    # per-step ops): keep the 1-minute load average at start and end with the results.
    report["machine"]["load_average_1min"] = [load_start, _load_average()]
    stem = os.path.join(args.out, f"bench_{device.type}")
    with open(stem + ".json", "w") as f:
        json.dump(_clean(report), f, indent=1)
    table = (markdown(report) if rows else "") + (
        "\n" + bench_csnn.markdown(csnn_results) + "\n\n"
        + bench_csnn.conv_layer_markdown(conv_layers) + "\n" if csnn_results else "")
    with open(stem + ".md", "w") as f:
        f.write(table)
    if not args.no_plot and rows:
        plot(report, stem + ".png")
    print(table)
    print(f"wrote {stem}.json, {stem}.md" + ("" if args.no_plot or not rows else f", {stem}.png")
          + f" in {report['elapsed_s']:.0f} s")
    return 0
