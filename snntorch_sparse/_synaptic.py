r"""Fused whole-sequence Synaptic layer: one autograd node for all ``T`` steps.

Forward: ``(syn, U) = syn_fwd(I, syn[0], U[0], α, β, θ)`` over ``[T, M]``, then
``(S, bits, vals) = spike(U − θ)``: the spikes and the compact band, as
:func:`snntorch_sparse._fused.lif_sequence` keeps it.

Backward: ``ε_mem = γ·g(u)·[|u| < B_th]·e + m`` (``e = ∂L/∂S``, ``m = ∂L/∂U``), the
two-state reverse scan ``syn_bwd`` (with ``∂L/∂syn`` from outside) gives
``∂L/∂I = Δs``, ``∂L/∂syn[0] = α·Δs[1]``, ``∂L/∂U[0] = a[1]·Δm[1]`` and, when they require
grad,

    ∂L/∂α = Σ_t Δs[t]·syn[t−1]
    ∂L/∂β = Σ_t Δm[t]·U[t−1]  (·(1 − r[t]) for reset "zero")
    ∂L/∂θ = −Σ_t γ·g(u[t])·[band]·e[t]  − Σ_t r[t]·Δm[t]  (the last term for "subtract";
            the zero reset U[t] = base − base·r has no θ)

``Δm`` (the membrane half of the scan, ``lif_bwd`` of ``ε_mem``) is formed only for β/θ.
Storage: the band (bits + in-band values), the reset flags as bits when needed, the dense
current only when α requires grad and the dense membrane only when β does.
"""

import torch

from ._fused import (Neuron, _beta_grad, _cast_spikes, _empty_bits, _mark_band, _meta,
                     _needs, _needs_rbits, _per_element, _previous, _reduce, _reset_bits,
                     _theta_grad, check_sequence_args, fire_spikes)
from ._ops import compute_dtype, first_order_only, ops
from .reference import ATAN, SUBTRACT


class _SynapticSequence(torch.autograd.Function):
    """A Synaptic layer over a whole sequence (see :func:`synaptic_sequence`)."""

    @staticmethod
    def forward(ctx, cur, syn0, mem0, alpha, beta, theta, nrn, track):
        T = cur.shape[0]
        step = cur.shape[1:]
        dt = cur.dtype
        cur2d = cur.reshape(T, -1)
        alphaf = _per_element(alpha, step, dt, "alpha")
        betaf = _per_element(beta, step, dt, "beta")
        thetaf = _per_element(theta, step, dt, "threshold")
        syn0f = (torch.zeros_like(cur2d[0]) if syn0 is None
                 else _per_element(syn0, step, dt, "syn"))
        mem0f = (torch.zeros_like(cur2d[0]) if mem0 is None
                 else _per_element(mem0, step, dt, "mem"))
        syn, mem = ops.syn_fwd(cur2d, syn0f, mem0f, alphaf, betaf, thetaf, nrn.reset)
        spk, bits, vals = fire_spikes(mem, thetaf, nrn)

        _, _, _, need_alpha, need_beta, need_theta, _, _ = _needs(ctx, track)
        rbits = (_reset_bits(mem0f, mem, thetaf) if _needs_rbits(nrn, need_theta)
                 else _empty_bits(cur.device))
        ctx.save_for_backward(bits, vals, alpha, beta, rbits,
                              syn if need_alpha else None, syn0f if need_alpha else None,
                              mem if need_beta else None, mem0f if need_beta else None)
        ctx.nrn = nrn
        ctx.step = step
        ctx.meta = (_meta(syn0), _meta(mem0), _meta(alpha), _meta(beta), _meta(theta))
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(bits, vals)
        return spk, syn, mem, bits, vals  # [T, M]: reshaped outside (as lif_sequence)

    @staticmethod
    @first_order_only("synaptic_sequence (Synaptic.forward_sequence)")
    def backward(ctx, grad_spk, grad_syn, grad_mem, _grad_bits, _grad_vals):
        bits, vals, alpha, beta, rbits, syn, syn0f, mem, mem0f = ctx.saved_tensors
        nrn, step = ctx.nrn, ctx.step
        like = next((g for g in (grad_spk, grad_mem, grad_syn) if g is not None), None)
        if like is None:
            return (None,) * 8
        T = like.shape[0]
        flat = lambda g: None if g is None else g.reshape(T, -1)  # noqa: E731
        alphaf = _per_element(alpha, step, like.dtype, "alpha")
        betaf = _per_element(beta, step, like.dtype, "beta")
        band = (None if grad_spk is None else
                ops.band_grad(flat(grad_spk), bits, vals, nrn.shape, nrn.p, nrn.gamma, False))
        if grad_mem is None:  # ε_mem: zero when only the current reaches the loss
            eps = band if band is not None else torch.zeros_like(flat(like))
        else:
            eps = flat(grad_mem) if band is None else band + flat(grad_mem)
        eps = eps.contiguous()
        gsyn = flat(grad_syn) if grad_syn is not None else like.new_empty(0)
        dcur, dsyn0, dmem0 = ops.syn_bwd(eps, gsyn, alphaf, betaf, rbits, nrn.reset)

        need_cur, need_syn0, need_mem0, need_alpha, need_beta, need_theta, _, _ = \
            ctx.needs_input_grad
        syn0_meta, mem0_meta, alpha_meta, beta_meta, theta_meta = ctx.meta
        dm = ops.lif_bwd(eps, betaf, rbits, nrn.reset)[0] if need_beta or need_theta else None
        d_alpha = (_reduce((dcur * _previous(syn0f, syn)).sum(0), step, alpha_meta)
                   if need_alpha else None)
        d_beta = (_reduce(_beta_grad(dm, mem, mem0f, rbits, nrn), step, beta_meta)
                  if need_beta else None)
        d_theta = (_reduce(_theta_grad(dm, band, rbits, nrn), step, theta_meta)
                   if need_theta else None)
        return (dcur.view(T, *step) if need_cur else None,
                _reduce(dsyn0, step, syn0_meta) if need_syn0 else None,
                _reduce(dmem0, step, mem0_meta) if need_mem0 else None,
                d_alpha, d_beta, d_theta, None, None)


