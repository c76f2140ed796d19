"""The experiment of *Sparse Spiking Gradient Descent* (Perez-Nieves & Goodman, 2021) as
library code: the network, the loss with activity regularisers, the per-dataset settings
(supplementary E.3–E.6) and a training loop that records activity, time and memory.

Network (E.3): input → two hidden :class:`~snntorch_sparse.SpikingLinear` layers (same
width) → an infinite-threshold readout ``SpikingLinear(readout=True)``. Logits are the
readout membrane's maximum over time (its sum over time for SHD). Loss (E.4)::

    L = CE(logits, y) + Σ_hidden (1/B) Σ_b (L_low[b] + L_up[b])
    L_low[b] = λ_low/N · Σ_i max(0, ν_low − ζ[b, i])²       ζ[b, i] = Σ_t S[t, b, i]
    L_up[b]  = λ_up · max(0, (1/N) Σ_i ζ[b, i] − ν_up)

(The supplementary prints both regularisers with a leading minus sign; as penalties they
are added, which is what its authors' code does.)

Example::

    from snntorch_sparse import paper
    result = paper.train(paper.Config(dataset="digits", backward="sparse", epochs=2))
    print(result["test_accuracy"], result["summary"]["activity"])
"""

import contextlib
import copy
import dataclasses
import math
import time
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import data, metrics
from . import surrogate as _surrogate
from .spiking_linear import SpikingLinear

#: Training settings per dataset (supplementary E.6). ``digits`` is not in the paper: it
#: is the small offline default (fewer epochs, larger learning rate, smaller batch), keeping
#: the paper's neuron, surrogate and regularisers. Its 8×8 images give only ~25 input
#: spikes per sample, so its weights start ``init_gain`` = 4 times wider than E.3's, which
#: puts the hidden activity at the paper's 1–2 % instead of ~0.
PARAMS = {
    "fmnist": dict(hidden=200, epochs=100, batch_size=256, tau_hidden_ms=10.0,
                   tau_readout_ms=10.0, lr=2e-4, nu_up=1.0, logits="max", init_gain=1.0),
    "nmnist": dict(hidden=200, epochs=100, batch_size=256, tau_hidden_ms=10.0,
                   tau_readout_ms=10.0, lr=2e-4, nu_up=1.0, logits="max", init_gain=1.0),
    "shd": dict(hidden=200, epochs=200, batch_size=256, tau_hidden_ms=10.0,
                tau_readout_ms=20.0, lr=1e-3, nu_up=10.0, logits="sum", init_gain=1.0),
    "digits": dict(hidden=200, epochs=12, batch_size=64, tau_hidden_ms=10.0,
                   tau_readout_ms=10.0, lr=2e-3, nu_up=1.0, logits="max", init_gain=4.0),
}
#: Settings shared by every dataset (E.5–E.6): V_th, B_th, surrogate slope (the paper's
#: "β" of g(V) = 1/(β|V − V_th| + 1)²), Adam betas and the regulariser constants.
COMMON = dict(threshold=1.0, b_th=0.2, slope=100.0, adam_betas=(0.9, 0.999),
              lambda_low=100.0, nu_low=1e-3, lambda_up=0.06)

LAYER_NAMES = ("hidden1", "hidden2", "readout")


