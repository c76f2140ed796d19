r"""Rate-based backpropagation (Yu et al., NeurIPS 2024; DESIGN.md §2): the third backward
strategy of the fused layers.

The forward is the ordinary spiking forward (the same ops as the dense mode, so the
outputs are bitwise equal). Of a layer it keeps only ``O(B·N)`` tensors, independent of T:

.. math::

    \bar x = \frac1T\sum_t X[t] \quad [B, n_{in}], \qquad
    e = \frac1T\sum_t κ[t]\,\frac{\partial S}{\partial U}[t] \quad [B, n_{out}],

    κ[1] = 1,\quad κ[t] = 1 + a[t]\,κ[t-1],\quad a = β \;(\text{subtract, none}),\;
    β(1 - r[t]) \;(\text{zero})

``e`` is computed with the existing ops: ``Σ_t lif_bwd(dS/dU, a)[t] = Σ_t κ[t]·dS/dU[t]``
(``lif_bwd_band`` of a unit spike gradient, so γ and a finite band enter it).

Backward, ``G[t] = ∂L/∂S[t]``: ``ĝ = Σ_t G[t]``, ``δ = e ⊙ ĝ``, ``∂W = δᵀ·x̄``,
``∂b = Σ_b δ``, ``∂X[t] = δ·W / T`` for every t (returned expanded over T, not
materialised). A readout (no reset, no spikes) has ``δ = Σ_t κ[t]·M[t]`` with
``M[t] = ∂L/∂U[t]`` and ``κ`` from β alone, recomputed in the backward (``[T, n_out]``).
Two small GEMMs on B rows, no host synchronisation.

The output carries no band tag: the rate input gradient is not limited to any band.
Learnable β/θ and an initial membrane requiring grad are not defined by the method and
raise; so does a gradient into a hidden layer's membrane output.
"""

import math

import torch
import torch.nn.functional as F
from torch.nn import grad as nn_grad

from ._fused import (_empty_bits, _needs_rbits, _neuron_backward, _neuron_forward, _per_element,
                     _reset_bits)
from ._ops import compute_dtype, first_order_only, ops
from .reference import NONE


def _check_fixed(beta, theta, mem0, where):
    for name, t in (("beta", beta), ("threshold", theta), ("mem", mem0)):
        if t is not None and t.requires_grad:
            raise ValueError(
                f"{where}: backward='rate' defines no gradient for a learnable {name} "
                f"(rate-based backpropagation keeps no per-step state); use a fixed {name} "
                "(detach it, or learn_beta/learn_threshold=False) or backward='sparse'/'dense'")


def _eligibility(mem, mem0f, betaf, thetaf, bits, vals, nrn):
    """``e = (1/T)·Σ_t κ[t]·dS/dU[t]`` ``[M]`` from the forward's membrane and band."""
    rbits = (_reset_bits(mem0f, mem, thetaf) if _needs_rbits(nrn, False)
             else _empty_bits(mem.device))
    delta, _ = _neuron_backward(torch.ones_like(mem), None, bits, vals, betaf, rbits, nrn)
    return delta.mean(0)


def _readout_kappa(beta_out, T, dtype):
    """``κ[t] = 1 + β·κ[t−1]`` ``[T, n_out]`` (a readout never resets): ``lif_fwd`` of ones."""
    n = beta_out.numel()
    ones = torch.ones(T, n, dtype=dtype, device=beta_out.device)
    never = torch.full((n,), math.inf, dtype=dtype, device=beta_out.device)
    return ops.lif_fwd(ones, torch.zeros_like(never), beta_out, never, NONE)


def _currents(x, weight, bias, geo):
    """``(I [T, M], one step's shape)``: ``X·Wᵀ + b`` (``geo`` None), ``conv2d(X, W) + b``
    (``geo`` a ``_conv.ConvGeometry``) over all ``T·B`` samples, or ``X`` itself (no
    weight)."""
    T, B = x.shape[:2]
    if weight is None:
        return x.reshape(T, -1), x.shape[1:]
    if geo is None:
        cur = F.linear(x.reshape(T * B, -1), weight, bias)
    else:
        cur = F.conv2d(x.flatten(0, 1), weight, bias, *geo.args())
    return cur.view(T, -1), (B, *cur.shape[1:])


def _weight_grads(delta, xbar, weight, w_shape, x_step, T, geo, need):
    """``(∂X[t] for one t, ∂W, ∂b)`` of the currents from ``δ`` (one step's shape) and the
    input rate ``x̄``: the transpose, weight gradient and bias gradient of the currents."""
    need_x, need_w, need_b = need
    if geo is None:
        d2 = delta.reshape(-1, delta.shape[-1])  # [B, n_out]
        return (d2 @ weight / T if need_x else None, d2.t() @ xbar if need_w else None,
                d2.sum(0) if need_b else None)
    return (nn_grad.conv2d_input(x_step, weight, delta, *geo.args()) / T if need_x else None,
            nn_grad.conv2d_weight(xbar, w_shape, delta, *geo.args()) if need_w else None,
            delta.sum((0, 2, 3)) if need_b else None)