def synaptic_sequence(cur, syn0, mem0, alpha, beta, theta, *, gamma=1.0, reset=SUBTRACT,
                      shape=ATAN, p=2.0, b_th=0.2, stats=None):
    r"""A Synaptic layer over a whole sequence in one fused forward and one fused backward.

    .. math::

        \mathrm{syn}[t] = α\,\mathrm{syn}[t-1] + I[t] \quad(\text{never reset})

        U[t] = βU[t-1] + \mathrm{syn}[t] - r[t]θ \;(\text{subtract}),\quad
        (1 - r[t])(βU[t-1] + \mathrm{syn}[t]) \;(\text{zero}),\quad
        βU[t-1] + \mathrm{syn}[t] \;(\text{none})

        S[t] = γ\,H(U[t] - θ), \qquad
        \frac{\partial S}{\partial U} = γ\,g(U - θ)\,[|U - θ| < B_{th}]

    with ``r[t] = H(U[t−1] − θ)`` detached (snnTorch's ``Synaptic``, ``reset_delay=True``).

    Args:
        cur: input currents ``[T, B, ...]`` (any trailing shape), floating point.
        syn0, mem0: initial current and membrane, one step's shape (or broadcastable), or
            None for zeros.
        alpha, beta: decays, tensors broadcastable to one step, **already clamped** to
            [0, 1] by the caller. May require grad: then the dense current (α) or membrane
            (β) is kept for backward.
        theta: threshold, a tensor broadcastable to one step; may require grad.
        gamma: graded-spikes factor (a float; a learnable γ multiplies outside).
        reset: ``reference.SUBTRACT`` / ``ZERO`` / ``NONE``.
        shape, p: surrogate shape id and parameter (see ``reference.surrogate_grad``).
        b_th: band half-width; None means the dense surrogate.
        stats: a dict, or None; ``stats["in_band"]`` receives the band size.

    Returns:
        ``(spk, syn, mem)``, each ``[T, ...]`` in ``cur``'s dtype. Gradients flow to
        ``cur``, ``syn0``, ``mem0``, ``alpha``, ``beta`` and ``theta``; they equal
        ``reference.synaptic_sequence`` and, with ``b_th=None``, ``T`` per-step calls of
        ``snntorch.Synaptic``.

    Example::

        >>> import torch
        >>> from snntorch_sparse._synaptic import synaptic_sequence
        >>> cur = torch.rand(100, 4, 10, requires_grad=True)
        >>> spk, syn, mem = synaptic_sequence(cur, None, None, torch.tensor(0.9),
        ...                                   torch.tensor(0.8), torch.tensor(1.0))
        >>> spk.sum().backward()     # cur.grad is non-zero only through the band
    """
    b_th = check_sequence_args(cur, {"syn0": syn0, "mem0": mem0}, b_th, "synaptic_sequence",
                               "snntorch_sparse.Synaptic")
    work = compute_dtype(cur)
    if work != cur.dtype:  # float16/bfloat16 on the CPU: computed in float32
        cast = lambda t: None if t is None else t.to(work)  # noqa: E731
        spk, syn, mem = synaptic_sequence(cast(cur), cast(syn0), cast(mem0), alpha, beta,
                                          theta, gamma=gamma, reset=reset, shape=shape, p=p,
                                          b_th=b_th, stats=stats)
        return _cast_spikes(spk, cur.dtype), syn.to(cur.dtype), mem.to(cur.dtype)
    alpha, beta, theta = (torch.as_tensor(v, device=cur.device) for v in (alpha, beta, theta))
    nrn = Neuron.of(gamma, reset, shape, p, b_th)
    spk, syn, mem, bits, vals = _SynapticSequence.apply(cur, syn0, mem0, alpha, beta, theta,
                                                        nrn, torch.is_grad_enabled())
    if stats is not None:
        stats["in_band"] = vals.numel()  # the band size, already on the host
    return (_mark_band(spk.view(cur.shape), bits, vals, nrn), syn.view(cur.shape),
            mem.view(cur.shape))