# ----------------------------------------------------------------------- the model
class PaperNet(nn.Module):
    r"""Input → two hidden ``SpikingLinear`` → ``SpikingLinear(readout=True)``.

    Hidden neurons: :math:`U[t] = βU[t-1] + X[t]W^T - r[t]θ`, spikes
    :math:`S = H(U - θ)`, surrogate :math:`g(u) = 1/(k|u| + 1)^2` inside the band
    :math:`|u| < B_{th}` (E.5). The readout has the same leak and no threshold.
    Weights are drawn from :math:`\mathcal{U}(-a/\sqrt{N}, a/\sqrt{N})`, N = fan-in,
    a = ``init_gain`` (E.3: a = 1; the supplementary's "√N" lost its fraction bar).

    Args:
        num_inputs, hidden, num_classes: layer widths.
        beta_hidden, beta_readout: decays :math:`β = e^{-Δt/τ}`.
        b_th: band half-width (also used to measure activity in dense mode).
        backward: "sparse", "dense" or "rate", or a sequence of three (one per layer).
        threshold, slope: :math:`θ` and the surrogate slope k.
        init_gain: a, the width of the initial weights in units of 1/√fan-in.

    ``forward(x)`` takes ``x [T, B, num_inputs]`` and returns the readout membrane
    ``[T, B, num_classes]``; :meth:`run` also returns the hidden spikes and membranes.

    Example::

        >>> net = PaperNet(64, 100, 10, beta_hidden=0.9, beta_readout=0.9)
        >>> mem = net((torch.rand(30, 8, 64) < 0.05).float())      # [30, 8, 10]
    """

    def __init__(self, num_inputs, hidden, num_classes, beta_hidden, beta_readout,
                 b_th=COMMON["b_th"], backward="sparse", threshold=COMMON["threshold"],
                 slope=COMMON["slope"], init_gain=1.0):
        super().__init__()
        modes = [backward] * 3 if isinstance(backward, str) else list(backward)
        if len(modes) != 3:
            raise ValueError(f"backward must be one mode or three (one per layer), got "
                             f"{backward!r}")
        sg = _surrogate.fast_sigmoid(slope=slope, b_th=b_th)
        widths = (num_inputs, hidden, hidden)
        self.hidden = nn.ModuleList(
            SpikingLinear(n_in, hidden, beta=beta_hidden, threshold=threshold, spike_grad=sg,
                          b_th=b_th, backward=mode)
            for n_in, mode in zip(widths[:2], modes[:2]))
        self.readout = SpikingLinear(hidden, num_classes, beta=beta_readout, spike_grad=sg,
                                     b_th=b_th, readout=True, backward=modes[2])
        for layer in self.layers:
            bound = init_gain / math.sqrt(layer.in_features)
            nn.init.uniform_(layer.weight, -bound, bound)

    @property
    def layers(self):
        return [*self.hidden, self.readout]

    def run(self, x, kept=None):
        """``(readout membrane [T, B, C], hidden spikes [list], hidden membranes [list])``.

        ``kept``: a list to which the bytes each layer keeps for backward are appended
        (:func:`metrics.saved_bytes`), first layer first.
        """
        spikes, mems = [], []
        for layer in self.layers:
            with metrics.saved_bytes() if kept is not None else contextlib.nullcontext() as k:
                out, mem = layer._run(x, None)
            if kept is not None:
                kept.append(k["bytes"])
            if layer is self.readout:
                return out, spikes, mems
            spikes.append(out)
            mems.append(mem)
            x = out

    def forward(self, x):
        return self.run(x)[0]


def logits_of(readout_mem, mode="max"):
    """Logits from the readout membrane ``[T, B, C]``: max over time (or sum, SHD)."""
    if mode == "max":
        return readout_mem.max(dim=0).values
    if mode == "sum":
        return readout_mem.sum(dim=0)
    raise ValueError(f"logits mode must be 'max' or 'sum', got {mode!r}")


