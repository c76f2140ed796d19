"""``SpikingLinear``: a fully connected layer and a Leaky neuron over the whole sequence."""

import math
import numbers

import torch
from torch import nn

from . import _fused, _rate, surrogate
from .reference import NONE, RESETS
from .surrogate import DEFAULT_B_TH

BACKWARDS = ("sparse", "dense", "rate")


def _surrogate(spike_grad, b_th):
    """``(shape id, p, b_th or None)`` of the compiled surrogate for a ``spike_grad``."""

    if spike_grad is None:
        spike_grad = surrogate.atan(alpha=2.0, b_th=b_th)
    sg = surrogate.sparse(spike_grad, b_th)
    if not isinstance(sg, (surrogate.SparseSurrogate, surrogate.AdaptiveSurrogate)):
        raise ValueError(
            f"spike_grad {spike_grad!r} is not a compiled surrogate shape; SpikingLinear "
            "supports fast_sigmoid, atan, sigmoid, triangular and straight_through (ours or "
            "snnTorch's)")
    return sg


def _as_tensor(value, name, n_out, dtype, device):
    """A scalar or per-neuron ``[n_out]`` float tensor (a copy, never the user's)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=dtype, device=device)
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        if value.numel() == 1 or tuple(value.shape) == (n_out,):
            return value.detach().clone().to(dtype=dtype, device=device).reshape(
                value.shape if value.numel() != 1 else ())
    raise ValueError(f"{name} must be a float or a tensor with 1 or out_features={n_out} "
                     f"elements, got {value!r}")


class SpikingLinear(nn.Module):
    r"""A fully connected layer feeding Leaky neurons, over the whole sequence at once.

    For ``X`` of shape ``[T, B, in_features]``, per neuron and step ``t = 1..T``:

    .. math::

        I[t] = X[t]W^T + b, \qquad
        U[t] = βU[t-1] + I[t] - r[t]θ, \qquad r[t] = H(U[t-1] - θ),

        S[t] = γ\,H(U[t] - θ), \qquad
        \frac{\partial S}{\partial U} = γ\,g(U - θ)\,[|U - θ| < B_{th}]

    (reset "zero": ``U[t] = βU[t-1](1 - r[t]) + I[t]``; "none": no reset term). This is
    exactly an ``nn.Linear`` followed by ``snntorch.Leaky`` run step by step (same weight
    layout and default initialisation, β clamped to [0, 1], surrogate atan(α=2) by
    default), computed as one GEMM for all ``T·B`` rows and one fused LIF kernel.

    ``readout=True`` is the paper's output layer: an integrator with infinite threshold
    that never fires nor resets; the layer returns its membrane ``U`` ``[T, B, out]``.

    Backward ``"sparse"`` (paper eq. 5–12) does work only where it matters:

    * the gradient reaches the neurons only through the band ``|U − θ| < B_th``; the layer
      keeps the band (one bit per element + the in-band ``U − θ``), never the dense
      membrane (except when β is learnable: ``∂U[t]/∂β = U[t−1]``);
    * the input is kept in compact form (CSC by input neuron: int32 row indices, plus
      values unless every nonzero is 1) when at most 25 % of it is nonzero; a denser
      input is kept as is;
    * weight gradient ``∂L/∂W = Σ_{t,b} Δ[t,b]ᵀX[t,b]``, in whichever form counts fewer
      multiply-adds, chosen per call:

      - input-spike form, ``≈ nnz(X)·out`` — over the input's nonzeros;
      - trace form (eq. 9–10), ``≈ in·(T·B + nnz(band))`` — over the active outputs with
        the filtered input ``trace[t] = β·trace[t−1] + X[t]`` recomputed, never stored;
        only valid for a scalar, fixed β, reset subtract/none and no gradient into the
        membrane (never for a readout), and chosen only for a binary (0/1) input, so that
        a NaN/Inf in a graded input shows in ∂W whichever form runs;
      - dense GEMM ``ΔᵀX`` when the input was kept dense;
    * input gradient ``ΔW`` only where the upstream layer's band is set when the input
      is the spike output of one of our layers (a ``SpikingLinear``, ``Leaky``
      sequence) — the upstream multiplies it by its surrogate, 0 outside its band, so
      every value that reaches the loss is exact (eq. 12); dense otherwise. (So a
      retained ``.grad`` of such an input reads 0 outside the upstream band.)

    Host synchronisations, all in the forward: the band size inside the ``spike`` op and,
    when a graph is recorded, the compact input's size ``nnz``, whether its values are
    all 1, and a scalar fixed β read as a number (the trace form needs it).
    None in the backward: the active set of the trace form is sized by the band's value
    count, already known on the host.

    Backward ``"dense"`` runs the same kernels with no band and dense GEMMs, keeping the
    input as is: the fair dense baseline, whose gradients equal snnTorch's per-step
    ``Linear`` + ``Leaky``.

    Backward ``"rate"`` (rate-based backpropagation, DESIGN.md §2, module ``_rate``): the
    same forward, but the layer keeps only the input rate ``x̄ = mean_t X[t]`` ``[B, in]``
    and the eligibility ``e = mean_t κ[t]·dS/dU[t]`` ``[B, out]`` (``κ[t] = 1 + a[t]κ[t−1]``,
    band-limited when ``b_th`` is finite), independent of T. With ``ĝ = Σ_t ∂L/∂S[t]`` and
    ``δ = e ⊙ ĝ``: ``∂W = δᵀx̄``, ``∂b = Σ_b δ``, ``∂X[t] = δW/T`` for every t (a readout:
    ``δ = Σ_t κ[t]·∂L/∂U[t]``). Exact BPTT when inputs and upstream gradients are constant
    in t, an approximation otherwise (a rate code). Its output carries no band tag; a
    learnable β/θ, a ``mem`` requiring grad or a gradient into a hidden membrane raise.

    Args:
        in_features, out_features: as ``nn.Linear``.
        beta: decay, a float or a tensor of 1 or ``out_features`` elements.
        threshold: θ, same forms as ``beta`` (ignored by a readout).
        bias: add a learnable bias (default False).
        spike_grad: surrogate: one of ``snntorch_sparse.surrogate``'s or snnTorch's
            fast_sigmoid/atan/sigmoid/triangular/straight_through; None is atan(α=2).
            Its band is replaced by ``b_th``.
        b_th: band half-width B_th; None means the dense surrogate; ``"auto"`` or an
            :class:`~snntorch_sparse.AdaptiveBand`: the band follows the membrane to keep
            the activity ρ at a target, updated after each training call from the band
            size the forward already counts (module state ``spike_grad.width``).
            Default: :data:`surrogate.DEFAULT_B_TH`.
        reset_mechanism: "subtract", "zero" or "none".
        learn_beta, learn_threshold: make β / θ learnable parameters.
        readout: the infinite-threshold readout (returns the membrane).
        backward: "sparse", "dense" or "rate".
        graded_spikes_factor: γ, a fixed float.
        device, dtype: as ``nn.Linear``.

    Example::

        >>> import torch
        >>> import snntorch_sparse as snn
        >>> hidden = snn.SpikingLinear(700, 200, beta=0.95, b_th=0.2)
        >>> readout = snn.SpikingLinear(200, 20, beta=0.95, readout=True)
        >>> x = (torch.rand(100, 8, 700) < 0.02).float()      # [T, B, in] spikes
        >>> mem = readout(hidden(x))                           # [100, 8, 20]
        >>> mem.max(0).values.sum().backward()
    """

    def __init__(self, in_features, out_features, beta, threshold=1.0, bias=False,
                 spike_grad=None, b_th=DEFAULT_B_TH, reset_mechanism="subtract", learn_beta=False,
                 learn_threshold=False, readout=False, backward="sparse",
                 graded_spikes_factor=1.0, device=None, dtype=None):
        super().__init__()
        if backward not in BACKWARDS:
            raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")
        if backward == "rate" and (learn_beta or learn_threshold):
            raise ValueError("backward='rate' defines no gradient for a learnable beta or "
                             "threshold: use learn_beta=learn_threshold=False, or "
                             "backward='sparse'/'dense'")
        if reset_mechanism not in RESETS:
            raise ValueError(f"reset_mechanism must be one of {RESETS}, got "
                             f"{reset_mechanism!r}")
        if readout and learn_threshold:
            raise ValueError("a readout has an infinite threshold: learn_threshold must be "
                             "False")
        for name, n in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                raise ValueError(f"{name} must be a positive int, got {n!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

        fdtype = self.weight.dtype
        beta = _as_tensor(beta, "beta", out_features, fdtype, self.weight.device)
        threshold = _as_tensor(threshold, "threshold", out_features, fdtype,
                               self.weight.device)
        if learn_beta:
            self.beta = nn.Parameter(beta)
        else:
            self.register_buffer("beta", beta)
        if learn_threshold:
            self.threshold = nn.Parameter(threshold)
        else:
            self.register_buffer("threshold", threshold)
        self.spike_grad = _surrogate(spike_grad, b_th)
        self.reset_mechanism = reset_mechanism
        self.graded_spikes_factor = float(graded_spikes_factor)
        self.readout = bool(readout)
        self.backward = backward
        self._dw_form = None  # tests force "spikes" / "trace"; None chooses per call
        self._report = {}  # what the last backward did (tests)

    @property
    def b_th(self):
        """Band setting of the surrogate (a float, ``None``: dense, or an
        :class:`~snntorch_sparse.AdaptiveBand`, whose current width is
        ``spike_grad.b_th``). Setting it re-bands ``spike_grad`` and is validated like the
        constructor's ``b_th``."""
        return self.spike_grad.band

    @b_th.setter
    def b_th(self, value):
        surrogate.assign_spike_grad(self, self.spike_grad.with_band(value))

    def reset_parameters(self):
        """``nn.Linear``'s default initialisation (Kaiming-uniform weight and bias)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def _config(self):
        sg = self.spike_grad
        width = sg.b_th  # an adaptive band's current width
        b_th = math.inf if (width is None or self.backward == "dense") else width
        nrn = _fused.Neuron(self.graded_spikes_factor,
                            NONE if self.readout else RESETS.index(self.reset_mechanism),
                            sg.shape, sg.p, b_th)
        return _fused.LinearConfig(nrn, sparse=self.backward == "sparse",
                                   readout=self.readout, dw_form=self._dw_form,
                                   report=self._report)

    def _check(self, x, mem):
        w = self.weight
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a tensor [T, B, {self.in_features}], got "
                            f"{type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.in_features:
            raise ValueError(f"input must have shape [T, B, in_features={self.in_features}] "
                             f"(time first), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("input must hold at least one time step, got T = 0")
        if not x.is_floating_point():
            raise TypeError(f"input must be floating point (spikes as float), got {x.dtype}")
        if x.device != w.device:
            raise RuntimeError(f"input is on {x.device} but the layer's weight is on "
                               f"{w.device}")
        if mem is not None:
            step = (x.shape[1], self.out_features)
            if not isinstance(mem, torch.Tensor) or tuple(mem.shape) != step:
                raise ValueError(f"mem must be a tensor of shape [B, out_features] = "
                                 f"{list(step)}, got "
                                 f"{tuple(mem.shape) if isinstance(mem, torch.Tensor) else mem!r}")
            if mem.device != w.device:
                raise RuntimeError(f"mem is on {mem.device} but the layer's weight is on "
                                   f"{w.device}")

    def _run(self, x, mem):
        """``(output, membrane)`` over the sequence; the output is the spikes (membrane
        for a readout)."""
        self._check(x, mem)
        cfg = self._config()
        if self.backward == "rate":
            return _rate.rate_spiking_linear(x, self.weight, self.bias, self.beta.clamp(0, 1),
                                             self.threshold, mem, cfg.neuron, self.readout)
        out = _fused.spiking_linear(x, self.weight, self.bias, self.beta.clamp(0, 1),
                                    self.threshold, mem, cfg)
        if (cfg.neuron.banded and not self.readout and getattr(self.spike_grad, "training", True)
                and out[0].requires_grad and not torch.compiler.is_compiling()):
            self.spike_grad.observe(self._report["in_band"], out[0].numel())
        return out

    def forward(self, x, mem=None):
        """``x [T, B, in]`` → spikes ``[T, B, out]`` (readout: membrane ``[T, B, out]``).

        ``mem`` is the initial membrane ``[B, out]`` (default zeros).
        """
        return self._run(x, mem)[0]

    def extra_repr(self):
        return (f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, "
                f"spike_grad={self.spike_grad!r}, reset_mechanism={self.reset_mechanism!r}, "
                f"readout={self.readout}, backward={self.backward!r}")
