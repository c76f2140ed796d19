"""``SpikingLinear``: a fully connected layer and a Leaky neuron over the whole sequence."""

import math

import torch
from torch import nn

from . import _fused, _rate
from ._layer import BACKWARDS, SpikingLayer, positive_int
from .surrogate import DEFAULT_B_TH

__all__ = ["SpikingLinear", "BACKWARDS"]


class SpikingLinear(SpikingLayer):
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
        a NaN/Inf in a graded input shows in ∂W whichever form runs; where the
        input-spike form runs as one op with the neuron scan (CPU, see below), only when
        its count is 5× smaller (the measured break-even);
      - for an input kept dense: the trace form over that input (``dw_trace_dense``, the
        same validity, and only for a finite input) when ``8·nnz(band) < T·B·out`` (the
        GEMM runs ~8× more multiply-adds per second), else the dense GEMM ``ΔᵀX``;
      - on a GPU the trace forms only when asked for: their kernel lost to the GEMM 13×
        on an H200 (Open Neuromorphic 4096 shape, docs/benchmarks.md);
    * input gradient ``ΔW`` only where the upstream layer's band is set when the input
      is the spike output of one of our layers (a ``SpikingLinear``, ``Leaky``
      sequence) — the upstream multiplies it by its surrogate, 0 outside its band, so
      every value that reaches the loss is exact (eq. 12); dense otherwise. (So a
      retained ``.grad`` of such an input reads 0 outside the upstream band.)

    Forward, sparse mode on the CPU: when the input is kept compact for backward (at most
    25 % nonzero; 10 % for a layer narrower than 64 outputs — the measured break-even
    against the GEMM; in inference 10 %, and never for a narrow layer), the currents are
    summed over the compact input's nonzeros only (event-driven,
    ``ops.linear_fwd_events``, ≈ ``nnz(X)·out`` multiply-adds; the dense input is not
    read again) — the GEMM's values up to the order of the sums. For a hidden layer
    (not a readout) whose membrane is not asked for, with reset subtract/none, fixed β
    and θ and a finite band, that forward is one op (``ops.linear_lif_events``): currents,
    membrane, spikes and band in one sweep over time, the ``[T·B, out]`` currents and
    membrane never formed, and the spikes' own compact form recorded on the output, which
    the next ``SpikingLinear`` takes instead of compacting them again. Its backward is then
    one op too, per time chunk, when ∂W goes by the input's nonzeros and the input
    gradient (if any) is band-limited (``ops.linear_lif_bwd``: the reverse scan adds each
    row's ∂W, ∂b and masked ∂X terms as it reaches them, Δ is never stored).

    Host synchronisations, all in the forward: the band size inside the ``spike`` op and,
    when a graph is recorded, the compact input's size ``nnz``, whether its values are
    all 1, and on the CPU a scalar fixed β read as a number (the trace form needs it)
    and, for a dense input where the trace form would pay, whether its sum is finite.
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
        time_chunk: backward "sparse"/"dense" run the sequence in chunks of this many
            time steps (rounded to whole words of packed bits): the forward carries the
            membrane across chunks and the backward runs them in reverse carrying the
            gradient, so besides the input and the outputs only one chunk's temporaries
            are alive — peak memory bounded in T, results equal to the unchunked layer
            (Δ bit for bit; ∂W summed chunk by chunk, so equal up to rounding). ``"auto"``
            (default): the whole sequence when a ``[T·B, out_features]`` tensor holds at
            most 96 MiB (chunking costs time: copies and fresh memory per chunk), else
            chunks of 40 MiB; None: always whole. The trace form of
            ∂W runs unchunked for a compact input; for a dense input it is one walk over
            the whole input after the chunks.
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
                 graded_spikes_factor=1.0, time_chunk="auto", device=None, dtype=None):
        super().__init__()
        if not (time_chunk is None or time_chunk == "auto" or (
                isinstance(time_chunk, int) and not isinstance(time_chunk, bool)
                and time_chunk > 0)):
            raise ValueError(f'time_chunk must be a positive int (steps), "auto" or None, got '
                             f'{time_chunk!r}')
        self.time_chunk = time_chunk
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()
        self._init_neuron(out_features, "out_features", beta, threshold, spike_grad, b_th,
                          reset_mechanism, learn_beta, learn_threshold, readout, backward,
                          graded_spikes_factor)

    def reset_parameters(self):
        """``nn.Linear``'s default initialisation (Kaiming-uniform weight and bias)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def _check(self, x, mem):
        self._check_sequence(x, lambda x: x.dim() == 3 and x.shape[-1] == self.in_features,
                             f"[T, B, in_features={self.in_features}]")
        self._check_mem(mem, (x.shape[1], self.out_features), "[B, out_features]")

    def _config(self):
        cfg = super()._config()
        cfg.time_chunk = self.time_chunk
        return cfg

    def _forward_fused(self, x, beta, theta, mem, cfg):
        return _fused.spiking_linear(x, self.weight, self.bias, beta, theta, mem, cfg)

    def _forward_rate(self, x, beta, theta, mem, cfg):
        return _rate.rate_spiking_layer(x, self.weight, self.bias, beta, theta, mem,
                                        cfg.neuron, self.readout)

    def extra_repr(self):
        return (f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, "
                + self._neuron_repr())