def paper_loss(readout_mem, hidden_spikes, labels, logits="max",
               lambda_low=COMMON["lambda_low"], nu_low=COMMON["nu_low"],
               lambda_up=COMMON["lambda_up"], nu_up=1.0):
    r"""Cross-entropy plus the lower and upper activity regularisers (supplementary E.4).

    .. math::

        L = \mathrm{CE} + \sum_{l}\frac{1}{B}\sum_b\Big[
            \frac{λ_{low}}{N}\sum_i \max(0, ν_{low} - ζ^l_{b,i})^2
            + λ_{up}\max\big(0, \tfrac{1}{N}\sum_i ζ^l_{b,i} - ν_{up}\big)\Big],
        \qquad ζ^l_{b,i} = \sum_t S^l[t, b, i]

    Args:
        readout_mem: ``[T, B, C]``; hidden_spikes: list of ``[T, B, N_l]``;
        labels: ``[B]`` class indices; logits: "max" or "sum" (see :func:`logits_of`).

    Returns:
        ``(loss, parts)`` with ``parts = {"ce", "low", "up"}`` (detached floats).

    Example::

        >>> mem = torch.randn(5, 2, 3)
        >>> spk = [torch.zeros(5, 2, 4)]
        >>> loss, parts = paper_loss(mem, spk, torch.tensor([0, 2]))
    """
    ce = F.cross_entropy(logits_of(readout_mem, logits), labels)
    low = ce.new_zeros(())
    up = ce.new_zeros(())
    for spk in hidden_spikes:
        count = spk.sum(dim=0)  # ζ [B, N]
        low = low + lambda_low * (nu_low - count).clamp(min=0).pow(2).mean(dim=1).mean()
        up = up + lambda_up * (count.mean(dim=1) - nu_up).clamp(min=0).mean()
    parts = {"ce": ce.item(), "low": low.item(), "up": up.item()}
    return ce + low + up, parts