class _RateLayer(torch.autograd.Function):
    """Currents (``_currents``: Linear, convolution or none) then a LIF layer, with the
    rate-based backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, beta, theta, mem0, nrn, readout, geo, track):
        T = x.shape[0]
        cur, step = _currents(x, weight, bias, geo)
        dt = cur.dtype
        betaf = _per_element(beta, step, dt, "beta")
        thetaf = _per_element(theta, step, dt, "threshold")
        mem0f = (torch.zeros_like(cur[0]) if mem0 is None
                 else _per_element(mem0, step, dt, "mem"))
        mem, spk, bits, vals = _neuron_forward(cur, mem0f, betaf, thetaf, nrn, not readout)
        need_x, need_w = (ctx.needs_input_grad[:2] if track else (False, False))
        need_b = track and ctx.needs_input_grad[2]
        keep = track and (need_x or need_w or need_b)
        elig = (_eligibility(mem, mem0f, betaf, thetaf, bits, vals, nrn)
                if keep and not readout else None)
        xbar = x.mean(0) if need_w else None
        ctx.save_for_backward(xbar, weight if (need_x and weight is not None) else None,
                              elig, betaf if readout else None)
        ctx.dims = (T, step, readout, weight is not None, geo)
        ctx.x_step = x.shape[1:]
        ctx.w_shape = None if weight is None else weight.shape
        ctx.set_materialize_grads(False)
        if readout:
            spk = cur.new_empty(0)
            ctx.mark_non_differentiable(spk)
        return spk, mem

    @staticmethod
    @first_order_only("backward='rate'")
    def backward(ctx, grad_spk, grad_mem):
        xbar, weight, elig, betaf = ctx.saved_tensors
        T, step, readout, has_weight, geo = ctx.dims
        none = (None,) * 10
        if readout:
            if grad_mem is None:
                return none
            B = step[0]
            kappa = _readout_kappa(betaf.view(B, -1)[0].to(grad_mem.dtype).contiguous(), T,
                                   grad_mem.dtype)
            delta = torch.einsum("tbm,tm->bm", grad_mem.reshape(T, B, -1), kappa).view(step)
        else:
            if grad_mem is not None:
                raise RuntimeError(
                    "backward='rate' defines no gradient through a hidden layer's membrane "
                    "output; put the loss on the spikes, or use readout=True / another backward")
            if grad_spk is None:
                return none
            delta = (elig * grad_spk.reshape(T, -1).sum(0)).view(step)
        need = ctx.needs_input_grad[:3]
        if not has_weight:  # a bare LIF layer: X is the current
            d_x = (delta / T).unsqueeze(0).expand(T, *step) if need[0] else None
            return (d_x,) + none[1:]
        d_x1, d_w, d_b = _weight_grads(delta, xbar, weight, ctx.w_shape, ctx.x_step, T, geo,
                                      need)
        d_x = d_x1.unsqueeze(0).expand(T, *d_x1.shape) if need[0] else None
        return d_x, d_w, d_b, None, None, None, None, None, None, None


def rate_spiking_layer(x, weight, bias, beta, theta, mem0, nrn, readout, geo=None,
                       where="SpikingLinear"):
    """``(out, mem)`` of a fused layer with the rate backward: ``out`` is the spikes
    ``[T, B, ...]`` (the membrane for a readout); the currents are a Linear (``geo`` None)
    or a convolution (``geo``). ``beta``/``theta`` clamped and shaped by the caller."""
    _check_fixed(beta, theta, mem0, where)
    work = compute_dtype(x)
    if work != x.dtype:  # float16/bfloat16 on the CPU: computed in float32 (as _fused)
        cast = lambda t: None if t is None else t.to(work)  # noqa: E731
        out, mem = rate_spiking_layer(x.to(work), weight.to(work), cast(bias), beta, theta,
                                      cast(mem0), nrn, readout, geo, where)
        return out.to(x.dtype), mem.to(x.dtype)
    if readout:
        theta = torch.full((), math.inf, dtype=x.dtype, device=x.device)
    spk, mem = _RateLayer.apply(x, weight, bias, beta, theta, mem0, nrn, readout, geo,
                                torch.is_grad_enabled())
    B = x.shape[1]
    step = ((B, weight.shape[0]) if geo is None
            else (B, weight.shape[0], *geo.out_size(x.shape[-2:], weight.shape[-2:])))
    mem = mem.view(x.shape[0], *step)
    return (mem, mem) if readout else (spk.view(mem.shape), mem)


def rate_lif_sequence(cur, mem0, beta, theta, nrn):
    """``(spk, mem)`` ``[T, ...]`` of a Leaky layer over ``cur [T, ...]`` with the rate
    backward: ``∂L/∂I[t] = e ⊙ Σ_s ∂L/∂S[s] / T``. ``beta`` clamped by the caller."""
    _check_fixed(beta, theta, mem0, "Leaky.forward_sequence")
    spk, mem = _RateLayer.apply(cur, None, None, beta, theta, mem0, nrn, False, None,
                                torch.is_grad_enabled())
    return spk.view(cur.shape), mem.view(cur.shape)

