"""Drop-in sparse ``Synaptic``: :class:`snntorch.Synaptic` with a band-limited surrogate."""

import snntorch
import torch

from . import _synaptic, reference, surrogate
from ._banded import BandedNeuron


class Synaptic(BandedNeuron, snntorch.Synaptic):
    r"""Second-order (current-based) leaky integrate-and-fire neuron with sparse surrogate
    gradients.

    A subclass of :class:`snntorch.Synaptic` with the same constructor plus ``b_th``; the
    per-step forward pass is snnTorch's own, for every option. Only the surrogate differs:
    it is restricted to the band ``|U − θ| < b_th`` and runs in the compiled kernels
    (paper eq. 7–8, 20). With ``r[t] = H(U[t-1] − θ)`` (detached):

    .. math::

        I_{syn}[t] = αI_{syn}[t-1] + I_{in}[t] \quad(\text{never reset})

        U[t] = βU[t-1] + I_{syn}[t] - r[t]\,θ \;(\text{subtract}),\quad
        (1 - r[t])(βU[t-1] + I_{syn}[t]) \;(\text{zero}),\quad
        βU[t-1] + I_{syn}[t] \;(\text{none})

        S[t] = H(U[t] - θ), \qquad
        \frac{\partial S}{\partial U} = g(U - θ)\,[|U - θ| < B_{th}]

    Args:
        alpha, beta, threshold, spike_grad, surrogate_disable, init_hidden, inhibition,
        learn_alpha, learn_beta, learn_threshold, reset_mechanism, state_quant, output,
        reset_delay: as :class:`snntorch.Synaptic`.
        b_th (float, None, "auto" or AdaptiveBand): band half-width ``B_th`` (keyword
            only), as :class:`snntorch_sparse.Leaky`'s: ``None`` is the dense surrogate
            (:class:`snntorch.Synaptic`'s gradient), ``"auto"`` an adaptive band.
            Default: :data:`surrogate.DEFAULT_B_TH` (dense for ``output=True``).

    ``spike_grad=None`` is snnTorch's default ``atan(alpha=2)`` restricted to the band; a
    given ``spike_grad`` gets this layer's band (:func:`snntorch_sparse.surrogate.sparse`).
    Setting ``layer.b_th`` later re-bands the surrogate the same way.

    Example::

        >>> import torch
        >>> import snntorch_sparse as snn
        >>> syn = snn.Synaptic(alpha=0.9, beta=0.8, b_th=0.2)
        >>> cur = torch.rand(10, 4, 8)                    # [T, B, N]
        >>> isyn, mem = syn.reset_mem()
        >>> for t in range(10):
        ...     spk, isyn, mem = syn(cur[t], isyn, mem)    # per step, exactly snntorch.Synaptic
        >>> spk_seq, syn_seq, mem_seq = syn.forward_sequence(cur)   # the whole sequence
        >>> spk_seq.shape
        torch.Size([10, 4, 8])
    """

    def __init__(
        self,
        alpha,
        beta,
        threshold=1.0,
        spike_grad=None,
        surrogate_disable=False,
        init_hidden=False,
        inhibition=False,
        learn_alpha=False,
        learn_beta=False,
        learn_threshold=False,
        reset_mechanism="subtract",
        state_quant=False,
        output=False,
        reset_delay=True,
        *,
        b_th=surrogate.DEFAULT_B_TH,
    ):
        spike_grad, b_th = self._banded_surrogate(spike_grad, surrogate_disable, b_th, output)
        super().__init__(
            alpha, beta, threshold, spike_grad, surrogate_disable, init_hidden, inhibition,
            learn_alpha, learn_beta, learn_threshold, reset_mechanism, state_quant, output,
            reset_delay,
        )
        self._b_th = b_th

    def forward_sequence(self, cur_seq, syn=None, mem=None, backward="sparse"):
        r"""Run the layer over a whole time-major sequence ``cur_seq [T, B, ...]``.

        Equal to ``T`` per-step calls (outputs and gradients), but fused into one op when
        the options allow it; the others (``inhibition``, ``state_quant``,
        ``reset_delay=False``, ``surrogate_disable``, a surrogate outside the compiled
        shapes, a per-neuron α/β/θ or a state wider than the input's dtype) run the exact
        per-step loop. The fused op sums the gradients of α, β and θ in its own order
        (equal up to rounding); as :meth:`snntorch_sparse.Leaky.forward_sequence`, it forms
        ``r·θ`` in the input's dtype. A float16/bfloat16 input is computed in float32
        (both states; per step, snnTorch keeps the current in the input's dtype).

        Args:
            cur_seq (Tensor): input current ``[T, ...]``; one step is what
                :meth:`forward` takes.
            syn, mem (Tensor, optional): initial synaptic current and membrane, shaped like
                one step. ``None``: zeros, or the stored ``self.syn`` / ``self.mem`` when
                ``init_hidden=True`` and it has one step's shape.
            backward (str): ``"sparse"`` uses the band ``self.b_th``; ``"dense"`` the
                full surrogate (``b_th=None``) for this call. ``"rate"`` (rate-based
                backpropagation) is not defined for the two-state neuron.

        Returns:
            ``(spk_seq, syn_seq, mem_seq)``, each ``[T, ...]``. ``self.syn`` and
            ``self.mem`` are left at the last step, as ``T`` per-step calls would leave
            them.

        Example::

            >>> import torch
            >>> import snntorch_sparse as snn
            >>> syn = snn.Synaptic(alpha=0.9, beta=0.8)
            >>> spk, isyn, mem = syn.forward_sequence(torch.rand(25, 8, 100))
            >>> spk.shape, isyn.shape
            (torch.Size([25, 8, 100]), torch.Size([25, 8, 100]))
        """
        if backward == "rate":
            raise NotImplementedError(
                "Synaptic.forward_sequence(backward='rate'): rate-based backpropagation is "
                "defined for the first-order Leaky only (DESIGN.md §2); use 'sparse' or "
                "'dense', or snntorch_sparse.Leaky")
        if backward not in ("sparse", "dense"):
            raise ValueError(f'backward must be "sparse" or "dense", got {backward!r}')
        if not isinstance(cur_seq, torch.Tensor) or cur_seq.dim() < 2:
            raise ValueError("cur_seq must be a tensor [T, ...] with a leading time dimension, "
                             f"got {getattr(cur_seq, 'shape', type(cur_seq).__name__)}")
        if cur_seq.shape[0] == 0:
            raise ValueError("cur_seq must hold at least one time step, got T = 0")
        syn = self._initial(syn, self.syn, cur_seq, "syn")
        mem = self._initial(mem, self.mem, cur_seq, "mem")
        b_th = None if backward == "dense" else self.b_th
        if self._fusable(cur_seq, (self.alpha, self.beta, self.threshold, syn, mem)):
            spk_seq, syn_seq, mem_seq = self._fused_sequence(cur_seq, syn, mem, b_th)
        else:
            spk_seq, syn_seq, mem_seq = self._stepwise_sequence(cur_seq, syn, mem, b_th)
        self.syn = syn_seq[-1].clone()  # a view would keep all T steps alive
        self.mem = mem_seq[-1].clone()
        return spk_seq, syn_seq, mem_seq

    def _initial(self, state, stored, cur_seq, name):
        """The initial ``syn`` / ``mem``: as given, else the stored one (init_hidden), else
        zeros."""
        if state is not None:
            if not isinstance(state, torch.Tensor):
                # snnTorch's per-step call refuses a non-tensor state too (a buffer)
                raise TypeError(f"{name} must be a tensor shaped like one step "
                                f"{list(cur_seq.shape[1:])} or None, got {type(state).__name__}")
            return state
        use_stored = self.init_hidden and stored.shape == cur_seq.shape[1:]
        return stored if use_stored else torch.zeros_like(cur_seq[0])

    def _fused_sequence(self, cur_seq, syn, mem, b_th):
        sg = self.spike_grad
        stats = {}
        # Per step, the float32 reset flags promote a float16/bfloat16 membrane to float32.
        work = torch.promote_types(cur_seq.dtype, torch.float32)
        spk, syn_seq, mem_seq = _synaptic.synaptic_sequence(
            cur_seq.to(work), syn.to(work), mem.to(work), self.alpha.clamp(0, 1),
            self.beta.clamp(0, 1), self.threshold, gamma=1.0,
            reset=reference.RESETS.index(self.reset_mechanism), shape=sg.shape, p=sg.p,
            b_th=self._kernel_width(b_th), stats=stats,
        )
        return self._finish_spikes(spk, b_th, stats, cur_seq), syn_seq, mem_seq

    def _stepwise_sequence(self, cur_seq, syn, mem, b_th):
        spks, syns, mems = [], [], []
        with self._band(b_th):
            self.syn, self.mem = syn, mem
            for cur in cur_seq:
                out = self.forward(cur)
                spks.append(out[0] if isinstance(out, tuple) else out)
                syns.append(self.syn)
                mems.append(self.mem)
        return torch.stack(spks), torch.stack(syns), torch.stack(mems)