# ---------------------------------------------------------------------- the config
@dataclasses.dataclass
class Config:
    """One training run. ``None`` fields take the dataset's values from :data:`PARAMS`
    (and :data:`data.DATASETS` for T and Δt). ``backward`` is "sparse", "dense", "rate" or
    three modes (one per layer). ``max_batches`` caps the training batches per epoch
    (tests). ``grad_scale_T``: divide the loss, hence every gradient, by T — the rate-based
    backpropagation authors' training choice (their code's loss/T), off by default; with
    Adam it changes little beyond the effective ε."""

    dataset: str = "digits"
    data_dir: Optional[str] = None
    device: str = "cpu"
    backward: Union[str, Sequence[str]] = "sparse"
    b_th: Union[float, str] = COMMON["b_th"]
    seed: int = 0
    hidden: Optional[int] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    num_steps: Optional[int] = None
    max_batches: Optional[int] = None
    num_workers: int = 0
    progress: bool = False
    label: str = ""
    grad_scale_T: bool = False

    def resolved(self):
        """A copy with every ``None`` filled in from the paper's table; validates."""
        if self.dataset not in PARAMS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of "
                             f"{', '.join(PARAMS)}")
        if self.b_th is None:
            raise ValueError('b_th must be a positive number, "auto" or an AdaptiveBand, '
                             "got None")
        _surrogate._check_b_th(self.b_th)
        table = PARAMS[self.dataset]
        out = copy.copy(self)
        for name in ("hidden", "epochs", "batch_size", "lr"):
            if getattr(out, name) is None:
                setattr(out, name, table[name])
        if out.num_steps is None:
            out.num_steps = data.DATASETS[self.dataset]["num_steps"]
        for name in ("hidden", "epochs", "batch_size", "num_steps"):
            value = getattr(out, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if out.max_batches is not None and (isinstance(out.max_batches, bool) or not isinstance(
                out.max_batches, int) or out.max_batches < 1):
            raise ValueError(f"max_batches must be None or a positive integer, got "
                             f"{out.max_batches!r}")
        if out.device not in ("cpu", "cuda") and not str(out.device).startswith("cuda:"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {out.device!r}")
        if str(out.device).startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but no CUDA GPU is available "
                               "(torch.cuda.is_available() is False)")
        return out

    def network(self, num_inputs, num_classes):
        """The :class:`PaperNet` for this config (call on a resolved config)."""
        table = PARAMS[self.dataset]
        dt = data.DATASETS[self.dataset]["dt_ms"]
        return PaperNet(num_inputs, self.hidden, num_classes,
                        beta_hidden=math.exp(-dt / table["tau_hidden_ms"]),
                        beta_readout=math.exp(-dt / table["tau_readout_ms"]),
                        b_th=self.b_th, backward=self.backward, init_gain=table["init_gain"])


# --------------------------------------------------------------------- measurement
class _BackwardClock:
    """Per-layer backward time from gradient hooks: layer ``l``'s backward runs from the
    moment the gradient of its output is complete to the moment the gradient of its
    input (the layer below's output) is; the first layer's ends with the backward."""

    def __init__(self, cuda):
        self.cuda = cuda
        self.stamps = {}

    def now(self):
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def watch(self, outputs):
        """``outputs``: the layers' outputs, first layer first."""
        for i, out in enumerate(outputs):
            if out.requires_grad:
                out.register_hook(lambda grad, i=i: self._stamp(i))

    def _stamp(self, i):
        self.stamps.setdefault(i, self.now())  # returns None: the gradient is unchanged

    def layer_ms(self, n_layers, end):
        """Backward ms of each layer; ``end`` is when the whole backward finished."""
        out = []
        for i in range(n_layers):
            start, stop = self.stamps.get(i), self.stamps.get(i - 1, end) if i else end
            out.append(math.nan if start is None or stop is None else 1e3 * (stop - start))
        return out


def train_step(model, optimizer, x, y, cfg):
    """One optimisation step with measurements. Returns a dict of per-batch records:
    loss parts, accuracy, per-layer activity (eq. 13), forward/backward time (ms, whole
    network and per layer), bytes kept for backward per layer and peak CUDA memory."""
    clock = _BackwardClock(x.is_cuda)
    table = PARAMS[cfg.dataset]
    optimizer.zero_grad(set_to_none=True)
    kept = []
    with metrics.peak_memory(x.device) as peak:
        t0 = clock.now()
        out, spikes, mems = model.run(x, kept=kept)
        loss, parts = paper_loss(out, spikes, y, logits=table["logits"], nu_up=table["nu_up"])
        if cfg.grad_scale_T:
            loss = loss / x.shape[0]
        t1 = clock.now()
        # Measured outside the timed regions; the membranes are then released, so that
        # neither mode holds them during its backward.
        activity = [metrics.activity(m, layer.threshold, layer.spike_grad.b_th)
                    for m, layer in zip(mems, model.hidden)]
        correct = (logits_of(out.detach(), table["logits"]).argmax(1) == y).sum().item()
        del mems
        outputs = [*spikes, out]
        clock.watch(outputs)
        t2 = clock.now()
        loss.backward()
        t3 = clock.now()
    optimizer.step()
    return {
        "loss": loss.item(), **parts, "correct": correct, "n": y.numel(),
        "activity": activity,
        "forward_ms": 1e3 * (t1 - t0), "backward_ms": 1e3 * (t3 - t2),
        "backward_ms_layers": clock.layer_ms(len(outputs), t3),
        "saved_bytes_layers": kept, "saved_bytes": sum(kept),
        "peak_bytes": peak["extra"],
    }


@torch.no_grad()
def evaluate(model, batches, logits="max", device="cpu"):
    """Accuracy of ``model`` over ``(x [T, B, N], y)`` batches."""
    model.eval()
    correct = total = 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        pred = logits_of(model(x), logits).argmax(1)
        correct += (pred == y).sum().item()
        total += y.numel()
    model.train()
    return correct / max(total, 1)


def _check_batch(x, num_inputs):
    if x.dim() != 3 or x.shape[2] != num_inputs:
        raise data.DataError(f"data batches must be spikes [T, B, {num_inputs}], got "
                             f"{tuple(x.shape)}")


def _mean(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def summarize(history, skip=1):
    """Means over the recorded batches, the first ``skip`` (warm-up) left out when more
    remain: activity per hidden layer, times per layer and bytes kept for backward."""
    rows = history[skip:] if len(history) > skip else history
    n_layers = len(rows[0]["backward_ms_layers"])
    n_hidden = len(rows[0]["activity"])
    peaks = [r["peak_bytes"] for r in rows if r["peak_bytes"] is not None]
    return {
        "activity": [_mean([r["activity"][i] for r in rows]) for i in range(n_hidden)],
        "forward_ms": _mean([r["forward_ms"] for r in rows]),
        "backward_ms": _mean([r["backward_ms"] for r in rows]),
        "backward_ms_layers": [_mean([r["backward_ms_layers"][i] for r in rows])
                               for i in range(n_layers)],
        "saved_bytes": _mean([r["saved_bytes"] for r in rows]),
        "saved_bytes_layers": [_mean([r["saved_bytes_layers"][i] for r in rows])
                               for i in range(n_layers)],
        "peak_bytes": max(peaks) if peaks else None,
        "batches": len(rows),
    }


def train(config, datasets=None):
    """Train the paper's network; returns a JSON-ready results dict.

    Args:
        config: a :class:`Config` (or a dict of its fields).
        datasets: optional ``(train, test)`` datasets (default: ``data.load`` of
            ``config.dataset``), e.g. to share them between runs.

    Returns:
        ``{"config", "test_accuracy", "epochs": [per-epoch means], "history":
        [per-batch records, see :func:`train_step`], "summary": :func:`summarize`}``.
        Runs with the same seed start from the same weights and see the same batches.
    """
    if isinstance(config, dict):
        config = Config(**config)
    cfg = config.resolved()
    device = torch.device(cfg.device)
    table = PARAMS[cfg.dataset]
    if datasets is None:
        datasets = data.load(cfg.dataset, data_dir=cfg.data_dir, num_steps=cfg.num_steps)
    train_set, test_set = datasets
    info = data.DATASETS[cfg.dataset]

    torch.manual_seed(cfg.seed)
    model = cfg.network(info["num_inputs"], info["num_classes"]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=COMMON["adam_betas"])
    train_loader = data.loader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed,
                               num_workers=cfg.num_workers)
    test_loader = data.loader(test_set, cfg.batch_size, num_workers=cfg.num_workers)

    history, epochs = [], []
    for epoch in range(cfg.epochs):
        n_batches = len(train_loader) if cfg.max_batches is None else min(
            cfg.max_batches, len(train_loader))
        bar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_batches, desc=f"{cfg.label or cfg.backward} "
                       f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
        rows = []
        for i, (x, y) in enumerate(train_loader):
            if i >= n_batches:
                break
            _check_batch(x, info["num_inputs"])
            rec = train_step(model, optimizer, x.to(device), y.to(device), cfg)
            rec["epoch"] = epoch
            rows.append(rec)
            if bar is not None:
                bar.update()
                bar.set_postfix(loss=f"{rec['loss']:.3f}",
                                act=f"{100 * _mean(rec['activity']):.2f}%")
        test_acc = evaluate(model, test_loader, table["logits"], device)
        if bar is not None:
            bar.close()
        history.extend(rows)
        epochs.append({
            "epoch": epoch,
            "loss": _mean([r["loss"] for r in rows]),
            "train_accuracy": sum(r["correct"] for r in rows) / sum(r["n"] for r in rows),
            "test_accuracy": test_acc,
            "activity": [_mean([r["activity"][k] for r in rows])
                         for k in range(len(rows[0]["activity"]))],
            # per layer, B_th at the epoch's end and rho seen by its training calls
            "bands": [{**r, "band": repr(r["band"])} for r in metrics.band_report(model)],
        })
    return {
        "config": {**dataclasses.asdict(cfg),  # JSON-ready: an AdaptiveBand as its repr
                   "b_th": cfg.b_th if isinstance(cfg.b_th, (int, float, str)) else repr(cfg.b_th)},
        "test_accuracy": epochs[-1]["test_accuracy"],
        "epochs": epochs,
        "history": history,
        "summary": summarize(history),
    }
