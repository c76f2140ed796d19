"""What the drop-in neurons (:class:`~snntorch_sparse.Leaky`,
:class:`~snntorch_sparse.Synaptic`) share: the band-limited surrogate behind ``b_th``
and the bookkeeping around their fused sequences."""

import contextlib

import torch

from . import _fused, surrogate


class BandedNeuron:
    """Mixin, listed before the snnTorch neuron it extends: ``b_th`` and its surrogate.

    The snnTorch forward stays as it is; only ``spike_grad`` is the compiled, band-limited
    surrogate (paper eq. 7–8, 20): ``∂S/∂U = g(U − θ)·[|U − θ| < b_th]``.
    """

    @staticmethod
    def _banded_surrogate(spike_grad, surrogate_disable, b_th, output):
        """``(spike_grad, b_th)`` for the snnTorch constructor and :attr:`b_th`.

        ``spike_grad=None`` is snnTorch's default ``atan(alpha=2)`` restricted to the band;
        a given one goes through :func:`surrogate.sparse` (the layer's band wins).
        """
        b_th = surrogate.band_for(surrogate._check_b_th(b_th), output)
        if surrogate_disable:
            pass  # snnTorch ignores spike_grad then; so do we
        elif spike_grad is None:
            spike_grad = surrogate.atan(alpha=2.0, b_th=b_th)
        else:
            spike_grad = surrogate.sparse(spike_grad, b_th)
        return spike_grad, b_th

    @property
    def b_th(self):
        """Band half-width of the surrogate (``None``: dense). Setting it re-bands
        ``spike_grad``."""
        return self._b_th

    @b_th.setter
    def b_th(self, value):
        value = surrogate._check_b_th(value)
        if not self.surrogate_disable:
            surrogate.assign_spike_grad(self, surrogate.sparse(self.spike_grad, value))
        self._b_th = value

    def extra_repr(self):
        # An adaptive surrogate is a submodule: the module repr prints it on its own line.
        sg = "" if "spike_grad" in self._modules else f", spike_grad={self.spike_grad!r}"
        return f"b_th={self.b_th!r}{sg}"

    @contextlib.contextmanager
    def _band(self, b_th):
        """Temporarily run the surrogate with band ``b_th`` (no-op when it already is)."""
        if self.surrogate_disable or b_th == self.b_th:
            yield
            return
        saved = self.spike_grad
        surrogate.assign_spike_grad(self, surrogate.sparse(saved, b_th))
        try:
            yield
        finally:
            surrogate.assign_spike_grad(self, saved)

    def _fusable(self, cur_seq, tensors):
        """Whether the fused op reproduces the per-step forward: none of the options it
        lacks, a compiled surrogate, and none of ``tensors`` (per-neuron parameters and
        initial states) of a wider dtype than the input, which per step promotes the
        states (the fused op keeps the input's dtype)."""
        widens = any(t.dim() > 0 and torch.promote_types(t.dtype, cur_seq.dtype) != cur_seq.dtype
                     for t in tensors)
        return (not (self.inhibition or self.state_quant or self.surrogate_disable or widens)
                and self.reset_delay and isinstance(
                    self.spike_grad, (surrogate.SparseSurrogate, surrogate.AdaptiveSurrogate)))

    def _kernel_width(self, b_th):
        """The fixed band the fused op runs with: an adaptive band runs at its current
        width, then learns from the count (:meth:`_finish_spikes`)."""
        return self.spike_grad.b_th if isinstance(b_th, surrogate.AdaptiveBand) else b_th

    def _finish_spikes(self, spk, b_th, stats, cur_seq):
        """The fused op's spikes as the per-step forward gives them: float32 times the
        graded-spikes factor, band-tagged; the surrogate observes the band size."""
        sg = self.spike_grad
        if (b_th is not None and getattr(sg, "training", True) and spk.requires_grad
                and cur_seq.numel() and not torch.compiler.is_compiling()):
            sg.observe(stats["in_band"], cur_seq.numel())
        # Per step, spikes are float32 (snnTorch's convention) before γ scales them;
        # γ outside the op lets autograd handle a learnable factor. A fixed γ = 1 (the
        # default) needs no multiply, which would cost a pass over the spikes forward and
        # one backward; its value is read only on the CPU (a host sync on a GPU).
        gamma = self.graded_spikes_factor
        if (spk.dtype == torch.float32 and not gamma.requires_grad
                and gamma.device.type == "cpu" and not torch.compiler.is_compiling()
                and gamma.numel() == 1 and float(gamma) == 1.0):
            return spk
        out = spk.float() * gamma
        # A SpikingLinear fed by ``out`` may skip its input gradient outside the band
        # (paper eq. 12) since the surrogate zeroes it there, unless a learnable γ reads
        # it too.
        if self.graded_spikes_factor.requires_grad:
            return out
        return _fused.pass_band(spk, out)
