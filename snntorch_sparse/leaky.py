"""Drop-in sparse ``Leaky``: :class:`snntorch.Leaky` with a band-limited surrogate."""

import snntorch
import torch

from . import _fused, _rate, reference, surrogate
from ._banded import BandedNeuron


class Leaky(BandedNeuron, snntorch.Leaky):
    r"""First-order leaky integrate-and-fire neuron with sparse surrogate gradients.

    A subclass of :class:`snntorch.Leaky` with the same constructor plus ``b_th``; the
    forward pass is snnTorch's own, for every option. Only the surrogate differs: it is
    restricted to the band ``|U − θ| < b_th`` and runs in the compiled kernels
    (paper eq. 7–8, 20). With ``reset_mechanism="subtract"``:

    .. math::

        U[t] = βU[t-1] + I[t] - R[t]\,θ, \qquad S[t] = γ\,H(U[t] - θ), \qquad
        \frac{\partial S}{\partial U} = γ\,g(U - θ)\,[|U - θ| < B_{th}]

    Args:
        beta, threshold, spike_grad, surrogate_disable, init_hidden, inhibition,
        learn_beta, learn_threshold, reset_mechanism, state_quant, output,
        graded_spikes_factor, learn_graded_spikes_factor, reset_delay:
            as :class:`snntorch.Leaky`.
        b_th (float, None, "auto" or AdaptiveBand): band half-width ``B_th`` (keyword
            only); ``None`` is the dense surrogate: :class:`snntorch.Leaky`'s gradient, bit
            for bit with the default atan (see :mod:`snntorch_sparse.surrogate` for each
            shape). ``"auto"`` / :class:`~snntorch_sparse.AdaptiveBand`: the band follows
            the membrane to keep the activity ρ at a target (module state; see
            :class:`~snntorch_sparse.surrogate.AdaptiveSurrogate`); per step, it updates on
            every surrogate call in training. Default: :data:`surrogate.DEFAULT_B_TH`.

    ``spike_grad=None`` is snnTorch's default ``atan(alpha=2)`` restricted to the band. A
    given ``spike_grad`` goes through :func:`snntorch_sparse.surrogate.sparse` with this
    layer's ``b_th``: the layer's band wins over one the callable already carries.
    Setting ``layer.b_th`` later re-bands the surrogate the same way.

    Example::

        >>> import torch
        >>> import snntorch_sparse as snn
        >>> lif = snn.Leaky(beta=0.9, b_th=0.2)
        >>> cur = torch.rand(10, 4, 8)                  # [T, B, N]
        >>> mem = lif.init_leaky()
        >>> for t in range(10):
        ...     spk, mem = lif(cur[t], mem)              # per step, exactly snntorch.Leaky
        >>> spk_seq, mem_seq = lif.forward_sequence(cur) # the whole sequence at once
    """

    def __init__(
        self,
        beta,
        threshold=1.0,
        spike_grad=None,
        surrogate_disable=False,
        init_hidden=False,
        inhibition=False,
        learn_beta=False,
        learn_threshold=False,
        reset_mechanism="subtract",
        state_quant=False,
        output=False,
        graded_spikes_factor=1.0,
        learn_graded_spikes_factor=False,
        reset_delay=True,
        *,
        b_th=surrogate.DEFAULT_B_TH,
    ):
        spike_grad, b_th = self._banded_surrogate(spike_grad, surrogate_disable, b_th, output)
        super().__init__(
            beta, threshold, spike_grad, surrogate_disable, init_hidden, inhibition,
            learn_beta, learn_threshold, reset_mechanism, state_quant, output,
            graded_spikes_factor, learn_graded_spikes_factor, reset_delay,
        )
        self._b_th = b_th

    # ------------------------------------------------------------------ sequences
    def forward_sequence(self, cur_seq, mem=None, backward="sparse"):
        r"""Run the layer over a whole time-major sequence ``cur_seq [T, B, ...]``.

        Equal to ``T`` per-step calls (outputs and gradients), but fused into one op when
        the options allow it; the others (``inhibition``, ``state_quant``,
        ``reset_delay=False``, ``surrogate_disable``, a surrogate outside the compiled
        shapes, a per-neuron β/θ or a membrane wider than the input's dtype) run the
        exact per-step loop.

        The fused op sums the gradients of β, θ and the graded-spikes factor in its own
        order (equal up to rounding), and forms the reset term ``r·θ`` in the input's
        dtype: per step, snnTorch multiplies its float32 reset flag by a 0-dim θ in
        float32, so the two differ (by float32 rounding) only for float64 inputs with a
        scalar θ that float32 cannot represent, e.g. 0.7 — there the fused result is
        the exact one.

        Args:
            cur_seq (Tensor): input current ``[T, ...]``; one step is what
                :meth:`forward` takes.
            mem (Tensor, optional): initial membrane, shaped like one step. ``None``:
                zeros, or the stored ``self.mem`` when ``init_hidden=True`` and it has one
                step's shape.
            backward (str): ``"sparse"`` uses the band ``self.b_th``; ``"dense"`` the
                full surrogate (``b_th=None``) for this call; ``"rate"`` rate-based
                backpropagation (DESIGN.md §2): the same forward, keeping only the
                eligibility ``e = mean_t κ[t]·dS/dU[t]`` (band ``self.b_th``), and
                ``∂L/∂I[t] = e ⊙ Σ_s ∂L/∂S[s] / T``. Needs the fused path and a fixed β/θ
                and ``mem``; no gradient flows through ``mem_seq``.

        Returns:
            ``(spk_seq, mem_seq)``, both ``[T, ...]``. ``self.mem`` is left at
            ``mem_seq[-1]``, as ``T`` per-step calls would leave it.

        Example::

            >>> import torch
            >>> import snntorch_sparse as snn
            >>> lif = snn.Leaky(beta=0.9)
            >>> spk, mem = lif.forward_sequence(torch.rand(25, 8, 100))
            >>> spk.shape
            torch.Size([25, 8, 100])
        """
        if backward not in ("sparse", "dense", "rate"):
            raise ValueError(f'backward must be "sparse", "dense" or "rate", got {backward!r}')
        if not isinstance(cur_seq, torch.Tensor) or cur_seq.dim() < 2:
            raise ValueError("cur_seq must be a tensor [T, ...] with a leading time dimension, "
                             f"got {getattr(cur_seq, 'shape', type(cur_seq).__name__)}")
        if cur_seq.shape[0] == 0:
            raise ValueError("cur_seq must hold at least one time step, got T = 0")
        if mem is not None and not isinstance(mem, torch.Tensor):
            # snnTorch's per-step call refuses a non-tensor membrane too (a buffer)
            raise TypeError("mem must be a tensor shaped like one step "
                            f"{list(cur_seq.shape[1:])} or None, got {type(mem).__name__}")
        b_th = None if backward == "dense" else self.b_th
        if mem is None:
            use_stored = self.init_hidden and self.mem.shape == cur_seq.shape[1:]
            mem = self.mem if use_stored else torch.zeros_like(cur_seq[0])
        fusable = self._fusable(cur_seq, (self.beta, self.threshold, mem))
        if backward == "rate" and not fusable:
            raise ValueError("forward_sequence(backward='rate') needs the fused path: no "
                             "inhibition, state_quant, surrogate_disable, reset_delay=False, "
                             "widening per-neuron β/θ/mem, and a compiled surrogate shape")
        if fusable:
            spk_seq, mem_seq = self._fused_sequence(cur_seq, mem, b_th, backward == "rate")
        else:
            spk_seq, mem_seq = self._stepwise_sequence(cur_seq, mem, b_th)
        self.mem = mem_seq[-1].clone()  # a view would keep all T steps alive
        return spk_seq, mem_seq

    def _fused_sequence(self, cur_seq, mem, b_th, rate=False):
        sg = self.spike_grad
        stats = {}
        width = self._kernel_width(b_th)
        # Per step, the float32 reset flags promote a float16/bfloat16 membrane to float32
        # from the first step on; the fused sequence computes in that dtype too.
        work = torch.promote_types(cur_seq.dtype, torch.float32)
        if rate:  # no band tag: the rate input gradient is not limited to a band
            nrn = _fused.Neuron.of(1.0, reference.RESETS.index(self.reset_mechanism),
                                   sg.shape, sg.p, width)
            spk, mem_seq = _rate.rate_lif_sequence(cur_seq.to(work), mem.to(work),
                                                   self.beta.clamp(0, 1), self.threshold, nrn)
            return spk.float() * self.graded_spikes_factor, mem_seq
        spk, mem_seq = _fused.lif_sequence(
            cur_seq.to(work), mem.to(work), self.beta.clamp(0, 1), self.threshold, gamma=1.0,
            reset=reference.RESETS.index(self.reset_mechanism), shape=sg.shape, p=sg.p,
            b_th=width, stats=stats,
        )
        return self._finish_spikes(spk, b_th, stats, cur_seq), mem_seq

    def _stepwise_sequence(self, cur_seq, mem, b_th):
        spks, mems = [], []
        with self._band(b_th):
            self.mem = mem
            for cur in cur_seq:
                out = self.forward(cur)
                spks.append(out[0] if isinstance(out, tuple) else out)
                mems.append(self.mem)
        return torch.stack(spks), torch.stack(mems)
