"""The shared core of the fused sequence layers: *currents → neuron scan → band → backward*.

A fused layer maps ``X [T, B, ...]`` to currents ``I[t] = f(X[t]; W)`` (a Linear, a
convolution), runs the LIF scan over all ``T`` steps, keeps the band
``{|U − θ| < B_th}`` and trains with one of three backward strategies (DESIGN.md §2):

* ``"dense"``  — BPTT with the full surrogate (the fair baseline: snnTorch's gradient);
* ``"sparse"`` — BPTT through the band only, compact saved state, sparse ∂W / ∂X;
* ``"rate"``   — rate-based backpropagation, ``O(B·N)`` saved state independent of T.

:class:`SpikingLayer` holds everything that is the neuron's — β, θ, surrogate and band,
reset, readout, strategy, the adaptive band's bookkeeping — so that a layer file only
says what its currents are: its weights, its input check, and which fused Function
runs each strategy (:meth:`SpikingLayer._forward_fused`, :meth:`SpikingLayer._forward_rate`).
"""

import numbers

import torch
from torch import nn

from . import _fused, surrogate
from .reference import NONE, RESETS

BACKWARDS = ("sparse", "dense", "rate")


def compiled_surrogate(spike_grad, b_th):
    """The band-limited compiled form of ``spike_grad`` (None: atan(α=2)), or ValueError."""
    if spike_grad is None:
        spike_grad = surrogate.atan(alpha=2.0, b_th=b_th)
    sg = surrogate.sparse(spike_grad, b_th)
    if not isinstance(sg, (surrogate.SparseSurrogate, surrogate.AdaptiveSurrogate)):
        raise ValueError(
            f"spike_grad {spike_grad!r} is not a compiled surrogate shape; the fused layers "
            "support fast_sigmoid, atan, sigmoid, triangular and straight_through (ours or "
            "snnTorch's)")
    return sg


def neuron_tensor(value, name, n, what, dtype, device):
    """A scalar or per-neuron ``[n]`` float tensor (a copy, never the user's)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=dtype, device=device)
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        if value.numel() == 1 or tuple(value.shape) == (n,):
            return value.detach().clone().to(dtype=dtype, device=device).reshape(
                value.shape if value.numel() != 1 else ())
    raise ValueError(f"{name} must be a float or a tensor with 1 or {what}={n} elements, "
                     f"got {value!r}")


def positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class SpikingLayer(nn.Module):
    """Base of the fused layers: the neuron, the band and the backward strategy.

    Subclasses create ``self.weight`` (and ``self.bias``) before calling
    :meth:`_init_neuron`, and implement :meth:`_check`, :meth:`_forward_fused` and
    :meth:`_forward_rate`. ``n_neurons`` is the size of a per-neuron β/θ (features or
    channels); :meth:`_neuron_param` gives it the shape that broadcasts over one step.
    """

    def _init_neuron(self, n_neurons, what, beta, threshold, spike_grad, b_th,
                     reset_mechanism, learn_beta, learn_threshold, readout, backward,
                     graded_spikes_factor):
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
        dtype, device = self.weight.dtype, self.weight.device
        beta = neuron_tensor(beta, "beta", n_neurons, what, dtype, device)
        threshold = neuron_tensor(threshold, "threshold", n_neurons, what, dtype, device)
        if learn_beta:
            self.beta = nn.Parameter(beta)
        else:
            self.register_buffer("beta", beta)
        if learn_threshold:
            self.threshold = nn.Parameter(threshold)
        else:
            self.register_buffer("threshold", threshold)
        self.spike_grad = compiled_surrogate(spike_grad, b_th)
        self.reset_mechanism = reset_mechanism
        self.graded_spikes_factor = float(graded_spikes_factor)
        self.readout = bool(readout)
        self.backward = backward
        self._dw_form = None  # tests force "spikes" / "trace"; None chooses per call
        self._report = {}  # what the last call did (the band size, the ∂W form; tests)

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

    def _config(self):
        sg = self.spike_grad
        width = sg.b_th  # an adaptive band's current width
        nrn = _fused.Neuron.of(self.graded_spikes_factor,
                               NONE if self.readout else RESETS.index(self.reset_mechanism),
                               sg.shape, sg.p, None if self.backward == "dense" else width)
        return _fused.LinearConfig(nrn, sparse=self.backward == "sparse",
                                   readout=self.readout, dw_form=self._dw_form,
                                   report=self._report)

    def _neuron_param(self, t):
        """β or θ shaped to broadcast over one step's trailing dims (default: as is)."""
        return t

    def _run(self, x, mem, membrane=True):
        """``(output, membrane)`` over the sequence; the output is the spikes (membrane
        for a readout). ``membrane=False``: the caller does not want the membrane, which
        a layer may then return as None instead of forming it."""
        self._check(x, mem)
        cfg = self._config()
        cfg.membrane = membrane
        beta = self._neuron_param(self.beta.clamp(0, 1))
        theta = self._neuron_param(self.threshold)
        if self.backward == "rate":
            return self._forward_rate(x, beta, theta, mem, cfg)
        out = self._forward_fused(x, beta, theta, mem, cfg)
        if (cfg.neuron.banded and not self.readout and getattr(self.spike_grad, "training", True)
                and out[0].requires_grad and not torch.compiler.is_compiling()):
            self.spike_grad.observe(self._report["in_band"], out[0].numel())
        return out

    def forward(self, x, mem=None):
        """``x [T, B, ...]`` → spikes (readout: the membrane), ``[T, B, ...]``.

        ``mem`` is the initial membrane, one step's shape (default zeros).
        """
        return self._run(x, mem, membrane=False)[0]

    # ----------------------------------------------------------- shared input checks
    def _check_sequence(self, x, valid_shape, expect):
        """``x`` is a floating-point tensor ``expect`` (``valid_shape(x)``), ``T ≥ 1``, on
        the weight's device."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a tensor {expect}, got {type(x).__name__}")
        if not valid_shape(x):
            raise ValueError(f"input must have shape {expect} (time first), got "
                             f"{tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("input must hold at least one time step, got T = 0")
        if not x.is_floating_point():
            raise TypeError(f"input must be floating point (spikes as float), got {x.dtype}")
        if x.device != self.weight.device:
            raise RuntimeError(f"input is on {x.device} but the layer's weight is on "
                               f"{self.weight.device}")

    def _check_mem(self, mem, step, expect):
        if mem is None:
            return
        if not isinstance(mem, torch.Tensor) or tuple(mem.shape) != tuple(step):
            raise ValueError(f"mem must be a tensor of shape {expect} = {list(step)}, got "
                             f"{tuple(mem.shape) if isinstance(mem, torch.Tensor) else mem!r}")
        if mem.device != self.weight.device:
            raise RuntimeError(f"mem is on {mem.device} but the layer's weight is on "
                               f"{self.weight.device}")

    def _neuron_repr(self):
        return (f"spike_grad={self.spike_grad!r}, reset_mechanism={self.reset_mechanism!r}, "
                f"readout={self.readout}, backward={self.backward!r}")
